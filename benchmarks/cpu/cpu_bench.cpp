// CPU backend benchmarks: the machine's sgemm throughput (the ceiling), UNet step time against batch size on the
// tiny test configurations, the bundled model (models/shapes-32) and a Stable Diffusion 1.5-shaped UNet at 256x256
// (32x32 latents) with random weights, each in both BatchModes (batched, batch_invariant) side by side.
// GFLOP/s counts the matrix products (convolutions, linears, attention) that go through the backend's sgemm;
// normalisations and element-wise ops are not counted.
//
//   build-cpu/benchmarks/cpu/carousel-bench-cpu --benchmark_filter=Sgemm|Tiny
//   build-cpu/benchmarks/cpu/carousel-bench-cpu --benchmark_filter='Sd15|ClipTextL'
//   build-cpu/benchmarks/cpu/carousel-bench-cpu --benchmark_filter=Bundled --curve_csv=bundled.csv
// --curve_csv=PATH writes the bundled model's t(b) (median wall time of a step of b requests, b = 1..8, in the mode
// --curve_mode=batched|batch_invariant, default batched) as the CSV `batch_size,step_ms,decode_ms` that
// `carousel-bench-serving --curve PATH` reads (decode_ms is 0: the pixel-space model has no VAE).
// OpenBLAS may pick AVX2 kernels on AVX-512 CPUs it does not know; OPENBLAS_CORETYPE=SkylakeX selects its AVX-512 ones.
#include <benchmark/benchmark.h>

#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <carousel/cpu/backend.hpp>
#include <carousel/cpu/clip_text.hpp>
#include <carousel/cpu/unet.hpp>
#include <carousel/cpu/vae.hpp>
#include <carousel/nn/sd15.hpp>

namespace {

using carousel::checkpoint::RandomWeights;
using carousel::cpu::BatchMode;
using carousel::cpu::Tensor;
using carousel::cpu::UNet2DConditionModel;

// CPU seconds of the whole process (all threads). On a shared machine wall-clock throughput depends on the other
// jobs; FLOPs per CPU-second (per-core throughput) is the steadier figure for comparing the models with sgemm.
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

void set_flop_counters(benchmark::State& state, double flops, double cpu_seconds) {
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsRate);
  state.counters["GFLOP/cpu-s"] = benchmark::Counter(flops * 1e-9 / cpu_seconds);
}

void BM_Sgemm(benchmark::State& state) {
  const auto n = static_cast<blasint>(state.range(0));
  std::vector<float> a(static_cast<std::size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  const double cpu = process_cpu_seconds() - cpu0;
  set_flop_counters(state, 2.0 * n * n * n * static_cast<double>(state.iterations()), cpu);
}
BENCHMARK(BM_Sgemm)->Arg(512)->Arg(1024)->Arg(2048)->UseRealTime()->Unit(benchmark::kMillisecond);

// The tiny configurations of tests/data/models (tools/make_tiny_models.py).
carousel::checkpoint::UNetConfig tiny_config(int which) {
  carousel::checkpoint::UNetConfig c;
  c.down_block_types = {"DownBlock2D", "CrossAttnDownBlock2D"};
  c.up_block_types = {"CrossAttnUpBlock2D", "UpBlock2D"};
  c.transformer_layers_per_block = {1, 1};
  c.attention_head_dim = {8, 8};
  if (which == 0) {  // sd-tiny: (4, 8), 1 layer, 8 heads, ctx 8, groups 2
    c.block_out_channels = {4, 8};
    c.layers_per_block = {1, 1};
    c.cross_attention_dim = 8;
    c.norm_num_groups = 2;
  } else {  // sd-tiny-legacy: (32, 32), 2 layers, 8 heads, ctx 32, groups 32
    c.block_out_channels = {32, 32};
    c.layers_per_block = {2, 2};
    c.cross_attention_dim = 32;
    c.norm_num_groups = 32;
  }
  return c;
}

BatchMode mode_of(std::int64_t arg) {
  return arg == 0 ? BatchMode::batched : BatchMode::batch_invariant;
}

const char* mode_name(BatchMode mode) {
  return mode == BatchMode::batched ? "batched" : "batch_invariant";
}

void run_unet(benchmark::State& state, const UNet2DConditionModel& unet, std::int64_t batch, std::int64_t size,
              BatchMode mode) {
  const auto& config = unet.config();
  Tensor sample({batch, config.in_channels, size, size}), context({batch, 77, config.cross_attention_dim});
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  for (auto& v : sample.values())
    v = normal(gen);
  for (auto& v : context.values())
    v = normal(gen);
  std::vector<float> timesteps(static_cast<std::size_t>(batch));
  for (std::int64_t i = 0; i < batch; ++i)
    timesteps[static_cast<std::size_t>(i)] = static_cast<float>(999 - 97 * i);
  std::uint64_t flops = 0;
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    const auto before = carousel::cpu::detail::gemm_flops().load();
    Tensor out = unet.forward(sample, timesteps, context, mode);
    benchmark::DoNotOptimize(out.data());
    flops += carousel::cpu::detail::gemm_flops().load() - before;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * batch);
  set_flop_counters(state, static_cast<double>(flops), process_cpu_seconds() - cpu0);
  state.counters["GFLOP/step"] =
      benchmark::Counter(static_cast<double>(flops) * 1e-9 / static_cast<double>(state.iterations()));
}

