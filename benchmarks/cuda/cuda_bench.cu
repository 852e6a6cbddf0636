// CUDA backend benchmarks: the measured matrix-unit peak (a cuBLAS fp16 GEMM, fp32 accumulation) and one UNet step of
// an SD-1.5-shaped UNet (random weights, fp16, 512x512 images = 64x64 latents, 77-token context) at batch sizes
// 1..16. Times come from CUDA events around each step (manual time); counters report ms per step, TFLOP/s (from the
// FLOPs the engine counts for every GEMM and convolution) and images/s; BM_UNetStepSd15Fp16ConvSearch with timed
// convolution algorithms (ConvSearch::exhaustive). BM_UNetBreakdownSd15Fp16: a batch-8 step's device time by op kind.
// BM_GroupNormSd15 and BM_LayerNormSd15: GroupNorm's and LayerNorm's bandwidth against a copy's.
// BM_DecodeOverlapSd15: how much of a VAE decode on its own engine (stream) the GPU hides behind a UNet step run at
// the same time (Options::concurrent_retire).
//   carousel-bench-cuda --benchmark_format=json    (scripts/gpu-check.sh runs it and prints the table)

#include <benchmark/benchmark.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <carousel/checkpoint/unet_config.hpp>
#include <carousel/checkpoint/vae_config.hpp>
#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/graph.cuh>
#include <carousel/cuda/ops.cuh>
#include <carousel/cuda/unet.cuh>
#include <carousel/cuda/vae.cuh>

namespace cu = carousel::cuda;

namespace {

// Marks the benchmark skipped when there is no CUDA device; returns whether it did.
bool skipped_without_gpu(benchmark::State& state) {
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0) return false;
  state.SkipWithError("no CUDA device");
  return true;
}

// Fills an fp16 or fp32 tensor with pseudo-random values uniform in [-scale, scale) (a hash of the index and `seed`):
// timing on constant data can flatter a kernel.
template <class T>
__global__ void random_fill_kernel(T* x, std::int64_t n, unsigned seed, float scale) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed * 2246822519u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = static_cast<T>(scale * (static_cast<float>(h >> 8) * (2.0f / 16777216.0f) - 1.0f));
  }
}
void random_fill(cu::Engine& e, cu::DeviceTensor& x, unsigned seed, float scale = 1.0f) {
  if (x.dtype() == cu::DType::f16) {
    random_fill_kernel<<<1024, 256, 0, e.stream()>>>(x.as<__half>(), x.numel(), seed, scale);
  } else {
    random_fill_kernel<<<1024, 256, 0, e.stream()>>>(x.as<float>(), x.numel(), seed, scale);
  }
  CAROUSEL_CUDA_CHECK(cudaGetLastError());
}

// Milliseconds between two events recorded around `fn` on the engine's stream.
template <class F>
double time_ms(cu::Engine& e, F&& fn) {
  cudaEvent_t start, stop;
  CAROUSEL_CUDA_CHECK(cudaEventCreate(&start));
  CAROUSEL_CUDA_CHECK(cudaEventCreate(&stop));
  CAROUSEL_CUDA_CHECK(cudaEventRecord(start, e.stream()));
  fn();
  CAROUSEL_CUDA_CHECK(cudaEventRecord(stop, e.stream()));
  CAROUSEL_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CAROUSEL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms;
}

// Times `fn` once per benchmark iteration (the iteration's manual time) and returns the mean in milliseconds.
template <class F>
double mean_iteration_ms(benchmark::State& state, cu::Engine& e, F&& fn) {
  double total_ms = 0;
  for (auto _ : state) {
    const double ms = time_ms(e, fn);
    total_ms += ms;
    state.SetIterationTime(ms / 1e3);
  }
  return total_ms / static_cast<double>(state.iterations());
}

