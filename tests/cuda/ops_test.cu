// The CUDA backend's ops and layers against the CPU backend (the oracle) on random data: fp32 within 1e-4 and fp16
// within 1e-2 relative (norm-wise, see compare.cuh). SD-1.5-sized layers use checkpoint::RandomWeights, which both
// backends implement bit-identically, so the same parameters load on both sides.

#include "compare.cuh"
#include "gpu_guard.cuh"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cpu/layers.hpp>
#include <carousel/cpu/ops.hpp>
#include <carousel/cpu/unet.hpp>
#include <carousel/cuda/allocator.cuh>
#include <carousel/cuda/check.cuh>
#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/layers.cuh>
#include <carousel/cuda/ops.cuh>
#include <carousel/cuda/unet.cuh>

namespace cpu = carousel::cpu;
namespace cu = carousel::cuda;
using carousel::cuda::test::check_close;
using carousel::cuda::test::tolerance;

namespace {

const cu::DType dtypes[] = {cu::DType::f32, cu::DType::f16};

// The attention kernels under test: both, or only plain when CAROUSEL_CUDA_ATTENTION says so (the GPU check reruns
// failed tests with "plain" so that a faulting flash kernel does not hide the rest).
std::vector<cu::AttentionKernel> attention_kernels() {
  if (cu::detail::attention_kernel_from_environment() == cu::AttentionKernel::plain)
    return {cu::AttentionKernel::plain};
  return {cu::AttentionKernel::flash, cu::AttentionKernel::plain};
}

const char* name_of(cu::DType t) {
  return t == cu::DType::f32 ? "fp32" : "fp16";
}

}  // namespace

TEST_CASE("Cuda.Check.ThrowsWithLocation") {
  try {
    CAROUSEL_CUDA_CHECK(cudaErrorInvalidValue);
    FAIL("no exception");
  } catch (const cu::CudaError& e) {
    const std::string what = e.what();
    CHECK(what.find("ops_test.cu:") != std::string::npos);
    CHECK(what.find("cudaErrorInvalidValue") != std::string::npos);
  }
  CHECK_THROWS_AS(CAROUSEL_CUBLAS_CHECK(CUBLAS_STATUS_INVALID_VALUE), cu::CudaError);
  CHECK_THROWS_AS(CAROUSEL_CUDNN_CHECK(CUDNN_STATUS_BAD_PARAM), cu::CudaError);
}

TEST_CASE("Cuda.Allocator.ReusesBlocks") {
  cu::CachingAllocator a;
  void* p = a.allocate(1000);
  a.deallocate(p);
  CHECK(a.cached_bytes() == 1024);
  void* q = a.allocate(900);
  CHECK(q == p);  // a cached block of at most twice the size is reused
  a.deallocate(q);
  void* r = a.allocate(4096);
  CHECK(r != p);
  a.deallocate(r);
  a.release_cached();
  CHECK(a.allocated_bytes() == 0);
}

TEST_CASE("Cuda.Allocator.OutOfMemory") {
  constexpr std::size_t absurd = std::size_t{1} << 50;  // a petabyte: cudaMalloc fails on any GPU
  for (auto policy :
       {cu::CachingAllocator::OnOutOfMemory::release_cached_and_retry, cu::CachingAllocator::OnOutOfMemory::fail}) {
    const bool keep = policy == cu::CachingAllocator::OnOutOfMemory::fail;
    CAPTURE(keep);
    cu::CachingAllocator a(policy);
    a.deallocate(a.allocate(4096));
    REQUIRE(a.cached_bytes() == 4096);
    CHECK_THROWS_AS(static_cast<void>(a.allocate(absurd)), cu::CudaError);
    // A graph's pool keeps its cached blocks (their addresses are captured); the default policy gave them back.
    CHECK(a.cached_bytes() == (keep ? 4096u : 0u));
    CHECK(cudaGetLastError() == cudaSuccess);  // the failure left no sticky error behind
  }
}

