#pragma once
/// \file
/// Device ops of the CUDA backend on DeviceTensors, all enqueued on an Engine's stream: GEMMs (cuBLAS; Linear through
/// cuBLASLt with its bias and residual in the epilogue; fp32 accumulation, fp16 inputs use the tensor cores, fp32
/// stays true fp32 — no TF32), convolutions (cuDNN, NHWC), attention (the fused flash kernel, or batched GEMMs +
/// softmax kernel), GroupNorm(+SiLU), LayerNorm, GEGLU, activations, timestep embedding,
/// nearest upsampling, channel concatenation and layout conversions. Images are NHWC on the device.
/// Every op checks its shapes and throws std::invalid_argument naming the op; CUDA failures throw CudaError.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cudnn.h>

#include <carousel/cuda/check.cuh>
#include <carousel/cuda/detail/flash_attention_mma.cuh>
#include <carousel/cuda/detail/kernels.cuh>
#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/tensor.cuh>

namespace carousel::cuda {

namespace detail {

// Calls f(float{}) or f(__half{}) for the dtype.
template <class F>
void with_dtype(DType t, F&& f) {
  if (t == DType::f32) {
    f(float{});
  } else {
    f(__half{});
  }
}

// Whether p is 16-byte aligned (a 16-byte vector access may use it).
inline bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// Calls f(std::integral_constant<int, 16 / sizeof(T)>{}) when `packed` (16-byte packs of T), else
// f(std::integral_constant<int, 1>{}): the compile-time vector width of a kernel that has both forms.
template <class T, class F>
void with_pack(bool packed, F&& f) {
  if (packed) {
    f(std::integral_constant<int, static_cast<int>(16 / sizeof(T))>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

inline cudaDataType_t cuda_type(DType t) {
  return t == DType::f32 ? CUDA_R_32F : CUDA_R_16F;
}
inline cudnnDataType_t cudnn_type(DType t) {
  return t == DType::f32 ? CUDNN_DATA_FLOAT : CUDNN_DATA_HALF;
}

inline void check_kernel() {
  CAROUSEL_CUDA_CHECK(cudaGetLastError());
}

inline void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument("carousel::cuda::" + message);
}

}  // namespace detail

/// Row-major C[M, N] = alpha * op(A)[M, K] op(B)[K, N] + beta * C with leading dimensions in elements. A and B have
/// type `ab`, C type `c`; accumulation is float32 (CUBLAS_COMPUTE_32F: tensor cores for fp16 inputs, plain FMA for
/// fp32 inputs). Counts 2MNK FLOPs on the engine.
inline void gemm(Engine& e, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                 const void* a, std::int64_t lda, const void* b, std::int64_t ldb, float beta, void* c,
                 std::int64_t ldc, DType ab, DType ct) {
  detail::OpScope scope(e, OpKind::gemm);
  // Column-major C^T = op(B)^T op(A)^T: pass B first with the same transpose flags.
  CAROUSEL_CUBLAS_CHECK(cublasGemmEx(e.cublas(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                     trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                                     static_cast<int>(k), &alpha, b, detail::cuda_type(ab), static_cast<int>(ldb), a,
                                     detail::cuda_type(ab), static_cast<int>(lda), &beta, c, detail::cuda_type(ct),
                                     static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  e.count_flops(2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k));
}

/// `count` row-major GEMMs as gemm(), matrix i at a + i*stride_a, b + i*stride_b, c + i*stride_c (strides in
/// elements).
inline void gemm_strided_batched(Engine& e, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                                 float alpha, const void* a, std::int64_t lda, std::int64_t stride_a, const void* b,
                                 std::int64_t ldb, std::int64_t stride_b, float beta, void* c, std::int64_t ldc,
                                 std::int64_t stride_c, std::int64_t count, DType ab, DType ct) {
  detail::OpScope scope(e, OpKind::gemm);
  CAROUSEL_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      e.cublas(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
      static_cast<int>(m), static_cast<int>(k), &alpha, b, detail::cuda_type(ab), static_cast<int>(ldb), stride_b, a,
      detail::cuda_type(ab), static_cast<int>(lda), stride_a, &beta, c, detail::cuda_type(ct), static_cast<int>(ldc),
      stride_c, static_cast<int>(count), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  e.count_flops(2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) *
                static_cast<double>(count));
}

namespace detail {

// The alignment class of an address for cuBLASLt's heuristic: the largest power of two up to 256 dividing it.
inline std::uint32_t lt_alignment(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0)
    alignment /= 2;
  return alignment;
}

template <class T>
void lt_set(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  CAROUSEL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value)));
}

template <class T>
void lt_set(cublasLtMatmulPreference_t preference, cublasLtMatmulPreferenceAttributes_t attribute, const T& value) {
  CAROUSEL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(value)));
}