void BM_UNetTiny(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  RandomWeights weights(7);
  static const UNet2DConditionModel models[] = {UNet2DConditionModel(tiny_config(0), weights),
                                                UNet2DConditionModel(tiny_config(1), weights)};
  const BatchMode mode = mode_of(state.range(2));
  state.SetLabel(std::string(which == 0 ? "sd-tiny 16x16 " : "sd-tiny-legacy 8x8 ") + mode_name(mode));
  run_unet(state, models[which], state.range(1), which == 0 ? 16 : 8, mode);
}
BENCHMARK(BM_UNetTiny)
    ->ArgNames({"model", "batch", "mode"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (std::int64_t model : {0, 1})
        for (std::int64_t batch : {1, 2, 4, 8})
          for (std::int64_t mode : {0, 1})  // the two modes back to back: their ratio is the comparison
            b->Args({model, batch, mode});
    })
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The bundled model's UNet (models/shapes-32: pixel space, 3x32x32) as the Pipeline calls it for `requests` requests
// with classifier-free guidance: a batch of 2 x requests rows, 77 context tokens each. Mode 0 batched, 1
// batch_invariant. Its wall time per iteration is t(b), the curve --curve_csv writes.
void BM_BundledModel(benchmark::State& state) {
  static const auto unet = std::make_unique<UNet2DConditionModel>(
      carousel::cpu::load_unet(std::string(CAROUSEL_BUNDLED_MODEL_DIR) + "/unet"));
  const BatchMode mode = mode_of(state.range(1));
  state.SetLabel(std::string("shapes-32 UNet, guidance doubles the batch, ") + mode_name(mode));
  run_unet(state, *unet, 2 * state.range(0), 32, mode);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));  // requests (images)
}
BENCHMARK(BM_BundledModel)
    ->ArgNames({"requests", "mode"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (std::int64_t requests = 1; requests <= 8; ++requests)
        for (std::int64_t mode : {0, 1})
          b->Args({requests, mode});
    })
    ->MinTime(0.5)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_UNetSd15_256(benchmark::State& state) {
  static const auto unet = [] {
    RandomWeights weights(15);
    return std::make_unique<UNet2DConditionModel>(carousel::nn::sd15_unet_config(), weights);
  }();
  const BatchMode mode = mode_of(state.range(1));
  state.SetLabel(std::string("SD-1.5 UNet, 32x32 latents, random weights, ") + mode_name(mode));
  run_unet(state, *unet, state.range(0), 32, mode);
}
BENCHMARK(BM_UNetSd15_256)
    ->ArgNames({"batch", "mode"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (std::int64_t batch : {1, 2, 8})
        for (std::int64_t mode : {0, 1})
          b->Args({batch, mode});
    })
    ->Iterations(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The retire cost: SD-1.5's VAE decoder from 32x32 latents to a 256x256 image.
void BM_VaeDecodeSd15_256(benchmark::State& state) {
  static const auto vae = [] {
    RandomWeights weights(16);
    return std::make_unique<carousel::cpu::VaeDecoder>(carousel::nn::sd15_vae_config(), weights);
  }();
  Tensor latents({state.range(0), 4, 32, 32});
  std::mt19937 gen(1);
  std::normal_distribution<float> normal(0.0f, 0.18215f);
  for (auto& v : latents.values())
    v = normal(gen);
  std::uint64_t flops = 0;
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    const auto before = carousel::cpu::detail::gemm_flops().load();
    Tensor images = carousel::cpu::decode_latents(*vae, latents);
    benchmark::DoNotOptimize(images.data());
    flops += carousel::cpu::detail::gemm_flops().load() - before;
  }
  state.SetLabel("SD-1.5 VAE decoder, 32x32 -> 256x256, random weights");
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
  set_flop_counters(state, static_cast<double>(flops), process_cpu_seconds() - cpu0);
}
BENCHMARK(BM_VaeDecodeSd15_256)->ArgName("batch")->Arg(1)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// The admit cost: CLIP ViT-L/14's text tower on 77-token rows.
void BM_ClipTextL(benchmark::State& state) {
  static const auto clip = [] {
    RandomWeights weights(17);
    return std::make_unique<carousel::cpu::ClipTextModel>(carousel::nn::sd15_text_config(), weights);
  }();
  std::vector<std::vector<std::int32_t>> ids(static_cast<std::size_t>(state.range(0)), std::vector<std::int32_t>(77));
  for (auto& row : ids)
    for (std::size_t i = 0; i < row.size(); ++i)
      row[i] = static_cast<std::int32_t>((i * 7919) % 49408);
  std::uint64_t flops = 0;
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    const auto before = carousel::cpu::detail::gemm_flops().load();
    Tensor out = clip->forward(ids, 0, BatchMode::batch_invariant);
    benchmark::DoNotOptimize(out.data());
    flops += carousel::cpu::detail::gemm_flops().load() - before;
  }
  state.SetLabel("CLIP ViT-L/14 text tower, 77 tokens, random weights");
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
  set_flop_counters(state, static_cast<double>(flops), process_cpu_seconds() - cpu0);
}
BENCHMARK(BM_ClipTextL)->ArgName("batch")->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