TEST_CASE("Cuda.Ops.Elementwise") {
  cu::Engine e;
  for (auto dt : dtypes) {
    CAPTURE(name_of(dt));
    const double tol = tolerance(dt);
    SUBCASE("GroupNormSilu") {
      // Channels under, over and at the kernels' 256 threads (in packs of 16 bytes: 2560 fp16 channels make 320
      // packs), channel counts that take the scalar path (12 in fp16, 6 in both) and packs that straddle groups (12
      // fp32 channels in groups of 3), spatial extents that split into several ragged chunks, a single chunk, many
      // chunks, an empty batch, and (fp32 only: fp16 cannot hold it) a mean of 100 against a spread of 1.
      struct Case {
        std::int64_t batch, channels, h, w, groups;
        float offset;
      };
      std::vector<Case> cases = {Case{2, 64, 5, 7, 32, 0.0f},   Case{3, 320, 37, 41, 32, 0.0f},
                                 Case{1, 8, 70, 90, 4, 0.0f},   Case{2, 256, 9, 9, 8, 0.0f},
                                 Case{1, 1280, 8, 8, 32, 0.0f}, Case{0, 64, 4, 4, 32, 0.0f},
                                 Case{2, 12, 9, 11, 4, 0.0f},   Case{1, 6, 13, 7, 3, 0.0f},
                                 Case{1, 2560, 3, 5, 32, 0.0f}, Case{2, 32, 150, 170, 8, 0.0f}};
      if (dt == cu::DType::f32) cases.push_back(Case{2, 320, 23, 29, 32, 100.0f});
      for (const Case c : cases) {
        CAPTURE(c.channels);
        CAPTURE(c.h);
        CAPTURE(c.offset);
        const cpu::Shape shape = {c.batch, c.channels, c.h, c.w};
        auto values = carousel::cuda::test::random_values(static_cast<std::size_t>(cpu::shape_numel(shape)), 1, 2.0f);
        for (auto& v : values)
          v += c.offset;
        const cpu::Tensor x(shape, values);
        const auto gamma = carousel::cuda::test::random_values(static_cast<std::size_t>(c.channels), 2);
        const auto beta = carousel::cuda::test::random_values(static_cast<std::size_t>(c.channels), 3);
        const auto g = cu::upload_weight(gamma, {c.channels}, cu::DType::f32),
                   b = cu::upload_weight(beta, {c.channels}, cu::DType::f32);
        for (bool silu : {false, true}) {
          const auto ref = cpu::group_norm(x, c.groups, 1e-5f, gamma.data(), beta.data(), silu);
          const auto y = cu::group_norm(e, carousel::cuda::test::to_device(e, x, dt), c.groups, 1e-5f, g, b, silu);
          CHECK(y.shape() == cu::Shape{c.batch, c.h, c.w, c.channels});
          check_close(carousel::cuda::test::from_device(e, y), ref.values(), tol);
        }
      }
    }
    SUBCASE("LayerNorm") {
      // Widths in packs of 16 bytes held in registers (48, SD-1.5's 320 and 1280), widths that take the scalar path
      // (45, and 1500 at 47 values a lane), rows too wide for registers (2560: one block per row), and (fp32 only)
      // a mean of 100 against a spread of 3.
      struct Case {
        std::int64_t rows, width;
        float offset;
      };
      std::vector<Case> cases = {Case{33, 48, 0.0f}, Case{21, 320, 0.0f}, Case{13, 1280, 0.0f},
                                 Case{9, 45, 0.0f},  Case{5, 1500, 0.0f}, Case{4, 2560, 0.0f}};
      if (dt == cu::DType::f32) cases.push_back(Case{17, 320, 100.0f});
      for (const Case c : cases) {
        CAPTURE(c.width);
        CAPTURE(c.offset);
        const cpu::Shape shape = {c.rows, c.width};
        auto values = carousel::cuda::test::random_values(static_cast<std::size_t>(c.rows * c.width), 4, 3.0f);
        for (auto& v : values)
          v += c.offset;
        const cpu::Tensor x(shape, values);
        const auto gamma = carousel::cuda::test::random_values(static_cast<std::size_t>(c.width), 5),
                   beta = carousel::cuda::test::random_values(static_cast<std::size_t>(c.width), 6);
        cpu::Tensor ref(x.shape());
        cpu::layer_norm_rows(x.data(), c.rows, c.width, gamma.data(), beta.data(), 1e-5f, ref.data());
        const auto y = cu::layer_norm(e, carousel::cuda::test::to_device_rows(e, x, dt),
                                      cu::upload_weight(gamma, {c.width}, cu::DType::f32),
                                      cu::upload_weight(beta, {c.width}, cu::DType::f32), 1e-5f);
        check_close(carousel::cuda::test::from_device_rows(e, y), ref.values(), tol);
      }
    }
    SUBCASE("Geglu") {
      const auto x = carousel::cuda::test::random_tensor({2, 9, 2 * 24}, 7, 2.0f);
      std::vector<float> ref(2 * 9 * 24);
      for (int r = 0; r < 18; ++r)
        for (int c = 0; c < 24; ++c)
          ref[r * 24 + c] = x.data()[r * 48 + c] * cpu::gelu(x.data()[r * 48 + 24 + c]);
      const auto y = cu::geglu(e, carousel::cuda::test::to_device_rows(e, x, dt));
      check_close(carousel::cuda::test::from_device_rows(e, y), ref, tol);
    }
    SUBCASE("Activations") {
      const auto x = carousel::cuda::test::random_tensor({1000}, 8, 3.0f);
      for (auto kind : {cu::Activation::silu, cu::Activation::quick_gelu, cu::Activation::gelu}) {
        std::vector<float> ref(x.values().begin(), x.values().end());
        for (auto& v : ref)
          v = kind == cu::Activation::silu         ? v / (1.0f + std::exp(-v))
              : kind == cu::Activation::quick_gelu ? cpu::quick_gelu(v)
                                                   : cpu::gelu(v);
        auto y = carousel::cuda::test::to_device_rows(e, x, dt);
        cu::activate(e, y, kind);
        check_close(carousel::cuda::test::from_device_rows(e, y), ref, tol);
      }
    }
    SUBCASE("TimestepEmbedding") {
      const std::vector<float> t = {999.0f, 1.0f, 500.0f, 0.0f};
      for (bool flip : {true, false}) {
        const auto ref = cpu::timestep_embedding(t, 320, flip, 0.0f);
        const auto freqs = cu::upload_weight(cu::timestep_frequencies(320, 0.0f), {160}, cu::DType::f32);
        const auto y = cu::timestep_embedding(e, cu::upload(e, t, {4}, cu::DType::f32), freqs, flip, dt);
        check_close(carousel::cuda::test::from_device_rows(e, y), ref.values(), tol);
      }
    }
    SUBCASE("UpsampleConcat") {
      const auto x = carousel::cuda::test::random_tensor({2, 6, 3, 5}, 9);
      const auto s = carousel::cuda::test::random_tensor({2, 4, 7, 10}, 10);
      const auto ref = cpu::concat_channels(cpu::upsample_nearest(x, 7, 10), s);
      const auto up = cu::upsample_nearest(e, carousel::cuda::test::to_device(e, x, dt), 7, 10);
      const auto y = cu::concat_channels(e, up, carousel::cuda::test::to_device(e, s, dt));
      check_close(carousel::cuda::test::from_device(e, y), ref.values(), tol);
    }
  }
}