// Fills `plan` for `key`. Row-major y [rows, out] is column-major y^T [out, rows] = W x^T (+ bias) (+ residual^T):
// A = W, stored column-major as [in, out] (ld in) and transposed; B = x, column-major [in, rows] (ld in), not
// transposed; C and D column-major [out, rows] (ld out). D = alpha op(A) op(B) + beta C with float32 compute and
// scale; the bias (length out = D's rows, dtype of D) through CUBLASLT_EPILOGUE_BIAS. `bias` is a bias pointer of the
// key's alignment class (the heuristic reads its value). The algorithm: the heuristic's first, within the engine's
// cuBLAS workspace and the key's pointer alignments; none leaves plan.supported false.
inline void make_linear_plan(Engine& e, const LinearPlanKey& key, const void* bias, LinearPlan& plan) {
  const cudaDataType_t type = cuda_type(key.dtype);
  CAROUSEL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  lt_set(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<std::int32_t>(CUBLAS_OP_T));
  lt_set(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, static_cast<std::int32_t>(CUBLAS_OP_N));
  lt_set(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
         static_cast<std::uint32_t>(key.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT));
  if (key.bias) {
    lt_set(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<std::int32_t>(type));
    lt_set(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  }
  const auto rows = static_cast<std::uint64_t>(key.rows), out = static_cast<std::uint64_t>(key.out),
             in = static_cast<std::uint64_t>(key.in);
  CAROUSEL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, type, in, out, key.in));
  CAROUSEL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, type, in, rows, key.in));
  CAROUSEL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, type, out, rows, key.out));

  cublasLtMatmulPreference_t raw = nullptr;
  CAROUSEL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw));
  const std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>, decltype(&cublasLtMatmulPreferenceDestroy)>
      preference(raw, &cublasLtMatmulPreferenceDestroy);
  lt_set(raw, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<std::uint64_t>(Engine::cublas_workspace_size()));
  lt_set(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_weight);
  lt_set(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_x);
  lt_set(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.residual ? key.align_residual : key.align_y);
  lt_set(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_y);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(e.cublas_lt(), plan.desc, plan.a, plan.b, plan.c, plan.c, raw, 1, &result, &found);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return;
  CAROUSEL_CUBLAS_CHECK(status);
  if (found < 1 || result.state != CUBLAS_STATUS_SUCCESS) return;
  plan.algo = result.algo;
  plan.supported = true;
}

// linear()'s fused path: y = x W^T (+ bias) (+ residual) as one cublasLtMatmul with the plan cached on the engine for
// the problem and its pointers' alignments. Returns false, having enqueued nothing, when cuBLASLt has no algorithm
// for it (or the problem is empty); linear() then takes the cuBLAS GEMM and the epilogue kernel.
inline bool linear_lt(Engine& e, const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
                      const DeviceTensor* residual, DeviceTensor& y, std::int64_t rows, std::int64_t out,
                      std::int64_t in) {
  if (rows == 0 || out == 0 || in == 0) return false;
  const LinearPlanKey key{rows,
                          out,
                          in,
                          x.dtype(),
                          bias != nullptr,
                          residual != nullptr,
                          lt_alignment(x.data()),
                          lt_alignment(weight.data()),
                          lt_alignment(y.data()),
                          residual ? lt_alignment(residual->data()) : 0,
                          bias ? lt_alignment(bias->data()) : 0};
  auto& plans = e.linear_plans();
  const auto [found, inserted] = plans.try_emplace(key);
  if (inserted) {
    try {
      make_linear_plan(e, key, bias ? bias->data() : nullptr, found->second);
    } catch (...) {
      plans.erase(found);
      throw;
    }
  }
  LinearPlan& plan = found->second;
  if (!plan.supported) return false;
  if (bias) lt_set(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(bias->data()));
  const float alpha = 1.0f, beta = residual ? 1.0f : 0.0f;
  const cublasStatus_t status =
      cublasLtMatmul(e.cublas_lt(), plan.desc, &alpha, weight.data(), plan.a, x.data(), plan.b, &beta,
                     residual ? residual->data() : y.data(), plan.c, y.data(), plan.c, &plan.algo, e.cublas_workspace(),
                     Engine::cublas_workspace_size(), e.stream());
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {
    plan.supported = false;
    return false;
  }
  CAROUSEL_CUBLAS_CHECK(status);
  e.count_flops(2.0 * static_cast<double>(rows) * static_cast<double>(out) * static_cast<double>(in));
  return true;
}

}  // namespace detail

/// y[..., out] = x[..., in] W^T (+ bias) (+ residual): torch.nn.Linear over the last dimension. `weight` [out, in],
/// `bias` [out] or null, `residual` shaped like y or null; all of x's dtype. One cuBLASLt matmul with float32
/// accumulation (fp32 stays true fp32) that adds the bias in its epilogue and the residual as its C operand (beta 1),
/// so the sum is rounded to the dtype once; shapes or alignments cuBLASLt has no algorithm for take a cuBLAS GEMM and
/// an epilogue kernel instead. Does not allocate beyond y and does not synchronise (CUDA-graph capturable once a first
/// call has made the problem's plan). Counts 2 rows*out*in FLOPs on the engine.
inline DeviceTensor linear(Engine& e, const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
                           const DeviceTensor* residual = nullptr) {
  detail::OpScope scope(e, OpKind::gemm);
  const std::int64_t in = weight.dim(1), out = weight.dim(0);
  detail::require(x.rank() >= 1 && x.dim(-1) == in && x.dtype() == weight.dtype(),
                  "linear: input " + shape_string(x.shape()) + " does not end in " + std::to_string(in));
  detail::require(!bias || (bias->numel() == out && bias->dtype() == x.dtype()),
                  "linear: bias " + (bias ? shape_string(bias->shape()) : std::string()) + " is not [" +
                      std::to_string(out) + "] of the input's dtype");
  const std::int64_t rows = x.numel() / in;
  Shape shape = x.shape();
  shape.back() = out;
  detail::require(!residual || (residual->shape() == shape && residual->dtype() == x.dtype()),
                  "linear: residual shape or dtype differs from the output");
  DeviceTensor y = e.empty(shape, x.dtype());
  if (detail::linear_lt(e, x, weight, bias, residual, y, rows, out, in)) return y;
  gemm(e, false, true, rows, out, in, 1.0f, x.data(), in, weight.data(), in, 0.0f, y.data(), out, x.dtype(), x.dtype());
  if (bias || residual) {
    detail::with_dtype(x.dtype(), [&](auto t) {
      detail::with_index(y.numel(), [&](auto i) {
        using T = decltype(t);
        using I = decltype(i);
        detail::epilogue<T, I><<<detail::grid_for(y.numel()), detail::block_threads, 0, e.stream()>>>(
            y.as<T>(), I{1}, static_cast<I>(rows), static_cast<I>(out), bias ? bias->as<T>() : nullptr, nullptr,
            residual ? residual->as<T>() : nullptr);
      });
    });
    detail::check_kernel();
  }
  return y;
}