// Passes every run to the console and keeps the wall time per iteration of BM_BundledModel's runs in one mode.
class CurveCollector final : public benchmark::ConsoleReporter {
 public:
  explicit CurveCollector(std::string mode_arg) : mode_arg_(std::move(mode_arg)) {}

  void ReportRuns(const std::vector<Run>& reports) override {
    ConsoleReporter::ReportRuns(reports);
    for (const Run& run : reports) {
      if (run.run_type != Run::RT_Iteration || run.error_occurred || run.run_name.function_name != "BM_BundledModel")
        continue;
      // args is "requests:R/mode:M"
      const std::string& args = run.run_name.args;
      const auto slash = args.find('/');
      if (slash == std::string::npos || args.substr(slash + 1) != mode_arg_) continue;
      const auto requests = std::stoul(args.substr(args.find(':') + 1, slash));
      const double ms = run.GetAdjustedRealTime() * benchmark::GetTimeUnitMultiplier(benchmark::kMillisecond) /
                        benchmark::GetTimeUnitMultiplier(run.time_unit);
      times_[requests].push_back(ms);
    }
  }

  // batch_size,step_ms,decode_ms with the median of each batch size's runs. Returns false when nothing was measured.
  bool write(const std::string& path) const {
    if (times_.empty()) return false;
    std::ofstream out(path);
    out << "batch_size,step_ms,decode_ms\n";
    for (auto [requests, ms] : times_) {
      std::sort(ms.begin(), ms.end());
      out << requests << ',' << ms[ms.size() / 2] << ",0\n";
    }
    return static_cast<bool>(out);
  }

 private:
  std::string mode_arg_;
  std::map<unsigned long, std::vector<double>> times_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string curve_csv, curve_mode = "batched";
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--curve_csv=")) {
      curve_csv = arg.substr(12);
    } else if (arg.starts_with("--curve_mode=")) {
      curve_mode = arg.substr(13);
      if (curve_mode != "batched" && curve_mode != "batch_invariant") {
        std::fprintf(stderr, "--curve_mode must be batched or batch_invariant, not '%s'\n", curve_mode.c_str());
        return 2;
      }
    } else {
      rest.push_back(argv[i]);
    }
  }
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 2;
  CurveCollector reporter(curve_mode == "batched" ? "mode:0" : "mode:1");
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  if (!curve_csv.empty()) {
    if (!reporter.write(curve_csv)) {
      std::fprintf(stderr,
                   "--curve_csv: no BM_BundledModel run measured (check --benchmark_filter) or cannot write %s\n",
                   curve_csv.c_str());
      return 1;
    }
    std::printf("wrote %s (%s)\n", curve_csv.c_str(), curve_mode.c_str());
  }
  return 0;
}