// Times `run`, a bandwidth-bound op on x that moves `passes` times x's bytes, against a device-to-device copy of x in
// the same iterations: counters ms, GBps, copy_GBps (a copy reads and writes x: 2 passes) and of_copy.
template <class F>
void time_against_copy(benchmark::State& state, cu::Engine& e, const cu::DeviceTensor& x, int passes, F&& run) {
  auto copy = e.empty(x.shape(), x.dtype());
  auto copy_x = [&] {
    CAROUSEL_CUDA_CHECK(cudaMemcpyAsync(copy.data(), x.data(), x.bytes(), cudaMemcpyDeviceToDevice, e.stream()));
  };
  run();
  copy_x();
  double total_ms = 0, copy_ms = 0;
  for (auto _ : state) {
    const double ms = time_ms(e, run);
    total_ms += ms;
    copy_ms += time_ms(e, copy_x);
    state.SetIterationTime(ms / 1e3);
  }
  const double n = static_cast<double>(state.iterations());
  const double gbps = passes * static_cast<double>(x.bytes()) / (total_ms / n * 1e-3) / 1e9;
  const double copy_gbps = 2.0 * static_cast<double>(x.bytes()) / (copy_ms / n * 1e-3) / 1e9;
  state.counters["ms"] = total_ms / n;
  state.counters["GBps"] = gbps;
  state.counters["copy_GBps"] = copy_gbps;
  state.counters["of_copy"] = gbps / copy_gbps;
}

void BM_GemmPeakFp16(benchmark::State& state) {
  if (skipped_without_gpu(state)) return;
  const std::int64_t n = state.range(0);
  cu::Engine e;
  auto a = e.empty({n, n}, cu::DType::f16), b = e.empty({n, n}, cu::DType::f16), c = e.empty({n, n}, cu::DType::f16);
  random_fill(e, a, 1);
  random_fill(e, b, 2);
  auto run = [&] {
    cu::gemm(e, false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n, cu::DType::f16,
             cu::DType::f16);
  };
  run();
  const double mean_ms = mean_iteration_ms(state, e, run);
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  state.counters["ms"] = mean_ms;
  state.counters["TFLOPS"] = flops / (mean_ms * 1e-3) / 1e12;
}
BENCHMARK(BM_GemmPeakFp16)->ArgName("n")->Arg(8192)->UseManualTime()->Iterations(20)->Unit(benchmark::kMillisecond);

// SD-1.5's largest self-attention (64x64 latents: 4096 tokens, 8 heads of 40) for 2 images, fp16, by AttentionKernel:
// 0 flash (fused, mma.sync), 1 plain (GEMM + softmax + GEMM).
void BM_AttentionSd15Fp16(benchmark::State& state) {
  if (skipped_without_gpu(state)) return;
  const std::int64_t batch = 2, tokens = 4096, heads = 8, head_dim = 40, width = heads * head_dim;
  cu::Engine e;
  e.set_attention_kernel(static_cast<cu::AttentionKernel>(state.range(0)));
  auto qkv = e.empty({batch, tokens, 3 * width}, cu::DType::f16);
  auto out = e.empty({batch, tokens, width}, cu::DType::f16);
  random_fill(e, qkv, 3, 2.0f);
  const auto* base = static_cast<const unsigned char*>(qkv.data());
  auto run = [&] {
    cu::attention(e, cu::DType::f16, base, 3 * width, base + 2 * width, 3 * width, base + 4 * width, 3 * width, batch,
                  tokens, tokens, heads, head_dim, false, out.data(), width);
  };
  run();
  const double mean_ms = mean_iteration_ms(state, e, run);
  const double flops = 4.0 * static_cast<double>(batch * heads * tokens) * static_cast<double>(tokens * head_dim);
  state.counters["ms"] = mean_ms;
  state.counters["TFLOPS"] = flops / (mean_ms * 1e-3) / 1e12;
}
BENCHMARK(BM_AttentionSd15Fp16)
    ->ArgName("kernel")
    ->Arg(0)
    ->Arg(1)
    ->UseManualTime()
    ->Iterations(10)
    ->Unit(benchmark::kMillisecond);

// A norm's float32 gamma (ones) and beta (zeros) of `width` values, on the device.
std::pair<cu::DeviceTensor, cu::DeviceTensor> identity_affine(std::int64_t width) {
  const auto n = static_cast<std::size_t>(width);
  return {cu::upload_weight(std::vector<float>(n, 1.0f), {width}, cu::DType::f32),
          cu::upload_weight(std::vector<float>(n, 0.0f), {width}, cu::DType::f32)};
}