/// In place y[b, p, c] += bias[c] + per_item[b, c] + residual[b, p, c] over y viewed as [B, P, C] with C its last
/// extent and B its first; each term optional (null).
inline void add_epilogue(Engine& e, DeviceTensor& y, const DeviceTensor* bias, const DeviceTensor* per_item,
                         const DeviceTensor* residual) {
  detail::OpScope scope(e, OpKind::elementwise);
  detail::require(y.rank() >= 2, "add_epilogue: " + shape_string(y.shape()) + " is not [B, ..., C]");
  if (y.numel() == 0) return;
  const std::int64_t items = y.dim(0), channels = y.dim(-1), positions = y.numel() / (items * channels);
  detail::require(!residual || residual->shape() == y.shape(), "add_epilogue: residual shape differs");
  detail::require(!per_item || per_item->numel() == items * channels, "add_epilogue: per-item term is not [B, C]");
  detail::with_dtype(y.dtype(), [&](auto t) {
    detail::with_index(y.numel(), [&](auto i) {
      using T = decltype(t);
      using I = decltype(i);
      detail::epilogue<T, I><<<detail::grid_for(y.numel()), detail::block_threads, 0, e.stream()>>>(
          y.as<T>(), static_cast<I>(items), static_cast<I>(positions), static_cast<I>(channels),
          bias ? bias->as<T>() : nullptr, per_item ? per_item->as<T>() : nullptr,
          residual ? residual->as<T>() : nullptr);
    });
  });
  detail::check_kernel();
}

/// Convolution of x [B, H, W, Cin] (NHWC) with `weight` [Cout, k, k, Cin] (KRSC), square kernel, stride and zero
/// padding, through cuDNN (fp16: tensor-core math; fp32: FMA math, no TF32); no bias. The algorithm is chosen on a
/// shape's first call, from cuDNN's heuristic or by timing (the engine's ConvSearch), and cached.
inline DeviceTensor conv2d_nhwc(Engine& e, const DeviceTensor& x, const DeviceTensor& weight, std::int64_t stride,
                                std::int64_t pad) {
  detail::OpScope scope(e, OpKind::conv);
  const std::int64_t cout = weight.dim(0), k = weight.dim(1), cin = weight.dim(3);
  detail::require(
      x.rank() == 4 && x.dim(3) == cin && x.dtype() == weight.dtype(),
      "conv2d_nhwc: input " + shape_string(x.shape()) + " does not have " + std::to_string(cin) + " channels (NHWC)");
  const std::int64_t b = x.dim(0), h = x.dim(1), w = x.dim(2);
  const std::int64_t ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1;
  DeviceTensor y = e.empty({b, ho, wo, cout}, x.dtype());
  if (y.numel() == 0) return y;  // cuDNN rejects empty tensors
  const cudnnDataType_t dt = detail::cudnn_type(x.dtype());
  cudnnTensorDescriptor_t xd = nullptr, yd = nullptr;
  cudnnFilterDescriptor_t wd = nullptr;
  cudnnConvolutionDescriptor_t cd = nullptr;
  struct Guard {
    cudnnTensorDescriptor_t& xd;
    cudnnTensorDescriptor_t& yd;
    cudnnFilterDescriptor_t& wd;
    cudnnConvolutionDescriptor_t& cd;
    ~Guard() {
      if (xd) cudnnDestroyTensorDescriptor(xd);
      if (yd) cudnnDestroyTensorDescriptor(yd);
      if (wd) cudnnDestroyFilterDescriptor(wd);
      if (cd) cudnnDestroyConvolutionDescriptor(cd);
    }
  } guard{xd, yd, wd, cd};
  CAROUSEL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&xd));
  CAROUSEL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&yd));
  CAROUSEL_CUDNN_CHECK(cudnnCreateFilterDescriptor(&wd));
  CAROUSEL_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&cd));
  CAROUSEL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NHWC, dt, static_cast<int>(b), static_cast<int>(cin),
                                                  static_cast<int>(h), static_cast<int>(w)));
  CAROUSEL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NHWC, dt, static_cast<int>(b),
                                                  static_cast<int>(cout), static_cast<int>(ho), static_cast<int>(wo)));
  CAROUSEL_CUDNN_CHECK(cudnnSetFilter4dDescriptor(wd, dt, CUDNN_TENSOR_NHWC, static_cast<int>(cout),
                                                  static_cast<int>(cin), static_cast<int>(k), static_cast<int>(k)));
  CAROUSEL_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(cd, static_cast<int>(pad), static_cast<int>(pad),
                                                       static_cast<int>(stride), static_cast<int>(stride), 1, 1,
                                                       CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  const cudnnMathType_t math = x.dtype() == DType::f16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
  CAROUSEL_CUDNN_CHECK(cudnnSetConvolutionMathType(cd, math));
  // The algorithm per problem shape is chosen once, on the first call (never one inside a graph capture: graphs are
  // captured after an eager warm-up), from cuDNN's ranking — its heuristic's, or, under ConvSearch::exhaustive, the
  // measured times of cudnnFindConvolutionForwardAlgorithmEx: the first candidate that runs is kept. Each
  // runs under the math type it was rated under (it may not run under another one; PyTorch does the same); fp32
  // stays true fp32, FMA math only, never TF32. A candidate that answers "not supported" (cuDNN 9's
  // CUDNN_STATUS_NOT_SUPPORTED_*, e.g. a tensor-core kernel for channels that are not multiples of 8) gives way to
  // the next one, and so does one whose workspace exceeds 1 GiB or cannot be allocated.
  constexpr std::size_t workspace_limit = std::size_t{1} << 30;
  struct Choice {
    cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
    cudnnMathType_t math = CUDNN_FMA_MATH;
    std::size_t workspace = 0;
  };
  using Key = std::array<std::int64_t, 10>;
  static std::mutex cache_mutex;
  static std::map<Key, Choice> cache;
  const Key key{b,
                h,
                w,
                cin,
                cout,
                k,
                stride,
                pad,
                static_cast<std::int64_t>(x.dtype()),
                static_cast<std::int64_t>(e.conv_search())};
  const float alpha = 1.0f, beta = 0.0f;
  const auto run = [&](const Choice& c) {
    CAROUSEL_CUDNN_CHECK(cudnnSetConvolutionMathType(cd, c.math));
    return cudnnConvolutionForward(e.cudnn(), &alpha, xd, x.data(), wd, weight.data(), cd, c.algo,
                                   e.workspace(c.workspace), c.workspace, &beta, yd, y.data());
  };
  std::optional<Choice> known;
  {
    std::lock_guard lock(cache_mutex);
    if (const auto it = cache.find(key); it != cache.end()) known = it->second;
  }
  if (known) {
    CAROUSEL_CUDNN_CHECK(run(*known));
  } else {
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int found = 0;
    if (e.conv_search() == ConvSearch::exhaustive) {
      // Candidates needing more than this are not timed; a search that cannot run falls back to the heuristic.
      constexpr std::size_t search_workspace = std::size_t{256} << 20;
      bool searched = false;
      try {
        void* space = e.workspace(search_workspace);
        searched = cudnnFindConvolutionForwardAlgorithmEx(e.cudnn(), xd, x.data(), wd, weight.data(), cd, yd, y.data(),
                                                          CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &found, perf, space,
                                                          search_workspace) == CUDNN_STATUS_SUCCESS;
      } catch (const CudaError&) {  // no room for the search's workspace
      }
      if (!searched) {
        static_cast<void>(cudaGetLastError());
        found = 0;
      }
    }
    if (found == 0) {
      CAROUSEL_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(e.cudnn(), xd, wd, cd, yd,
                                                                  CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &found, perf));
    }
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    std::string why = "no candidate from cuDNN's ranking";
    for (int i = 0; i < found && !known; ++i) {
      if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
      if (x.dtype() == DType::f32 && perf[i].mathType != CUDNN_FMA_MATH && perf[i].mathType != CUDNN_DEFAULT_MATH)
        continue;
      Choice c{perf[i].algo, x.dtype() == DType::f32 ? CUDNN_FMA_MATH : perf[i].mathType, 0};
      CAROUSEL_CUDNN_CHECK(cudnnSetConvolutionMathType(cd, c.math));
      last = cudnnGetConvolutionForwardWorkspaceSize(e.cudnn(), xd, wd, cd, yd, c.algo, &c.workspace);
      if (last == CUDNN_STATUS_SUCCESS && c.workspace > workspace_limit) {
        why = "a workspace of " + std::to_string(c.workspace) + " bytes, over the 1 GiB limit";
        continue;
      }
      if (last == CUDNN_STATUS_SUCCESS) {
        try {
          static_cast<void>(e.workspace(c.workspace));
        } catch (const CudaError&) {  // no room for this candidate's workspace: the next one may need less
          static_cast<void>(cudaGetLastError());
          why = "a workspace of " + std::to_string(c.workspace) + " bytes that could not be allocated";
          continue;
        }
        last = run(c);
      }
      if (last == CUDNN_STATUS_SUCCESS) {
        known = c;
      } else if (CUDNN_STATUS_CATEGORY(last) == CUDNN_STATUS_NOT_SUPPORTED) {
        static_cast<void>(cudaGetLastError());  // a refused launch must not surface at the next kernel check
        why = cudnnGetErrorString(last);
      } else {
        CAROUSEL_CUDNN_CHECK(last);
      }
    }
    if (!known)
      throw CudaError(__FILE__, __LINE__, "conv2d_nhwc: choosing a cuDNN forward algorithm",
                      std::string("no candidate runs for input ") + shape_string(x.shape()) + " (NHWC " +
                          (x.dtype() == DType::f16 ? "fp16" : "fp32") + "), filter " + shape_string(weight.shape()) +
                          ", stride " + std::to_string(stride) + ", padding " + std::to_string(pad) +
                          "; the last one tried: " + why);
    std::lock_guard lock(cache_mutex);
    cache.emplace(key, *known);
  }
  e.count_flops(2.0 * static_cast<double>(b * ho * wo * cout) * static_cast<double>(cin * k * k));
  return y;
}