TEST_CASE("Cuda.Ops.GemmConvAttention") {
  cu::Engine e;
  for (auto dt : dtypes) {
    CAPTURE(name_of(dt));
    const double tol = tolerance(dt);
    SUBCASE("Linear") {
      carousel::checkpoint::RandomWeights cw(11);
      carousel::checkpoint::RandomWeights gw(11);
      const cpu::Linear cl(cw, "l.", {.in = 40, .out = 24});
      const cu::Linear gl(gw, "l.", 40, 24, dt);
      const auto x = carousel::cuda::test::random_tensor({3, 7, 40}, 12);
      const cpu::Tensor ref = cl.forward({}, x);
      check_close(
          carousel::cuda::test::from_device_rows(e, gl.forward(e, carousel::cuda::test::to_device_rows(e, x, dt))),
          ref.values(), tol);
    }
    SUBCASE("Conv2d") {
      struct Case {
        std::int64_t in, out, k, stride, pad, h, w;
      };
      for (const Case c : {Case{8, 16, 3, 1, 1, 9, 7}, Case{16, 16, 3, 2, 1, 9, 8}, Case{12, 20, 1, 1, 0, 5, 6},
                           Case{4, 32, 3, 1, 1, 16, 16}}) {
        CAPTURE(c.in);
        CAPTURE(c.stride);
        carousel::checkpoint::RandomWeights cw(13);
        carousel::checkpoint::RandomWeights gw(13);
        const cpu::Conv2d cc(cw, "c.", {.in = c.in, .out = c.out, .kernel = c.k, .stride = c.stride, .padding = c.pad});
        const cu::Conv2d gc(gw, "c.", c.in, c.out, c.k, dt, c.stride, c.pad);
        const auto x = carousel::cuda::test::random_tensor({2, c.in, c.h, c.w}, 14);
        const auto ref = cc.forward({}, x);
        for (auto search : {cu::ConvSearch::heuristic, cu::ConvSearch::exhaustive}) {
          CAPTURE(static_cast<int>(search));
          e.set_conv_search(search);
          check_close(carousel::cuda::test::from_device(e, gc.forward(e, carousel::cuda::test::to_device(e, x, dt))),
                      ref.values(), tol);
        }
        e.set_conv_search(cu::ConvSearch::heuristic);
      }
    }
    SUBCASE("Attention") {
      // Head dims of the tiny fixtures (1), CLIP (64) and SD-1.5 (40, 80, 160); self- and cross-attention shapes with
      // lengths that are not multiples of the fused kernel's 64-row tiles; both attention paths.
      struct Case {
        std::int64_t lq, lk, heads, head_dim;
      };
      for (const Case c : {Case{37, 37, 4, 16}, Case{150, 77, 8, 40}, Case{70, 70, 8, 1}, Case{200, 200, 2, 80},
                           Case{65, 77, 2, 160}, Case{77, 77, 12, 64}, Case{90, 130, 2, 72}, Case{33, 20, 3, 12}}) {
        const std::int64_t d = c.heads * c.head_dim;
        CAPTURE(c.lq);
        CAPTURE(c.head_dim);
        for (bool causal : {false, true}) {
          CAPTURE(causal);
          const auto q = carousel::cuda::test::random_tensor({2, c.lq, d}, 15);
          const auto k = carousel::cuda::test::random_tensor({2, c.lk, d}, 16);
          const auto v = carousel::cuda::test::random_tensor({2, c.lk, d}, 17);
          cpu::Tensor ref({2, c.lq, d});
          for (int b = 0; b < 2; ++b)
            cpu::attention(q.sample(b), d, k.sample(b), d, v.sample(b), d, c.lq, c.lk, c.heads, c.head_dim, causal,
                           ref.sample(b), d);
          const auto dq = carousel::cuda::test::to_device_rows(e, q, dt);
          const auto dk = carousel::cuda::test::to_device_rows(e, k, dt);
          const auto dv = carousel::cuda::test::to_device_rows(e, v, dt);
          for (auto kernel : attention_kernels()) {
            CAPTURE(static_cast<int>(kernel));
            e.set_attention_kernel(kernel);
            auto out = e.empty({2, c.lq, d}, dt);
            cu::attention(e, dt, dq.data(), d, dk.data(), d, dv.data(), d, 2, c.lq, c.lk, c.heads, c.head_dim, causal,
                          out.data(), d);
            check_close(carousel::cuda::test::from_device_rows(e, out), ref.values(), tol);
          }
        }
      }
    }
  }
}