// GroupNorm(+SiLU), 32 groups, on SD-1.5's two commonest large shapes: the UNet's first level (case 0: batch 16 of
// 64x64x320, fp16) and the VAE decoder's last (case 1: one 512x512x128 image, fp32). The op reads x twice and writes
// y once; a device-to-device copy of x in the same run is the bandwidth reference (GB/s and % of the copy's).
void BM_GroupNormSd15(benchmark::State& state) {
  if (skipped_without_gpu(state)) return;
  const bool vae = state.range(0) != 0;
  const cu::Shape shape = vae ? cu::Shape{1, 512, 512, 128} : cu::Shape{16, 64, 64, 320};
  const cu::DType dtype = vae ? cu::DType::f32 : cu::DType::f16;
  const std::int64_t channels = shape.back();
  cu::Engine e;
  auto x = e.empty(shape, dtype);
  random_fill(e, x, 4, 3.0f);
  const auto [gamma, beta] = identity_affine(channels);
  auto run = [&] { static_cast<void>(cu::group_norm(e, x, 32, 1e-6f, gamma, beta, true)); };
  time_against_copy(state, e, x, 3, run);
}
BENCHMARK(BM_GroupNormSd15)
    ->ArgName("vae")
    ->Arg(0)
    ->Arg(1)
    ->UseManualTime()
    ->Iterations(20)
    ->Unit(benchmark::kMillisecond);

// LayerNorm on SD-1.5's transformer shapes at batch 8, fp16: the tokens of level `level` (64x64 >> level positions of
// 320 << level channels: [8 * 4096, 320], [8 * 1024, 640], [8 * 256, 1280]). The op reads x once and writes y once;
// a device-to-device copy of x in the same run is the bandwidth reference (GB/s and % of the copy's).
void BM_LayerNormSd15(benchmark::State& state) {
  if (skipped_without_gpu(state)) return;
  const std::int64_t level = state.range(0), width = std::int64_t{320} << level;
  const std::int64_t tokens = (std::int64_t{64} >> level) * (std::int64_t{64} >> level);
  const cu::Shape shape = {8, tokens, width};
  cu::Engine e;
  auto x = e.empty(shape, cu::DType::f16);
  random_fill(e, x, 5, 3.0f);
  const auto [gamma, beta] = identity_affine(width);
  auto run = [&] { static_cast<void>(cu::layer_norm(e, x, gamma, beta, 1e-5f)); };
  time_against_copy(state, e, x, 2, run);
}
BENCHMARK(BM_LayerNormSd15)
    ->ArgName("level")
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->UseManualTime()
    ->Iterations(20)
    ->Unit(benchmark::kMillisecond);

// The SD-1.5 UNet (859.5M parameters) with cross_attention_dim 768, built once.
const cu::UNet2DConditionModel& sd15_unet() {
  static const auto unet = [] {
    carousel::checkpoint::UNetConfig config;  // defaults are SD-1.5's blocks
    config.cross_attention_dim = 768;
    config.sample_size = 64;
    carousel::checkpoint::RandomWeights weights(1234);
    return std::make_unique<cu::UNet2DConditionModel>(config, weights, cu::DType::f16);
  }();
  return *unet;
}

// Inputs of an SD-1.5 UNet step at 512x512: sample [batch, 64, 64, 4] (NHWC), timesteps [batch], context
// [batch, 77, 768]; constant values (the timing does not depend on them).
struct Sd15Inputs {
  cu::DeviceTensor sample, timesteps, context;
};
Sd15Inputs sd15_inputs(cu::Engine& e, std::int64_t batch) {
  return {cu::to_nhwc(e, std::vector<float>(static_cast<std::size_t>(batch * 4 * 64 * 64), 0.5f), {batch, 4, 64, 64},
                      cu::DType::f16),
          cu::upload(e, std::vector<float>(static_cast<std::size_t>(batch), 500.0f), {batch}, cu::DType::f32),
          cu::upload(e, std::vector<float>(static_cast<std::size_t>(batch * 77 * 768), 0.1f), {batch, 77, 768},
                     cu::DType::f16)};
}