/// GroupNorm of x NHWC [B, ..., C] (affine, biased variance, float32 gamma/beta [C]); SiLU afterwards when `silu`.
/// Three launches (detail::group_norm_partial / _finalize / _apply): per-channel partial sums over chunks of
/// positions (float32, shifted by a sample of the group), per-group statistics in double folded into a per-channel
/// scale and shift, then one elementwise pass; 16-byte accesses when the channels allow.
inline DeviceTensor group_norm(Engine& e, const DeviceTensor& x, std::int64_t groups, float eps,
                               const DeviceTensor& gamma, const DeviceTensor& beta, bool silu) {
  detail::OpScope scope(e, OpKind::group_norm);
  const std::int64_t channels = x.dim(-1);
  detail::require(
      groups > 0 && channels % groups == 0,
      "group_norm: " + std::to_string(channels) + " channels do not split into " + std::to_string(groups) + " groups");
  detail::require(gamma.numel() == channels && beta.numel() == channels,
                  "group_norm: gamma and beta do not have " + std::to_string(channels) + " values");
  DeviceTensor y = e.empty(x.shape(), x.dtype());
  if (x.numel() == 0) return y;
  const std::int64_t batch = x.dim(0), spatial = x.numel() / (batch * channels), cpg = channels / groups;
  // Positions per block of the partial and apply kernels: about 1024 blocks in all (one wave on a large GPU at SD's
  // sizes), and at least 16 positions and 4K elements (the float32 partials, 8 bytes per channel and block, stay
  // within a quarter of an fp16 input).
  const std::int64_t rows =
      std::max({std::int64_t{16}, (4096 + channels - 1) / channels, (batch * spatial + 1023) / 1024});
  const std::int64_t chunks = (spatial + rows - 1) / rows;
  detail::require(channels <= 0x7fffffff && chunks * cpg <= 0x7fffffff && batch <= 65535,
                  "group_norm: " + shape_string(x.shape()) + " is too large");
  // {sum, sum of squares} per (item, chunk, channel) and {scale, shift} per (item, channel), float32 pairs.
  DeviceTensor partial = e.empty({batch, chunks, channels, 2}, DType::f32);
  DeviceTensor scale_shift = e.empty({batch, channels, 2}, DType::f32);
  auto* partial2 = static_cast<float2*>(partial.data());
  auto* scale_shift2 = static_cast<float2*>(scale_shift.data());
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(batch));
  const int c = static_cast<int>(channels);
  detail::with_dtype(x.dtype(), [&](auto t) {
    using T = decltype(t);
    // Packs of 16 bytes when the channels split into them and both tensors are aligned, else single elements.
    constexpr int pack = 16 / sizeof(T);
    const bool packed = c % pack == 0 && detail::aligned16(x.data()) && detail::aligned16(y.data());
    const int packs = packed ? c / pack : c;
    const int width = std::min(packs, detail::block_threads);
    const auto threads = static_cast<unsigned>(detail::block_threads / width * width);
    const auto launch = [&](auto v) {
      constexpr int V = decltype(v)::value;
      detail::group_norm_partial<T, V>
          <<<grid, threads, 0, e.stream()>>>(x.as<T>(), partial2, spatial, c, static_cast<int>(cpg), width, rows);
      detail::check_kernel();
      detail::group_norm_finalize<T>
          <<<dim3(static_cast<unsigned>(groups), static_cast<unsigned>(batch)), detail::block_threads, 0, e.stream()>>>(
              x.as<T>(), partial2, scale_shift2, spatial, static_cast<int>(chunks), c, static_cast<int>(cpg), eps,
              gamma.as<float>(), beta.as<float>());
      detail::check_kernel();
      detail::group_norm_apply<T, V>
          <<<grid, threads, 0, e.stream()>>>(x.as<T>(), y.as<T>(), scale_shift2, spatial, c, width, rows, silu);
      detail::check_kernel();
    };
    detail::with_pack<T>(packed, launch);
  });
  return y;
}

