// Benchmarks of the batched sampler update (update.hpp) over B requests of 4x64x64 latents (SD-1.5 at 512x512),
// of the per-request noise generator, and a STREAM-style triad for the machine's memory bandwidth.
// Counters: items = requests updated; bytes = float32 tensor traffic (read x, model output, noise and history when
// used, write x and history).

#include <benchmark/benchmark.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "carousel/diffusion/rng.hpp"
#include "carousel/diffusion/sampler.hpp"
#include "carousel/diffusion/schedule.hpp"
#include "carousel/diffusion/update.hpp"

namespace cd = carousel::diffusion;

namespace {

constexpr std::size_t kLatentNumel = 4 * 64 * 64;

std::shared_ptr<const cd::NoiseSchedule> sd15_schedule() {
  cd::SchedulerConfig c;
  c.beta_schedule = cd::BetaSchedule::scaled_linear;
  c.beta_start = 0.00085;
  c.beta_end = 0.012;
  c.set_alpha_to_one = false;
  return std::make_shared<const cd::NoiseSchedule>(c.with_pipeline_defaults());
}

// Mode 0: DDIM eta 0 (no noise); 1: DDIM eta 1 (noise); 2: DDPM fixed_small (noise); 3: a mix of the three;
// 4: DPM-Solver++ 2M (second-order steps: reads and writes each request's x0 history); 5: Euler.
void BM_ApplyUpdate(benchmark::State& state) {
  const auto requests = static_cast<std::size_t>(state.range(0));
  const auto mode = state.range(1);
  const auto schedule = sd15_schedule();
  std::vector<cd::StepCoefficients> coeffs;
  for (std::size_t i = 0; i < requests; ++i) {
    const auto m = mode == 3 ? static_cast<std::int64_t>(i % 3) : mode;
    const cd::SamplerKind kind = m == 2   ? cd::SamplerKind::ddpm
                                 : m == 4 ? cd::SamplerKind::dpm_solver
                                 : m == 5 ? cd::SamplerKind::euler
                                          : cd::SamplerKind::ddim;
    cd::Sampler s{kind, schedule, {.eta = m == 1 ? 1.0f : 0.0f}};
    s.set_timesteps(50);
    for (std::size_t k = 0; k < 1 + i % 40; ++k) {
      s.advance();  // requests at different steps (and past DPM-Solver++'s first-order start)
    }
    coeffs.push_back(s.coefficients());
  }
  cd::TorchGenerator g{0};
  std::vector<float> samples = g.randn(requests * kLatentNumel);
  const std::vector<float> out = g.randn(requests * kLatentNumel);
  const std::vector<float> noise = g.randn(requests * kLatentNumel);
  std::vector<float> history_storage = g.randn(requests * kLatentNumel);
  std::vector<float*> history(requests);
  std::size_t noisy = 0;
  std::size_t with_history = 0;
  for (std::size_t i = 0; i < requests; ++i) {
    noisy += coeffs[i].draws_noise() ? 1 : 0;
    with_history += coeffs[i].uses_history() ? 1 : 0;
    history[i] = history_storage.data() + i * kLatentNumel;
  }
  for (auto _ : state) {
    cd::apply_update(coeffs, cd::UpdateBatch{samples, out, noise, kLatentNumel, history});
    benchmark::DoNotOptimize(samples.data());
    benchmark::ClobberMemory();
  }
  const auto iterations = static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(requests));
  const double bytes_per_iteration =
      static_cast<double>(sizeof(float) * kLatentNumel) * static_cast<double>(3 * requests + noisy + 2 * with_history);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes_per_iteration * iterations));
  state.counters["requests"] = static_cast<double>(requests);
}
BENCHMARK(BM_ApplyUpdate)
    ->ArgNames({"requests", "mode"})
    ->ArgsProduct({{1, 8, 64}, {0, 1, 2, 3, 4, 5}})
    ->Unit(benchmark::kMillisecond);

// One request's step noise: torch.randn((1, 4, 64, 64)) on its own generator.
void BM_TorchGeneratorRandn(benchmark::State& state) {
  const auto kernel = state.range(0) == 0 ? cd::RandnKernel::avx2 : cd::RandnKernel::scalar;
  cd::TorchGenerator g{42, kernel};
  std::vector<float> out(kLatentNumel);
  for (auto _ : state) {
    g.randn(out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kLatentNumel));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(kLatentNumel * sizeof(float)));
}
BENCHMARK(BM_TorchGeneratorRandn)->ArgNames({"scalar_kernel"})->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

// STREAM triad a = b + s * c: the memory bandwidth the update is bounded by. Arg: floats per array (the first
// equals the update's 64 x 4x64x64 working set, the second is far beyond any cache).
void BM_MemoryTriad(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<float> a(n), b(n, 1.0f), c(n, 2.0f);
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; ++i)
      a[i] = b[i] + 0.5f * c[i];
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(3 * n * sizeof(float)));
}
BENCHMARK(BM_MemoryTriad)->ArgNames({"floats"})->Arg(64 * kLatentNumel)->Arg(1 << 25)->Unit(benchmark::kMillisecond);

}  // namespace
