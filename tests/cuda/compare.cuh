// Shared helpers of the CUDA-backend tests: random host data, CPU <-> GPU layout conversion and the comparison
// (norm-wise: max|a-b| <= tol * max(1, max|b|); 1e-4 for fp32, 1e-2 for fp16).
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include <carousel/cpu/tensor.hpp>
#include <carousel/cuda/ops.cuh>
#include <carousel/cuda/tensor.cuh>

namespace carousel::cuda::test {

inline constexpr double fp32_tolerance = 1e-4;
inline constexpr double fp16_tolerance = 1e-2;

inline double tolerance(DType t) {
  return t == DType::f32 ? fp32_tolerance : fp16_tolerance;
}

inline std::vector<float> random_values(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v)
    x = dist(gen);
  return v;
}

inline cpu::Tensor random_tensor(const cpu::Shape& shape, std::uint32_t seed, float scale = 1.0f) {
  return cpu::Tensor(shape, random_values(static_cast<std::size_t>(cpu::shape_numel(shape)), seed, scale));
}

// max|a-b| relative to max(1, max|b|).
inline double relative_error(std::span<const float> actual, std::span<const float> expected) {
  REQUIRE(actual.size() == expected.size());
  double diff = 0, ref = 1;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(actual[i]) - static_cast<double>(expected[i])));
    ref = std::max(ref, std::fabs(static_cast<double>(expected[i])));
  }
  return diff / ref;
}

inline void check_close(std::span<const float> actual, std::span<const float> expected, double tol) {
  const double err = relative_error(actual, expected);
  CHECK_MESSAGE(err <= tol, "relative error " << err << " > " << tol);
}

// CPU NCHW tensor -> device NHWC of dtype.
inline DeviceTensor to_device(Engine& e, const cpu::Tensor& t, DType dtype) {
  return to_nhwc(e, t.values(), t.shape(), dtype);
}

// Device NHWC -> host NCHW values.
inline std::vector<float> from_device(Engine& e, const DeviceTensor& t) {
  const HostTensor h = to_host_nchw(e, t);
  return {h.values().begin(), h.values().end()};
}

// A plain (row-major, any rank) CPU tensor on the device as dtype.
inline DeviceTensor to_device_rows(Engine& e, const cpu::Tensor& t, DType dtype) {
  return upload(e, t.values(), t.shape(), dtype);
}

inline std::vector<float> from_device_rows(Engine& e, const DeviceTensor& t) {
  const HostTensor h = to_host(e, t);
  return {h.values().begin(), h.values().end()};
}

}  // namespace carousel::cuda::test