/// LayerNorm over the last dimension (float32 gamma/beta). One launch: detail::layer_norm_rows (each row read once
/// into registers, float32 two-pass statistics) for rows of up to 2048 values, detail::layer_norm_rows_wide (one
/// block per row, double statistics) beyond.
inline DeviceTensor layer_norm(Engine& e, const DeviceTensor& x, const DeviceTensor& gamma, const DeviceTensor& beta,
                               float eps) {
  detail::OpScope scope(e, OpKind::layer_norm);
  const std::int64_t width = x.rank() ? x.dim(-1) : 0;
  detail::require(width > 0 && gamma.numel() == width,
                  "layer_norm: gamma does not match the width of " + shape_string(x.shape()));
  const std::int64_t rows = x.numel() / width;
  detail::require(rows <= 0x7fffffff, "layer_norm: " + shape_string(x.shape()) + " has too many rows");
  DeviceTensor y = e.empty(x.shape(), x.dtype());
  if (rows == 0) return y;
  detail::with_dtype(x.dtype(), [&](auto t) {
    using T = decltype(t);
    // The row in registers, in packs of 16 bytes when the width splits into them and all four tensors are aligned,
    // else single elements: lanes = the fewest lanes per row (a power of two) that leave each at most 4 packs (the
    // fastest of 2, 4 and 8 on an H100 at SD-1.5's widths), or the whole warp with at most 64 values a lane; one block
    // per row beyond that.
    constexpr int pack = 16 / sizeof(T);
    const bool packed = width % pack == 0 && detail::aligned16(x.data()) && detail::aligned16(y.data()) &&
                        detail::aligned16(gamma.data()) && detail::aligned16(beta.data());
    const std::int64_t packs = packed ? width / pack : width;
    int lanes = 1;
    while (lanes < 32 && lanes * std::int64_t{4} < packs)
      lanes *= 2;
    const std::int64_t per_lane = (packs + lanes - 1) / lanes;
    const std::int64_t rows_per_block = detail::block_threads / 32 * (32 / lanes);
    const auto blocks = static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);
    // The kernel for the smallest N (packs per lane) of these that holds per_lane, with at most 64 values a lane.
    bool launched = false;
    detail::with_pack<T>(packed, [&](auto v) {
      constexpr int V = decltype(v)::value;
      const auto try_launch = [&](auto n) {
        constexpr int N = decltype(n)::value;
        if constexpr (N * V <= 64) {
          if (per_lane <= N) {
            detail::layer_norm_rows<T, V, N><<<blocks, detail::block_threads, 0, e.stream()>>>(
                x.as<T>(), y.as<T>(), rows, static_cast<int>(width), lanes, eps, gamma.as<float>(), beta.as<float>());
            return true;
          }
        }
        return false;
      };
      launched = [&]<int... Ns>(std::integer_sequence<int, Ns...>) {
        return (try_launch(std::integral_constant<int, Ns>{}) || ...);
      }
      (std::integer_sequence<int, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64>{});
    });
    if (!launched) {
      detail::layer_norm_rows_wide<T><<<static_cast<unsigned>(rows), detail::block_threads, 0, e.stream()>>>(
          x.as<T>(), y.as<T>(), width, eps, gamma.as<float>(), beta.as<float>());
    }
  });
  detail::check_kernel();
  return y;
}

