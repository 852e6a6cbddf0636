#pragma once
/// \file
/// carousel::cuda::Stream (an owning cudaStream_t) and Engine: one stream with its cuBLAS, cuBLASLt and cuDNN handles
/// and its own CachingAllocator — the execution context every device op and module forward runs on.

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <carousel/cuda/allocator.cuh>
#include <carousel/cuda/check.cuh>
#include <carousel/cuda/tensor.cuh>

namespace carousel::cuda {

/// What an op counts as in an Engine's profile (Engine::set_profiling).
enum class OpKind : std::uint8_t {
  gemm,         ///< linear layers and GEMMs (cuBLAS)
  conv,         ///< convolutions (cuDNN)
  attention,    ///< attention: the fused kernel, or GEMMs + softmax
  group_norm,   ///< GroupNorm (+SiLU)
  layer_norm,   ///< LayerNorm
  elementwise,  ///< epilogues, GEGLU, activations, timestep embedding, upsampling, concatenation
  layout,       ///< host <-> device transfers, layout conversions, casts
};
/// Number of OpKind values.
inline constexpr std::size_t op_kind_count = 7;
/// OpKind's names, in order.
inline constexpr std::array<std::string_view, op_kind_count> op_kind_names = {
    "gemm", "conv", "attention", "group_norm", "layer_norm", "elementwise", "layout"};

/// The implementation carousel::cuda::attention uses for fp16 attention without a causal mask and head_dim <= 160
/// (everything else takes the plain path).
enum class AttentionKernel : std::uint8_t {
  flash,  ///< fused; scores in registers on mma.sync (detail/flash_attention_mma.cuh), sm_80 or later (plain below);
          ///< the default
  plain,  ///< cuBLAS GEMMs and a softmax kernel, scores in float32
};

/// How conv2d_nhwc picks the cuDNN algorithm for a problem shape it meets for the first time (once per shape, search
/// mode and process).
enum class ConvSearch : std::uint8_t {
  heuristic,   ///< cuDNN's heuristic ranking (cudnnGetConvolutionForwardAlgorithm_v7), like PyTorch by default
  exhaustive,  ///< every algorithm timed on the first call's data (cudnnFindConvolutionForwardAlgorithmEx), like
               ///< torch.backends.cudnn.benchmark = True: that first call takes longer, and the engine's cuDNN
               ///< workspace grows to 256 MiB (a search that cannot run falls back to the heuristic)
};

class Engine;

namespace detail {
class OpScope;

/// The attention kernel the environment variable CAROUSEL_CUDA_ATTENTION names: "plain", else flash.
inline AttentionKernel attention_kernel_from_environment() {
  const char* env = std::getenv("CAROUSEL_CUDA_ATTENTION");
  const std::string_view name = env ? env : "";
  return name == "plain" ? AttentionKernel::plain : AttentionKernel::flash;
}

/// What a cuBLASLt plan of carousel::cuda::linear is made for: the problem (rows, out, in, dtype, with or without a
/// bias and a residual) and the alignment class (the largest power of two up to 256 dividing the address, 0 for an
/// absent operand) of each pointer, which the heuristic's choice depends on.
struct LinearPlanKey {
  std::int64_t rows, out, in;
  DType dtype;
  bool bias, residual;
  std::uint32_t align_x, align_weight, align_y, align_residual, align_bias;
  auto operator<=>(const LinearPlanKey&) const = default;
};

/// A cuBLASLt matmul prepared for one LinearPlanKey (filled by carousel::cuda::linear on first use): the operation
/// descriptor, the layouts of A (the weight), B (the input) and of C and D (the output, and the residual, share one
/// layout), and the algorithm the heuristic ranked first. `supported` false: cuBLASLt offered no algorithm, and linear
/// takes its cuBLAS path for this key. Owns its descriptors; neither copied nor moved (it lives in a std::map node).
struct LinearPlan {
  LinearPlan() = default;
  LinearPlan(const LinearPlan&) = delete;
  LinearPlan& operator=(const LinearPlan&) = delete;
  ~LinearPlan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool supported = false;
};
}  // namespace detail

/// An owning, non-blocking CUDA stream. Move-only.
class Stream {
 public:
  /// A new stream (cudaStreamNonBlocking). \throws CudaError.
  Stream() { CAROUSEL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  Stream(Stream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept {
    if (this != &o) {
      if (stream_) cudaStreamDestroy(stream_);
      stream_ = std::exchange(o.stream_, nullptr);
    }
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (stream_) cudaStreamDestroy(stream_);
  }
  /// The handle.
  cudaStream_t get() const noexcept { return stream_; }
  /// Blocks until all work on the stream has finished. \throws CudaError for an asynchronous error.
  void synchronize() const { CAROUSEL_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

/// One stream of work: the stream, a cuBLAS handle and a cuDNN handle bound to it, a cuBLASLt handle with the plans of
/// carousel::cuda::linear (cached per problem shape, never evicted), and the allocator whose blocks
/// are ordered by that stream. Modules' forward calls take an Engine; an Engine must be used by one thread at a time
/// (`mutex()` is there for callers that share one). Counts the FLOPs of the GEMMs and convolutions it issues
/// (`flops()`, for benchmarks).
///
/// Graph capture (carousel::cuda::UNetGraphs): `set_pool` redirects temporaries to a private allocator whose blocks
/// stay reserved for one captured graph; the cuBLAS and cuDNN workspaces have fixed addresses (cuBLAS's is set once and
/// shared with cuBLASLt, whose calls are ordered with cuBLAS's on the one stream; cuDNN's only grows and never frees an
/// address a graph may hold) so that captured work never allocates.
class Engine {
 public:
  /// A new stream with its handles. \throws CudaError.
  Engine() {
    CAROUSEL_CUBLAS_CHECK(cublasCreate(&cublas_));
    CAROUSEL_CUBLAS_CHECK(cublasSetStream(cublas_, stream_.get()));
    CAROUSEL_CUBLAS_CHECK(cublasLtCreate(&cublas_lt_));
    CAROUSEL_CUDNN_CHECK(cudnnCreate(&cudnn_));
    CAROUSEL_CUDNN_CHECK(cudnnSetStream(cudnn_, stream_.get()));
    cublas_workspace_ = DeviceBuffer(cublas_workspace_bytes, nullptr);
    CAROUSEL_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_.get(), cublas_workspace_bytes));
  }
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine() {
    cudaStreamSynchronize(stream_.get());
    discard_profile();
    linear_plans_.clear();
    cublasLtDestroy(cublas_lt_);
    cudnnDestroy(cudnn_);
    cublasDestroy(cublas_);
  }

  /// The stream.
  cudaStream_t stream() const noexcept { return stream_.get(); }
  /// The cuBLAS handle (bound to stream()).
  cublasHandle_t cublas() const noexcept { return cublas_; }
  /// The cuBLASLt handle (its calls name stream() themselves).
  cublasLtHandle_t cublas_lt() const noexcept { return cublas_lt_; }
  /// The cuBLAS workspace (fixed address, cublas_workspace_size() bytes), for cuBLASLt calls on stream().
  void* cublas_workspace() const noexcept { return cublas_workspace_.get(); }
  /// The cuBLAS workspace's size in bytes.
  static constexpr std::size_t cublas_workspace_size() noexcept { return cublas_workspace_bytes; }
  /// carousel::cuda::linear's cuBLASLt plans (see detail::LinearPlan); for that op only.
  std::map<detail::LinearPlanKey, detail::LinearPlan>& linear_plans() noexcept { return linear_plans_; }
  /// The cuDNN handle (bound to stream()).
  cudnnHandle_t cudnn() const noexcept { return cudnn_; }
  /// The allocator temporaries come from now: the engine's own, or the pool given to set_pool().
  CachingAllocator& allocator() noexcept { return pool_ ? *pool_ : allocator_; }
  /// Directs temporaries to `pool` (nullptr: back to the engine's own allocator). The pool must outlive its use.
  void set_pool(CachingAllocator* pool) noexcept { pool_ = pool; }
  /// A fresh tensor from allocator() (uninitialised).
  DeviceTensor empty(Shape shape, DType dtype) { return DeviceTensor(std::move(shape), dtype, &allocator()); }
  /// A scratch block of at least `bytes` for cuDNN, valid until the next call on this stream. Grows only; a replaced
  /// block is kept until the engine is destroyed, since a captured graph may still use its address.
  void* workspace(std::size_t bytes) {
    if (bytes > workspace_.bytes()) {
      DeviceBuffer larger(bytes, nullptr);  // first, so that a failed allocation leaves the current block in place
      retired_workspaces_.push_back(std::move(workspace_));
      workspace_ = std::move(larger);
    }
    return workspace_.get();
  }
  /// Blocks until the stream's work is done. \throws CudaError for an asynchronous error.
  void synchronize() const { stream_.synchronize(); }
  /// The mutex callers share an engine under.
  std::mutex& mutex() noexcept { return mutex_; }
  /// The attention implementation (see AttentionKernel). Defaults to flash; the environment variable
  /// CAROUSEL_CUDA_ATTENTION = "plain" picks the other.
  AttentionKernel attention_kernel() const noexcept { return attention_kernel_; }
  /// Chooses the attention implementation.
  void set_attention_kernel(AttentionKernel kernel) noexcept { attention_kernel_ = kernel; }
  /// How convolution algorithms are chosen (see ConvSearch). Defaults to heuristic; the environment variable
  /// CAROUSEL_CUDA_CONV_SEARCH = "exhaustive" picks the other.
  ConvSearch conv_search() const noexcept { return conv_search_; }
  /// Chooses how convolution algorithms are chosen.
  void set_conv_search(ConvSearch search) noexcept { conv_search_ = search; }
  /// Adds `n` to the FLOP counter (called by the GEMM and convolution ops).
  void count_flops(double n) noexcept { flops_ += n; }
  /// FLOPs issued since construction or the last reset_flops().
  double flops() const noexcept { return flops_; }
  /// Zeroes the FLOP counter.
  void reset_flops() noexcept { flops_ = 0; }

  /// Starts (true) or stops (false) timing every op on the stream by OpKind, with a pair of CUDA events around each
  /// outermost op (an op made of other ops counts once, as its own kind). For benchmarks: it adds two event records
  /// per op, and must not be on while a graph is captured (UNetGraphs refuses). Either way the time gathered so far is
  /// discarded, and an op running at the time of the switch is not counted.
  void set_profiling(bool on) {
    discard_profile();
    profiling_ = on;
  }
  /// Whether ops are being timed.
  bool profiling() const noexcept { return profiling_; }
  /// Device milliseconds per OpKind (indexed by its value) of the ops timed since profiling started or since the last
  /// call; waits for the stream. \throws CudaError.
  std::array<double, op_kind_count> take_profile() {
    synchronize();
    std::array<double, op_kind_count> ms{};
    for (const Timed& t : timed_) {
      float elapsed = 0;
      CAROUSEL_CUDA_CHECK(cudaEventElapsedTime(&elapsed, t.start, t.stop));
      ms[static_cast<std::size_t>(t.kind)] += elapsed;
    }
    discard_profile();
    return ms;
  }

 private:
  friend class detail::OpScope;
  struct Timed {
    OpKind kind;
    cudaEvent_t start, stop;
  };
  void discard_profile() noexcept {
    for (const Timed& t : timed_) {
      cudaEventDestroy(t.start);
      cudaEventDestroy(t.stop);
    }
    timed_.clear();
  }

  Stream stream_;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t cublas_lt_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  static constexpr std::size_t cublas_workspace_bytes = std::size_t{32} << 20;
  CachingAllocator allocator_;
  CachingAllocator* pool_ = nullptr;
  DeviceBuffer cublas_workspace_;
  DeviceBuffer workspace_;
  std::vector<DeviceBuffer> retired_workspaces_;
  std::map<detail::LinearPlanKey, detail::LinearPlan> linear_plans_;
  std::mutex mutex_;
  double flops_ = 0;
  bool profiling_ = false;
  int op_depth_ = 0;  // open OpScopes while profiling
  std::vector<Timed> timed_;
  ConvSearch conv_search_ = [] {
    const char* env = std::getenv("CAROUSEL_CUDA_CONV_SEARCH");
    return env && std::string_view(env) == "exhaustive" ? ConvSearch::exhaustive : ConvSearch::heuristic;
  }();
  AttentionKernel attention_kernel_ = detail::attention_kernel_from_environment();
};

namespace detail {

/// Times the op it spans on the engine's stream under the given OpKind while the engine is profiling (outermost scope
/// only). Costs one branch otherwise. Ops in ops.cuh open one first thing.
class OpScope {
 public:
  OpScope(Engine& e, OpKind kind) : kind_(kind) {
    if (!e.profiling_) return;
    if (e.op_depth_ == 0) {
      CAROUSEL_CUDA_CHECK(cudaEventCreate(&start_));
      if (const cudaError_t error = cudaEventRecord(start_, e.stream()); error != cudaSuccess) {
        cudaEventDestroy(start_);
        CAROUSEL_CUDA_CHECK(error);
      }
    }
    e_ = &e;
    ++e.op_depth_;
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;
  ~OpScope() {
    if (!e_ || --e_->op_depth_ > 0) return;
    if (!e_->profiling_) {  // switched off inside the op: its time is not wanted
      cudaEventDestroy(start_);
      return;
    }
    cudaEvent_t stop = nullptr;
    try {
      if (cudaEventCreate(&stop) == cudaSuccess && cudaEventRecord(stop, e_->stream()) == cudaSuccess) {
        e_->timed_.push_back({kind_, start_, stop});
        return;
      }
    } catch (...) {  // out of host memory for the record
    }
    if (stop) cudaEventDestroy(stop);  // a failed record loses this op's time, nothing else
    cudaEventDestroy(start_);
  }

 private:
  Engine* e_ = nullptr;
  OpKind kind_;
  cudaEvent_t start_ = nullptr;
};

}  // namespace detail

/// Copies a host tensor to the device as `dtype` on the engine's stream (synchronous with respect to the host
/// buffer: returns after the copy was enqueued from a staging vector that it waits for).
inline DeviceTensor upload(Engine& engine, std::span<const float> values, Shape shape, DType dtype) {
  if (static_cast<std::int64_t>(values.size()) != shape_numel(shape))
    throw std::invalid_argument("carousel::cuda::upload: " + std::to_string(values.size()) +
                                " values do not fill shape " + shape_string(shape));
  detail::OpScope scope(engine, OpKind::layout);
  DeviceTensor t = engine.empty(std::move(shape), dtype);
  const auto bytes = to_dtype_bytes(values, dtype);
  CAROUSEL_CUDA_CHECK(cudaMemcpyAsync(t.data(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice, engine.stream()));
  engine.synchronize();
  return t;
}

}  // namespace carousel::cuda