// One UNet step at `batch`, eager (every kernel launched from the host) or replayed from a captured CUDA graph, with
// convolution algorithms from cuDNN's heuristic or timed (ConvSearch::exhaustive).
void unet_step(benchmark::State& state, bool graphs, cu::ConvSearch search = cu::ConvSearch::heuristic) {
  if (skipped_without_gpu(state)) return;
  const std::int64_t batch = state.range(0);
  const auto& unet = sd15_unet();
  cu::Engine e;
  e.set_conv_search(search);
  const auto [sample, timesteps, context] = sd15_inputs(e, batch);
  // FLOPs of one step, counted on an eager warm-up (a graph replay issues the same work without the host).
  static_cast<void>(unet.forward(e, sample, timesteps, context));
  e.synchronize();
  const double flops = e.flops();
  cu::UNetGraphs graph_runner(unet, {batch});
  auto step = [&] {
    if (graphs) {
      static_cast<void>(graph_runner.forward(e, sample, timesteps, context));
    } else {
      static_cast<void>(unet.forward(e, sample, timesteps, context));
    }
  };
  step();  // warm-up (captures the graph)
  e.synchronize();
  const double mean_ms = mean_iteration_ms(state, e, step);
  state.counters["batch"] = static_cast<double>(batch);
  state.counters["ms"] = mean_ms;
  state.counters["GFLOP_per_step"] = flops / 1e9;
  state.counters["TFLOPS"] = flops / (mean_ms * 1e-3) / 1e12;
  state.counters["images_per_s"] = static_cast<double>(batch) / (mean_ms * 1e-3);
}

void BM_UNetStepSd15Fp16(benchmark::State& state) {
  unet_step(state, false);
}
void BM_UNetStepSd15Fp16Graph(benchmark::State& state) {
  unet_step(state, true);
}
void BM_UNetStepSd15Fp16ConvSearch(benchmark::State& state) {
  unet_step(state, false, cu::ConvSearch::exhaustive);
}

BENCHMARK(BM_UNetStepSd15Fp16)
    ->ArgName("batch")
    ->Arg(1)
    ->Arg(2)
    ->Arg(4)
    ->Arg(8)
    ->Arg(16)
    ->UseManualTime()
    ->Iterations(5)
    ->Unit(benchmark::kMillisecond);

BENCHMARK(BM_UNetStepSd15Fp16Graph)
    ->ArgName("batch")
    ->Arg(1)
    ->Arg(8)
    ->UseManualTime()
    ->Iterations(5)
    ->Unit(benchmark::kMillisecond);

BENCHMARK(BM_UNetStepSd15Fp16ConvSearch)
    ->ArgName("batch")
    ->Arg(8)
    ->UseManualTime()
    ->Iterations(5)
    ->Unit(benchmark::kMillisecond);

// Where a batch-8 UNet step's device time goes, by OpKind (Engine::set_profiling: CUDA events around every op), the
// mean of 3 profiled steps; `step_ms` is an unprofiled step in the same run, so step_ms - sum_ms is time outside the
// ops (launch gaps, kernels of no op). torch_unet.py --profile-batch 8 gives PyTorch's kernels in the same categories.
void BM_UNetBreakdownSd15Fp16(benchmark::State& state) {
  if (skipped_without_gpu(state)) return;
  const std::int64_t batch = state.range(0);
  const auto& unet = sd15_unet();
  cu::Engine e;
  const auto [sample, timesteps, context] = sd15_inputs(e, batch);
  auto step = [&] { static_cast<void>(unet.forward(e, sample, timesteps, context)); };
  step();
  e.synchronize();
  constexpr int profiled = 3;
  std::array<double, cu::op_kind_count> ms{};
  double step_ms = 0;
  for (auto _ : state) {
    step_ms = time_ms(e, step);
    e.set_profiling(true);
    const double wall = time_ms(e, [&] {
      for (int i = 0; i < profiled; ++i)
        step();
    });
    ms = e.take_profile();
    e.set_profiling(false);
    state.SetIterationTime(wall / 1e3);
  }
  double sum = 0;
  for (std::size_t k = 0; k < cu::op_kind_count; ++k) {
    state.counters[std::string(cu::op_kind_names[k]) + "_ms"] = ms[k] / profiled;
    sum += ms[k] / profiled;
  }
  state.counters["sum_ms"] = sum;
  state.counters["step_ms"] = step_ms;
  state.counters["batch"] = static_cast<double>(batch);
}
BENCHMARK(BM_UNetBreakdownSd15Fp16)
    ->ArgName("batch")
    ->Arg(8)
    ->UseManualTime()
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