namespace detail {

// What the fused attention kernel needs to know of the current device, asked once: whether it runs
// flash_attention_mma (sm_80 or later) and the most dynamic shared memory one block may opt into.
struct DeviceLimits {
  bool mma = false;
  std::size_t max_block_smem = 0;
};
inline const DeviceLimits& device_limits() {
  static const DeviceLimits limits = [] {
    int device = 0, major = 0, smem = 0;
    CAROUSEL_CUDA_CHECK(cudaGetDevice(&device));
    CAROUSEL_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    CAROUSEL_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return DeviceLimits{major >= 8, static_cast<std::size_t>(smem)};
  }();
  return limits;
}

// Raises Kernel's dynamic shared memory limit to `bytes`, once per kernel (not again while a graph is being captured).
template <auto Kernel>
void allow_dynamic_smem(std::size_t bytes) {
  static std::once_flag raised;
  std::call_once(raised, [&] {
    CAROUSEL_CUDA_CHECK(
        cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  });
}

// The fused kernel for a padded head dim DP.
template <int DP>
void launch_flash(Engine& e, const void* q, std::int64_t ldq, const void* k, std::int64_t ldk, const void* v,
                  std::int64_t ldv, std::int64_t batch, std::int64_t lq, std::int64_t lk, std::int64_t heads,
                  std::int64_t head_dim, float scale, void* out, std::int64_t ldo) {
  const std::size_t smem = mma_flash_smem_bytes(DP);
  allow_dynamic_smem<flash_attention_mma<DP>>(smem);
  const dim3 grid(static_cast<unsigned>((lq + mma_flash_rows<DP> - 1) / mma_flash_rows<DP>),
                  static_cast<unsigned>(heads), static_cast<unsigned>(batch));
  // 16-byte asynchronous copies when every row starts 16-byte aligned.
  const auto aligned = [](const void* p, std::int64_t ld) { return aligned16(p) && ld % 8 == 0; };
  const bool vec = head_dim % 8 == 0 && aligned(q, ldq) && aligned(k, ldk) && aligned(v, ldv);
  flash_attention_mma<DP><<<grid, 128, smem, e.stream()>>>(
      static_cast<const __half*>(q), ldq, static_cast<const __half*>(k), ldk, static_cast<const __half*>(v), ldv,
      static_cast<__half*>(out), ldo, lq, lk, static_cast<int>(head_dim), scale, vec);
  check_kernel();
  e.count_flops(4.0 * static_cast<double>(batch * heads) * static_cast<double>(lq) * static_cast<double>(lk) *
                static_cast<double>(head_dim));
}

// Runs the fused kernel when the engine's AttentionKernel is flash and it applies (fp16, non-causal, head_dim <= 160,
// sm_80 or later); returns whether it did.
inline bool flash_attention_if_supported(Engine& e, DType dtype, const void* q, std::int64_t ldq, const void* k,
                                         std::int64_t ldk, const void* v, std::int64_t ldv, std::int64_t batch,
                                         std::int64_t lq, std::int64_t lk, std::int64_t heads, std::int64_t head_dim,
                                         bool causal, float scale, void* out, std::int64_t ldo) {
  if (e.attention_kernel() == AttentionKernel::plain || dtype != DType::f16 || causal || head_dim > 160 || lk == 0 ||
      !device_limits().mma)
    return false;
  bool ran = false;
  const auto run = [&](auto dp) {
    constexpr int DP = decltype(dp)::value;
    // Shared memory a block cannot have on this device leaves the work to the plain path (84 KiB at head dim 160:
    // within every sm_80+ device's opt-in limit, 99 KiB on sm_86/89, but asked all the same).
    if (mma_flash_smem_bytes(DP) > device_limits().max_block_smem) return;
    launch_flash<DP>(e, q, ldq, k, ldk, v, ldv, batch, lq, lk, heads, head_dim, scale, out, ldo);
    ran = true;
  };
  if (head_dim <= 16) {
    run(std::integral_constant<int, 16>{});
  } else if (head_dim <= 32) {
    run(std::integral_constant<int, 32>{});
  } else if (head_dim <= 48) {
    run(std::integral_constant<int, 48>{});
  } else if (head_dim <= 64) {
    run(std::integral_constant<int, 64>{});
  } else if (head_dim <= 80) {
    run(std::integral_constant<int, 80>{});
  } else if (head_dim <= 128) {
    run(std::integral_constant<int, 128>{});
  } else {
    run(std::integral_constant<int, 160>{});
  }
  return ran;
}

}  // namespace detail

/// Multi-head attention. fp16 without a causal mask and head_dim <= 160 runs the fused flash kernel
/// (detail/flash_attention_mma.cuh, sm_80 or later) unless the engine's AttentionKernel is `plain`; otherwise the
/// plain way: per batch item,
/// S = Q K^T / sqrt(head_dim) for all heads in one strided batched GEMM, a softmax kernel (causal: query i sees keys j
/// <= i) that turns S into P, O = P V. Scores and the softmax are float32 whatever the dtype (diffusers'
/// `upcast_attention`: fp16 scores can overflow, e.g. for SD 2.x); P is kept in the model's dtype for the second
/// GEMM. Heads split the width as c = head * head_dim + d. q: [B, lq, *] with row stride ldq (elements), k and v
/// [B, lk, *] with ldk / ldv; out [B, lq, heads*head_dim] (row stride ldo). All of one dtype. Nothing runs for an empty
/// batch or no queries; keys must not be empty.
inline void attention(Engine& e, DType dtype, const void* q, std::int64_t ldq, const void* k, std::int64_t ldk,
                      const void* v, std::int64_t ldv, std::int64_t batch, std::int64_t lq, std::int64_t lk,
                      std::int64_t heads, std::int64_t head_dim, bool causal, void* out, std::int64_t ldo) {
  detail::OpScope scope(e, OpKind::attention);
  if (batch == 0 || lq == 0 || heads == 0) return;
  detail::require(lk > 0 && head_dim > 0, "attention: " + std::to_string(lk) + " keys of head dimension " +
                                              std::to_string(head_dim) + " (both must be positive)");
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  if (detail::flash_attention_if_supported(e, dtype, q, ldq, k, ldk, v, ldv, batch, lq, lk, heads, head_dim, causal,
                                           scale, out, ldo))
    return;
  DeviceTensor scores = e.empty({heads, lq, lk}, DType::f32);
  const DeviceTensor probs = dtype == DType::f32 ? DeviceTensor() : e.empty({heads, lq, lk}, dtype);
  void* const p = dtype == DType::f32 ? scores.data() : probs.data();
  const std::size_t es = dtype_size(dtype);
  for (std::int64_t b = 0; b < batch; ++b) {
    const auto* qb = static_cast<const unsigned char*>(q) + static_cast<std::size_t>(b * lq * ldq) * es;
    const auto* kb = static_cast<const unsigned char*>(k) + static_cast<std::size_t>(b * lk * ldk) * es;
    const auto* vb = static_cast<const unsigned char*>(v) + static_cast<std::size_t>(b * lk * ldv) * es;
    auto* ob = static_cast<unsigned char*>(out) + static_cast<std::size_t>(b * lq * ldo) * es;
    gemm_strided_batched(e, false, true, lq, lk, head_dim, scale, qb, ldq, head_dim, kb, ldk, head_dim, 0.0f,
                         scores.data(), lk, lq * lk, heads, dtype, DType::f32);
    detail::with_dtype(dtype, [&](auto t) {
      using T = decltype(t);
      detail::softmax_rows<float, T><<<static_cast<unsigned>(heads * lq), detail::block_threads, 0, e.stream()>>>(
          scores.as<float>(), static_cast<T*>(p), lk, lq, causal);
    });
    detail::check_kernel();
    gemm_strided_batched(e, false, false, lq, head_dim, lk, 1.0f, p, lk, lq * lk, vb, ldv, head_dim, 0.0f, ob, ldo,
                         head_dim, heads, dtype, dtype);
  }
}

/// GEGLU: proj [..., 2*inner] = [a | g] -> a * GELU_erf(g) [..., inner].
inline DeviceTensor geglu(Engine& e, const DeviceTensor& proj) {
  detail::OpScope scope(e, OpKind::elementwise);
  detail::require(proj.rank() > 0 && proj.dim(-1) >= 2 && proj.dim(-1) % 2 == 0,
                  "geglu: the last extent of " + shape_string(proj.shape()) + " is not an even number >= 2");
  const std::int64_t inner = proj.dim(-1) / 2, rows = proj.numel() / (2 * inner);
  Shape shape = proj.shape();
  shape.back() = inner;
  DeviceTensor y = e.empty(shape, proj.dtype());
  detail::with_dtype(proj.dtype(), [&](auto t) {
    detail::with_index(proj.numel(), [&](auto i) {
      using T = decltype(t);
      using I = decltype(i);
      detail::geglu<T, I><<<detail::grid_for(rows * inner), detail::block_threads, 0, e.stream()>>>(
          proj.as<T>(), y.as<T>(), static_cast<I>(rows), static_cast<I>(inner));
    });
  });
  detail::check_kernel();
  return y;
}

/// Elementwise activations (in place).
enum class Activation : int {
  silu = 0,        ///< x * sigmoid(x)
  quick_gelu = 1,  ///< x * sigmoid(1.702 x)
  gelu = 2,        ///< erf GELU
};

/// Applies `kind` to every element of x in place.
inline void activate(Engine& e, DeviceTensor& x, Activation kind) {
  detail::OpScope scope(e, OpKind::elementwise);
  detail::with_dtype(x.dtype(), [&](auto t) {
    using T = decltype(t);
    detail::activation<T><<<detail::grid_for(x.numel()), detail::block_threads, 0, e.stream()>>>(
        x.as<T>(), x.numel(), static_cast<int>(kind));
  });
  detail::check_kernel();
}

/// Frequencies of the sinusoidal timestep embedding, computed on the host exactly as the CPU backend does:
/// f_i = exp(-ln(10000) * i / (half - freq_shift)) in float32.
inline std::vector<float> timestep_frequencies(std::int64_t dim, float freq_shift) {
  const std::int64_t half = dim / 2;
  std::vector<float> freqs(static_cast<std::size_t>(half));
  const auto log_period = static_cast<float>(std::log(10000.0));
  for (std::int64_t i = 0; i < half; ++i)
    freqs[static_cast<std::size_t>(i)] =
        std::exp(-log_period * static_cast<float>(i) / (static_cast<float>(half) - freq_shift));
  return freqs;
}

/// Timestep embedding [B, 2*half] in `dtype` from device timesteps [B] (float) and device frequencies [half] (even
/// embedding widths only: the CPU backend's zero column for an odd width has no counterpart here; SD's are even).
inline DeviceTensor timestep_embedding(Engine& e, const DeviceTensor& timesteps, const DeviceTensor& freqs,
                                       bool flip_sin_to_cos, DType dtype) {
  detail::OpScope scope(e, OpKind::elementwise);
  const std::int64_t batch = timesteps.numel(), half = freqs.numel();
  DeviceTensor y = e.empty({batch, 2 * half}, dtype);
  detail::with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    detail::timestep_embedding<T><<<detail::grid_for(batch * half), detail::block_threads, 0, e.stream()>>>(
        timesteps.as<float>(), freqs.as<float>(), y.as<T>(), batch, half, flip_sin_to_cos);
  });
  detail::check_kernel();
  return y;
}