TEST_CASE("Cuda.Ops.LinearEpilogue") {
  // linear() with the bias and the residual in cuBLASLt's epilogue (or, for shapes cuBLASLt has no algorithm for, the
  // cuBLAS GEMM and the epilogue kernel) against cpu::Linear plus the residual added on the host.
  cu::Engine e;
  struct Case {
    std::int64_t rows, in, out;
  };
  const Case cases[] = {{21, 40, 24}, {21, 20, 12}, {64, 320, 640}, {3, 7, 5}};
  SUBCASE("Shapes") {
    for (auto dt : dtypes) {
      CAPTURE(name_of(dt));
      for (const Case& c : cases) {
        for (const bool bias : {false, true}) {
          for (const bool add_residual : {false, true}) {
            CAPTURE(c.rows);
            CAPTURE(c.in);
            CAPTURE(c.out);
            CAPTURE(bias);
            CAPTURE(add_residual);
            carousel::checkpoint::RandomWeights cw(21);
            carousel::checkpoint::RandomWeights gw(21);
            const cpu::Linear cl(cw, "l.", {.in = c.in, .out = c.out, .bias = bias});
            const cu::Linear gl(gw, "l.", c.in, c.out, dt, bias);
            const auto x = carousel::cuda::test::random_tensor({c.rows, c.in}, 22);
            const auto r = carousel::cuda::test::random_tensor({c.rows, c.out}, 23);
            cpu::Tensor ref = cl.forward({}, x);
            if (add_residual) {
              for (std::size_t i = 0; i < ref.values().size(); ++i)
                ref.data()[i] += r.data()[i];
            }
            const auto dr = carousel::cuda::test::to_device_rows(e, r, dt);
            const auto y = gl.forward(e, carousel::cuda::test::to_device_rows(e, x, dt), add_residual ? &dr : nullptr);
            check_close(carousel::cuda::test::from_device_rows(e, y), ref.values(), tolerance(dt));
          }
        }
      }
    }
  }
  SUBCASE("Sd15Sized") {
    // The transformer blocks' to_out / ff.net.2 shape class at batch 2 of 64x64 latents: 8192 rows, 320 -> 1280, with
    // bias and residual, fp16; cuBLASLt must take it (no fallback).
    const std::int64_t rows = 2 * 4096, in = 320, out = 1280;
    carousel::checkpoint::RandomWeights cw(31);
    carousel::checkpoint::RandomWeights gw(31);
    const cpu::Linear cl(cw, "l.", {.in = in, .out = out});
    const cu::Linear gl(gw, "l.", in, out, cu::DType::f16);
    const auto x = carousel::cuda::test::random_tensor({2, 4096, in}, 32);
    const auto r = carousel::cuda::test::random_tensor({2, 4096, out}, 33);
    cpu::Tensor ref = cl.forward({}, x);
    for (std::size_t i = 0; i < ref.values().size(); ++i)
      ref.data()[i] += r.data()[i];
    const auto dr = carousel::cuda::test::to_device_rows(e, r, cu::DType::f16);
    const auto y = gl.forward(e, carousel::cuda::test::to_device_rows(e, x, cu::DType::f16), &dr);
    check_close(carousel::cuda::test::from_device_rows(e, y), ref.values(), tolerance(cu::DType::f16));
    const bool fused = std::any_of(e.linear_plans().begin(), e.linear_plans().end(), [&](const auto& plan) {
      return plan.first.rows == rows && plan.first.out == out && plan.first.in == in && plan.second.supported;
    });
    CHECK_MESSAGE(fused, "cuBLASLt found no algorithm for the SD-sized linear");
  }
  SUBCASE("CapturedInGraph") {
    // A warm-up call makes the plan (and leaves y's block in the engine's cache); the second call is captured into a
    // CUDA graph, which must neither allocate nor synchronise, and the graph's launch computes the same result.
    for (auto dt : dtypes) {
      CAPTURE(name_of(dt));
      const std::int64_t rows = 64, in = 320, out = 640;
      carousel::checkpoint::RandomWeights cw(41);
      carousel::checkpoint::RandomWeights gw(41);
      const cpu::Linear cl(cw, "l.", {.in = in, .out = out});
      const cu::Linear gl(gw, "l.", in, out, dt);
      const auto x = carousel::cuda::test::random_tensor({rows, in}, 42);
      const auto r = carousel::cuda::test::random_tensor({rows, out}, 43);
      cpu::Tensor ref = cl.forward({}, x);
      for (std::size_t i = 0; i < ref.values().size(); ++i)
        ref.data()[i] += r.data()[i];
      const auto dx = carousel::cuda::test::to_device_rows(e, x, dt);
      const auto dr = carousel::cuda::test::to_device_rows(e, r, dt);
      static_cast<void>(gl.forward(e, dx, &dr));
      e.synchronize();
      cudaGraph_t graph = nullptr;
      CAROUSEL_CUDA_CHECK(cudaStreamBeginCapture(e.stream(), cudaStreamCaptureModeThreadLocal));
      cu::DeviceTensor y;
      try {
        y = gl.forward(e, dx, &dr);
      } catch (...) {
        cudaStreamEndCapture(e.stream(), &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      CAROUSEL_CUDA_CHECK(cudaStreamEndCapture(e.stream(), &graph));
      cudaGraphExec_t exec = nullptr;
      CAROUSEL_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      CAROUSEL_CUDA_CHECK(cudaMemsetAsync(y.data(), 0, y.bytes(), e.stream()));
      CAROUSEL_CUDA_CHECK(cudaGraphLaunch(exec, e.stream()));
      e.synchronize();
      check_close(carousel::cuda::test::from_device_rows(e, y), ref.values(), tolerance(dt));
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
  }
}

TEST_CASE("Cuda.Ops.AttentionPackedQkv") {
  // The UNet's layout: Q, K and V interleaved in one [B, L, 3 * d] projection (row stride 3d, K at +d, V at +2d), with
  // SD-1.5's 8 heads of 40 and a length over several key tiles; every kernel, fp16.
  cu::Engine e;
  const std::int64_t batch = 2, len = 300, heads = 8, head_dim = 40, d = heads * head_dim;
  const auto qkv = carousel::cuda::test::random_tensor({batch, len, 3 * d}, 40);
  const auto part = [&](std::int64_t offset) {
    cpu::Tensor t({batch, len, d});
    for (std::int64_t r = 0; r < batch * len; ++r)
      for (std::int64_t c = 0; c < d; ++c)
        t.data()[r * d + c] = qkv.data()[r * 3 * d + offset + c];
    return t;
  };
  const auto q = part(0), k = part(d), v = part(2 * d);
  cpu::Tensor ref({batch, len, d});
  for (int b = 0; b < batch; ++b)
    cpu::attention(q.sample(b), d, k.sample(b), d, v.sample(b), d, len, len, heads, head_dim, false, ref.sample(b), d);
  const auto device = carousel::cuda::test::to_device_rows(e, qkv, cu::DType::f16);
  const auto* base = static_cast<const __half*>(device.data());
  for (auto kernel : attention_kernels()) {
    CAPTURE(static_cast<int>(kernel));
    e.set_attention_kernel(kernel);
    auto out = e.empty({batch, len, d}, cu::DType::f16);
    cu::attention(e, cu::DType::f16, base, 3 * d, base + d, 3 * d, base + 2 * d, 3 * d, batch, len, len, heads,
                  head_dim, false, out.data(), d);
    check_close(carousel::cuda::test::from_device_rows(e, out), ref.values(), tolerance(cu::DType::f16));
  }
}

TEST_CASE("Cuda.Ops.AttentionLargeScores") {
  // fp16 inputs whose scaled scores reach about 1e5, beyond fp16's 65504: every attention kernel must keep the scores
  // in float32 (diffusers' upcast_attention). The reference runs on the same fp16-rounded inputs in float32.
  cu::Engine e;
  const std::int64_t lq = 50, lk = 60, heads = 2, head_dim = 64, d = heads * head_dim;
  const auto rounded = [&](const cpu::Tensor& t) {
    const auto h = cu::to_host(e, carousel::cuda::test::to_device_rows(e, t, cu::DType::f16));
    return cpu::Tensor(t.shape(), {h.values().begin(), h.values().end()});
  };
  const auto q = rounded(carousel::cuda::test::random_tensor({1, lq, d}, 21, 150.0f));
  const auto k = rounded(carousel::cuda::test::random_tensor({1, lk, d}, 22, 150.0f));
  const auto v = rounded(carousel::cuda::test::random_tensor({1, lk, d}, 23));
  cpu::Tensor ref({1, lq, d});
  cpu::attention(q.data(), d, k.data(), d, v.data(), d, lq, lk, heads, head_dim, false, ref.data(), d);
  float largest = 0;
  for (std::int64_t i = 0; i < lq; ++i)
    for (std::int64_t j = 0; j < lk; ++j) {
      float s = 0;
      for (std::int64_t c = 0; c < head_dim; ++c)
        s += q.data()[i * d + c] * k.data()[j * d + c];
      largest = std::max(largest, std::fabs(s) / 8.0f);
    }
  REQUIRE(largest > 65504.0f);  // the case does overflow fp16
  const auto dq = carousel::cuda::test::to_device_rows(e, q, cu::DType::f16);
  const auto dk = carousel::cuda::test::to_device_rows(e, k, cu::DType::f16);
  const auto dv = carousel::cuda::test::to_device_rows(e, v, cu::DType::f16);
  for (auto kernel : attention_kernels()) {
    CAPTURE(static_cast<int>(kernel));
    e.set_attention_kernel(kernel);
    auto out = e.empty({1, lq, d}, cu::DType::f16);
    cu::attention(e, cu::DType::f16, dq.data(), d, dk.data(), d, dv.data(), d, 1, lq, lk, heads, head_dim, false,
                  out.data(), d);
    check_close(carousel::cuda::test::from_device_rows(e, out), ref.values(), tolerance(cu::DType::f16));
  }
}

TEST_CASE("Cuda.Engine.Profile") {
  // Ops count under their own kind, outermost only: a Linear with a bias (GEMM + epilogue) is all gemm time. The first
  // take_profile() covers the GroupNorm and the Linear.
  cu::Engine e;
  const auto x =
      carousel::cuda::test::to_device(e, carousel::cuda::test::random_tensor({2, 64, 32, 32}, 30), cu::DType::f16);
  const auto gamma = cu::upload_weight(std::vector<float>(64, 1.0f), {64}, cu::DType::f32);
  const auto beta = cu::upload_weight(std::vector<float>(64, 0.0f), {64}, cu::DType::f32);
  carousel::checkpoint::RandomWeights w(31);
  const cu::Linear linear(w, "l.", 64, 128, cu::DType::f16);
  e.set_profiling(true);
  static_cast<void>(cu::group_norm(e, x, 32, 1e-5f, gamma, beta, true));
  static_cast<void>(linear.forward(e, x));
  const auto ms = e.take_profile();
  const auto at = [&](cu::OpKind k) { return ms[static_cast<std::size_t>(k)]; };
  CHECK(at(cu::OpKind::group_norm) > 0.0);
  CHECK(at(cu::OpKind::gemm) > 0.0);
  CHECK(at(cu::OpKind::elementwise) == 0.0);  // the Linear's bias epilogue ran inside the gemm scope
  CHECK(at(cu::OpKind::conv) == 0.0);
  CHECK(at(cu::OpKind::attention) == 0.0);
  // A 1x1 convolution runs as a GEMM but counts as a convolution (as PyTorch's cuDNN kernel for it does); its bias
  // epilogue is an elementwise op of its own, as after any convolution.
  const cu::Conv2d conv1x1(w, "c.", 64, 32, 1, cu::DType::f16);
  static_cast<void>(conv1x1.forward(e, x));
  const auto conv_ms = e.take_profile();
  CHECK(conv_ms[static_cast<std::size_t>(cu::OpKind::conv)] > 0.0);
  CHECK(conv_ms[static_cast<std::size_t>(cu::OpKind::gemm)] == 0.0);
  CHECK(conv_ms[static_cast<std::size_t>(cu::OpKind::elementwise)] > 0.0);  // the bias epilogue: an op of its own
  // take_profile() starts afresh; once profiling is off nothing is recorded.
  e.set_profiling(false);
  static_cast<void>(cu::group_norm(e, x, 32, 1e-5f, gamma, beta, false));
  for (double v : e.take_profile())
    CHECK(v == 0.0);
}

TEST_CASE("Cuda.Layers.Sd15Sized") {
  // One SD-1.5 resnet (320 -> 640, with time embedding) and one 320-channel transformer (8 heads of 40) at 16x16.
  cu::Engine e;
  for (auto dt : dtypes) {
    CAPTURE(name_of(dt));
    const double tol = tolerance(dt);
    SUBCASE("ResnetBlock2D") {
      carousel::checkpoint::RandomWeights cw(21);
      carousel::checkpoint::RandomWeights gw(21);
      const carousel::nn::ResnetBlock2D<cpu::Layers> cr(
          cw, "r.", {.in = 320, .out = 640, .temb_channels = 1280, .groups = 32, .eps = 1e-5f});
      const cu::ResnetBlock2D gr(gw, "r.", 320, 640, 1280, 32, 1e-5f, dt);
      const auto x = carousel::cuda::test::random_tensor({2, 320, 16, 16}, 22);
      const auto temb = carousel::cuda::test::random_tensor({2, 1280}, 23);
      const auto ref = cr.forward({}, x, temb);
      const auto dtemb = carousel::cuda::test::to_device_rows(e, temb, dt);
      check_close(
          carousel::cuda::test::from_device(e, gr.forward(e, carousel::cuda::test::to_device(e, x, dt), &dtemb)),
          ref.values(), tol);
    }
    SUBCASE("Transformer2D") {
      carousel::checkpoint::RandomWeights cw(24);
      carousel::checkpoint::RandomWeights gw(24);
      const carousel::nn::Transformer2DModel<cpu::Layers> ct(
          cw, "t.", {.channels = 320, .heads = 8, .context_dim = 768, .layers = 1, .groups = 32});
      const cu::detail::Transformer2D gt(gw, "t.", 320, 8, 768, 1, 32, false, dt);
      const auto x = carousel::cuda::test::random_tensor({2, 320, 16, 16}, 25);
      const auto ctx = carousel::cuda::test::random_tensor({2, 77, 768}, 26);
      const auto ref = ct.forward(cpu::BatchMode::batch_invariant, x, ctx);
      const auto dctx = carousel::cuda::test::to_device_rows(e, ctx, dt);
      check_close(carousel::cuda::test::from_device(e, gt.forward(e, carousel::cuda::test::to_device(e, x, dt), dctx)),
                  ref.values(), tol);
    }
  }
}