// The host boundary of one Pipeline step through cuda::Backend::unet at SD-1.5 512x512, batch 8 with guidance (16
// rows): the sample in (NCHW float32 -> NHWC fp16), the context in (16 x 77 x 768), the timesteps in, the model
// output back (NHWC -> NCHW float32), each as the Backend does it (synchronous copies). Against BM_UNetStepSd15Fp16 at
// batch 16 it says what device-resident latents would save per step.
void BM_HostBoundarySd15(benchmark::State& state) {
  if (skipped_without_gpu(state)) return;
  const std::int64_t rows = 16;
  cu::Engine e;
  const std::vector<float> sample(static_cast<std::size_t>(rows * 4 * 64 * 64), 0.5f);
  const std::vector<float> context(static_cast<std::size_t>(rows * 77 * 768), 0.1f);
  const std::vector<float> timesteps(static_cast<std::size_t>(rows), 500.0f);
  const auto output = e.empty({rows, 64, 64, 4}, cu::DType::f16);
  CAROUSEL_CUDA_CHECK(cudaMemsetAsync(output.data(), 0, output.bytes(), e.stream()));
  auto round_trip = [&] {
    static_cast<void>(cu::to_nhwc(e, sample, {rows, 4, 64, 64}, cu::DType::f16));
    static_cast<void>(cu::upload(e, timesteps, {rows}, cu::DType::f32));
    static_cast<void>(cu::upload(e, context, {rows, 77, 768}, cu::DType::f16));
    static_cast<void>(cu::to_host_nchw(e, output));
  };
  round_trip();
  double total_ms = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    round_trip();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    total_ms += ms;
    state.SetIterationTime(ms / 1e3);
  }
  state.counters["ms"] = total_ms / static_cast<double>(state.iterations());
}
BENCHMARK(BM_HostBoundarySd15)->UseManualTime()->Iterations(20)->Unit(benchmark::kMillisecond);

// The decoder of SD-1.5's VAE (AutoencoderKL: 128/256/512/512 channels, two resnets per block) in `dtype`, built once
// per dtype (float32 is the backend's default, as diffusers' force_upcast runs it).
const cu::VaeDecoder& sd15_vae(cu::DType dtype = cu::DType::f32) {
  const auto build = [](cu::DType dt) {
    carousel::checkpoint::VaeConfig config;
    config.block_out_channels = {128, 256, 512, 512};
    config.down_block_types.assign(4, "DownEncoderBlock2D");
    config.up_block_types.assign(4, "UpDecoderBlock2D");
    config.layers_per_block = 2;
    config.sample_size = 512;
    carousel::checkpoint::RandomWeights weights(4321);
    return std::make_unique<cu::VaeDecoder>(config, weights, dt);
  };
  if (dtype == cu::DType::f16) {
    static const auto vae = build(cu::DType::f16);
    return *vae;
  }
  static const auto vae = build(cu::DType::f32);
  return *vae;
}