/// Nearest-neighbour upsampling of NHWC x to [B, out_h, out_w, C] (torch's "nearest": source floor(o * in/out)).
inline DeviceTensor upsample_nearest(Engine& e, const DeviceTensor& x, std::int64_t out_h, std::int64_t out_w) {
  detail::OpScope scope(e, OpKind::elementwise);
  const std::int64_t b = x.dim(0), h = x.dim(1), w = x.dim(2), c = x.dim(3);
  DeviceTensor y = e.empty({b, out_h, out_w, c}, x.dtype());
  const float sy = static_cast<float>(h) / static_cast<float>(out_h);
  const float sx = static_cast<float>(w) / static_cast<float>(out_w);
  detail::with_dtype(x.dtype(), [&](auto t) {
    detail::with_index(std::max(x.numel(), y.numel()), [&](auto i) {
      using T = decltype(t);
      using I = decltype(i);
      detail::upsample_nearest_nhwc<T, I><<<detail::grid_for(y.numel()), detail::block_threads, 0, e.stream()>>>(
          x.as<T>(), y.as<T>(), static_cast<I>(b), static_cast<I>(h), static_cast<I>(w), static_cast<I>(c),
          static_cast<I>(out_h), static_cast<I>(out_w), sy, sx);
    });
  });
  detail::check_kernel();
  return y;
}

/// Channel concatenation of NHWC tensors (torch.cat(dim=1) in NCHW terms).
inline DeviceTensor concat_channels(Engine& e, const DeviceTensor& a, const DeviceTensor& b) {
  detail::OpScope scope(e, OpKind::elementwise);
  detail::require(a.rank() == 4 && b.rank() == 4 && a.dim(0) == b.dim(0) && a.dim(1) == b.dim(1) &&
                      a.dim(2) == b.dim(2) && a.dtype() == b.dtype(),
                  "concat_channels: shapes " + shape_string(a.shape()) + " and " + shape_string(b.shape()) +
                      " do not concatenate along channels");
  DeviceTensor y = e.empty({a.dim(0), a.dim(1), a.dim(2), a.dim(3) + b.dim(3)}, a.dtype());
  detail::with_dtype(a.dtype(), [&](auto t) {
    detail::with_index(y.numel(), [&](auto i) {
      using T = decltype(t);
      using I = decltype(i);
      detail::concat_channels_nhwc<T, I><<<detail::grid_for(y.numel()), detail::block_threads, 0, e.stream()>>>(
          a.as<T>(), b.as<T>(), y.as<T>(), static_cast<I>(a.dim(0) * a.dim(1) * a.dim(2)), static_cast<I>(a.dim(3)),
          static_cast<I>(b.dim(3)));
    });
  });
  detail::check_kernel();
  return y;
}

/// What to_nhwc does to each value on the way.
struct InputTransform {
  bool center = false;   ///< v = 2v - 1 (UNet center_input_sample)
  float divisor = 0.0f;  ///< when non-zero: v = v / divisor + shift (VAE latent scaling)
  float shift = 0.0f;    ///< see divisor
};

/// Host NCHW float32 [B, C, H, W] -> device NHWC `dtype` [B, H, W, C], with an optional value transform.
inline DeviceTensor to_nhwc(Engine& e, std::span<const float> nchw, const Shape& shape, DType dtype,
                            const InputTransform& transform = {}) {
  detail::OpScope scope(e, OpKind::layout);
  detail::require(shape.size() == 4, "to_nhwc: shape " + shape_string(shape) + " is not [B, C, H, W]");
  DeviceTensor staged = upload(e, nchw, shape, DType::f32);
  DeviceTensor y = e.empty({shape[0], shape[2], shape[3], shape[1]}, dtype);
  const int mode = transform.divisor != 0.0f ? 2 : transform.center ? 1 : 0;
  detail::with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    detail::nchw_to_nhwc<T><<<detail::grid_for(y.numel()), detail::block_threads, 0, e.stream()>>>(
        staged.as<float>(), y.as<T>(), shape[0], shape[1], shape[2] * shape[3], mode, transform.divisor,
        transform.shift);
  });
  detail::check_kernel();
  return y;  // `staged` goes back to the allocator; the next user of its block is ordered after the kernel
}

/// Device NHWC [B, H, W, C] -> host NCHW float32 [B, C, H, W] (waits for the stream).
inline HostTensor to_host_nchw(Engine& e, const DeviceTensor& x) {
  detail::OpScope scope(e, OpKind::layout);
  const std::int64_t b = x.dim(0), h = x.dim(1), w = x.dim(2), c = x.dim(3);
  DeviceTensor staged = e.empty({b, c, h, w}, DType::f32);
  detail::with_dtype(x.dtype(), [&](auto t) {
    using T = decltype(t);
    detail::nhwc_to_nchw<T><<<detail::grid_for(x.numel()), detail::block_threads, 0, e.stream()>>>(
        x.as<T>(), staged.as<float>(), b, c, h * w);
  });
  detail::check_kernel();
  std::vector<float> values(static_cast<std::size_t>(x.numel()));
  CAROUSEL_CUDA_CHECK(
      cudaMemcpyAsync(values.data(), staged.data(), values.size() * 4, cudaMemcpyDeviceToHost, e.stream()));
  e.synchronize();
  return HostTensor({b, c, h, w}, std::move(values));
}

/// A copy of x converted to `dtype`.
inline DeviceTensor cast(Engine& e, const DeviceTensor& x, DType dtype) {
  detail::OpScope scope(e, OpKind::layout);
  DeviceTensor y = e.empty(x.shape(), dtype);
  detail::with_dtype(x.dtype(), [&](auto from) {
    detail::with_dtype(dtype, [&](auto to) {
      detail::convert<decltype(from), decltype(to)>
          <<<detail::grid_for(x.numel()), detail::block_threads, 0, e.stream()>>>(x.as<decltype(from)>(),
                                                                                  y.as<decltype(to)>(), x.numel());
    });
  });
  detail::check_kernel();
  return y;
}

/// Device tensor -> host float32 values in the same layout (waits for the stream).
inline HostTensor to_host(Engine& e, const DeviceTensor& x) {
  detail::OpScope scope(e, OpKind::layout);
  const DeviceTensor f = x.dtype() == DType::f32 ? DeviceTensor() : cast(e, x, DType::f32);
  const void* src = x.dtype() == DType::f32 ? x.data() : f.data();
  std::vector<float> values(static_cast<std::size_t>(x.numel()));
  CAROUSEL_CUDA_CHECK(cudaMemcpyAsync(values.data(), src, values.size() * 4, cudaMemcpyDeviceToHost, e.stream()));
  e.synchronize();
  return HostTensor(x.shape(), std::move(values));
}

}  // namespace carousel::cuda