// The VAE decode of `batch` 512x512 images (batchx4x64x64 latents) in float32 (fp16:0, the backend's default
// vae_dtype) and in fp16 (fp16:1): the decode curve d(b) of the serving simulator (gpu-check.sh writes the float32 one
// into unet-curve-guided.csv) and what BackendOptions::vae_dtype = f16 would save.
void BM_VaeDecodeSd15(benchmark::State& state) {
  if (skipped_without_gpu(state)) return;
  const cu::DType dtype = state.range(0) != 0 ? cu::DType::f16 : cu::DType::f32;
  const std::int64_t batch = state.range(1);
  const auto& vae = sd15_vae(dtype);
  cu::Engine e;
  auto z = e.empty({batch, 64, 64, 4}, dtype);
  random_fill(e, z, 6);
  auto run = [&] { static_cast<void>(vae.forward(e, z)); };
  run();
  state.counters["ms"] = mean_iteration_ms(state, e, run);
  state.counters["batch"] = static_cast<double>(batch);
}
BENCHMARK(BM_VaeDecodeSd15)
    ->ArgNames({"fp16", "batch"})
    ->ArgsProduct({{0, 1}, {1, 2, 4, 8}})
    ->UseManualTime()
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond);

// A batch-8 UNet step (fp16) and the VAE decode of one 512x512 image (fp32), each on an Engine of its own: one after
// the other on one thread (overlap = 0: the decode in the iteration, as without a retire stage) or at the same time
// from two threads (overlap = 1: Options::concurrent_retire, the decode on the backend's decode stream). Wall time of
// the pair; counters step_ms and decode_ms are each alone, hidden = the share of the decode the overlap hid.
void BM_DecodeOverlapSd15(benchmark::State& state) {
  if (skipped_without_gpu(state)) return;
  const bool overlap = state.range(0) != 0;
  const std::int64_t batch = 8;
  const auto& unet = sd15_unet();
  const auto& vae = sd15_vae();
  cu::Engine main, second;
  const auto sample = cu::to_nhwc(main, std::vector<float>(static_cast<std::size_t>(batch * 4 * 64 * 64), 0.5f),
                                  {batch, 4, 64, 64}, cu::DType::f16);
  const auto timesteps =
      cu::upload(main, std::vector<float>(static_cast<std::size_t>(batch), 500.0f), {batch}, cu::DType::f32);
  const auto context = cu::upload(main, std::vector<float>(static_cast<std::size_t>(batch * 77 * 768), 0.1f),
                                  {batch, 77, 768}, cu::DType::f16);
  const auto z = cu::to_nhwc(second, std::vector<float>(4 * 64 * 64, 0.3f), {1, 4, 64, 64}, cu::DType::f32);
  auto step = [&] {
    static_cast<void>(unet.forward(main, sample, timesteps, context));
    main.synchronize();
  };
  auto decode = [&] {
    static_cast<void>(vae.forward(second, z));
    second.synchronize();
  };
  using Clock = std::chrono::steady_clock;
  auto wall_ms = [](auto&& fn) {
    const auto t0 = Clock::now();
    fn();
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  };
  step();  // warm-up: allocator pools, algorithm choices
  decode();
  double step_ms = 0, decode_ms = 0;
  for (int i = 0; i < 3; ++i) {
    step_ms += wall_ms(step) / 3;
    decode_ms += wall_ms(decode) / 3;
  }
  double total_ms = 0;
  for (auto _ : state) {
    const double ms = wall_ms([&] {
      if (!overlap) {
        step();
        decode();
        return;
      }
      std::exception_ptr error;
      std::thread retire([&] {
        try {
          decode();
        } catch (...) {
          error = std::current_exception();
        }
      });
      step();
      retire.join();
      if (error) std::rethrow_exception(error);
    });
    total_ms += ms;
    state.SetIterationTime(ms / 1e3);
  }
  const double mean_ms = total_ms / static_cast<double>(state.iterations());
  state.counters["ms"] = mean_ms;
  state.counters["step_ms"] = step_ms;
  state.counters["decode_ms"] = decode_ms;
  state.counters["hidden"] = (step_ms + decode_ms - mean_ms) / decode_ms;
}
BENCHMARK(BM_DecodeOverlapSd15)
    ->ArgName("overlap")
    ->Arg(0)
    ->Arg(1)
    ->UseManualTime()
    ->Iterations(5)
    ->Unit(benchmark::kMillisecond);

}  // namespace
