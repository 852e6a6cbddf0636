// The batched sampler update kernel and the guidance kernels against the host implementations they mirror
// (diffusion::apply_update, diffusion::combine_guidance). The kernel uses explicitly rounded float32 operations in
// the CPU's order, so results must agree exactly, except where the device evaluates exp() (learned_range variance)
// and the guidance rescale's standard deviations (double sums in another order): there within 1e-6 relative.

#include "compare.cuh"
#include "gpu_guard.cuh"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/sampler.cuh>
#include <carousel/diffusion/ddim.hpp>
#include <carousel/diffusion/ddpm.hpp>
#include <carousel/diffusion/guidance.hpp>
#include <carousel/diffusion/schedule.hpp>
#include <carousel/diffusion/scheduler_config.hpp>
#include <carousel/diffusion/step_coefficients.hpp>
#include <carousel/diffusion/update.hpp>

namespace cu = carousel::cuda;
namespace dm = carousel::diffusion;

namespace {

constexpr std::size_t n = 4 * 9 * 7;

dm::SchedulerConfig config_with(dm::PredictionType p, bool clip, bool threshold, dm::VarianceType v) {
  dm::SchedulerConfig c;
  c.beta_start = 0.00085;
  c.beta_end = 0.012;
  c.beta_schedule = dm::BetaSchedule::scaled_linear;
  c.prediction_type = p;
  c.clip_sample = clip;
  c.thresholding = threshold;
  c.variance_type = v;
  return c;
}

std::vector<float> device_update(cu::Engine& e, std::span<const dm::StepCoefficients> coeffs,
                                 const std::vector<float>& x, const std::vector<float>& out, std::size_t stride,
                                 const std::vector<float>& noise, std::vector<std::vector<float>>& history) {
  const std::size_t count = coeffs.size();
  auto dx = cu::upload(e, x, {static_cast<std::int64_t>(x.size())}, cu::DType::f32);
  const auto dout = cu::upload(e, out, {static_cast<std::int64_t>(out.size())}, cu::DType::f32);
  const auto dnoise = cu::upload(e, noise, {static_cast<std::int64_t>(noise.size())}, cu::DType::f32);
  std::vector<cu::DeviceTensor> dhist;
  std::vector<float*> hist_ptrs(count, nullptr);
  for (std::size_t i = 0; i < count; ++i) {
    dhist.push_back(cu::upload(e, history[i], {static_cast<std::int64_t>(n)}, cu::DType::f32));
    hist_ptrs[i] = dhist.back().as<float>();
  }
  cu::apply_update(e, coeffs,
                   cu::DeviceUpdateBatch{dx.as<float>(), dout.as<float>(), stride, dnoise.as<float>(), hist_ptrs, n});
  for (std::size_t i = 0; i < count; ++i) {
    const auto h = cu::to_host(e, dhist[i]);
    history[i].assign(h.values().begin(), h.values().end());
  }
  const auto r = cu::to_host(e, dx);
  return {r.values().begin(), r.values().end()};
}

void check_equal_or_close(const std::vector<float>& actual, const std::vector<float>& expected, bool exact) {
  REQUIRE(actual.size() == expected.size());
  if (exact) {
    std::size_t mismatches = 0;
    for (std::size_t k = 0; k < actual.size(); ++k)
      mismatches += actual[k] == expected[k] || (std::isnan(actual[k]) && std::isnan(expected[k])) ? 0 : 1;
    CHECK(mismatches == 0);
  } else {
    carousel::cuda::test::check_close(actual, expected, 1e-6);
  }
}

}  // namespace

TEST_CASE("Cuda.Sampler.MixedBatchMatchesHost") {
  cu::Engine e;
  std::vector<dm::StepCoefficients> coeffs;
  bool exact = true;
  SUBCASE("DdimDdpmFixed") {
    for (auto p : {dm::PredictionType::epsilon, dm::PredictionType::sample, dm::PredictionType::v_prediction}) {
      const dm::NoiseSchedule s(config_with(p, false, false, dm::VarianceType::fixed_small));
      coeffs.push_back(dm::ddim_coefficients(s, 981, 961, {.eta = 0.0f}));
      coeffs.push_back(dm::ddim_coefficients(s, 501, 481, {.eta = 0.7f}));
      coeffs.push_back(dm::ddpm_coefficients(s, 500, 480));
      coeffs.push_back(dm::ddpm_coefficients(s, 1, -1));
    }
  }
  SUBCASE("ClipAndClippedOutput") {
    const dm::NoiseSchedule s(config_with(dm::PredictionType::epsilon, true, false, dm::VarianceType::fixed_large));
    coeffs.push_back(dm::ddim_coefficients(s, 801, 781, {.eta = 0.3f, .use_clipped_model_output = true}));
    coeffs.push_back(dm::ddpm_coefficients(s, 700, 600));
  }
  SUBCASE("Threshold") {
    const dm::NoiseSchedule s(config_with(dm::PredictionType::epsilon, false, true, dm::VarianceType::fixed_small));
    coeffs.push_back(dm::ddim_coefficients(s, 901, 881, {.eta = 0.0f}));
    coeffs.push_back(dm::ddpm_coefficients(s, 300, 280));
  }
  SUBCASE("LearnedVariance") {
    for (auto v : {dm::VarianceType::learned, dm::VarianceType::learned_range}) {
      const dm::NoiseSchedule s(config_with(dm::PredictionType::epsilon, false, false, v));
      coeffs.push_back(dm::ddpm_coefficients(s, 400, 380));
    }
    exact = false;
  }
  SUBCASE("EulerAndDpm") {
    dm::StepCoefficients euler;
    euler.form = dm::UpdateForm::euler;
    euler.sigma = 3.5f;
    euler.dt = -0.4f;
    coeffs.push_back(euler);
    euler.prediction = dm::PredictionType::v_prediction;
    euler.v_out_coeff = -3.5f / std::sqrt(3.5f * 3.5f + 1.0f);
    euler.v_sample_divisor = 3.5f * 3.5f + 1.0f;
    coeffs.push_back(euler);
    dm::StepCoefficients dpm;
    dpm.form = dm::UpdateForm::dpm_solver;
    dpm.sqrt_alpha_prod = 0.8f;
    dpm.sqrt_beta_prod = 0.6f;
    dpm.sample_coeff = 0.9f;
    dpm.x0_coeff = -0.2f;
    dpm.history_coeff = 1.7f;
    dpm.d1_coeff = 0.05f;
    for (auto order : {dm::DpmOrder::first, dm::DpmOrder::second_midpoint, dm::DpmOrder::second_heun}) {
      dpm.dpm_order = order;
      coeffs.push_back(dpm);
    }
  }
  const std::size_t count = coeffs.size();
  bool variance = false;
  for (const auto& c : coeffs)
    variance = variance || c.reads_variance();
  const std::size_t stride = variance ? 2 * n : n;
  const auto x = carousel::cuda::test::random_values(count * n, 1);
  auto out = carousel::cuda::test::random_values(count * stride, 2);
  if (variance)
    for (std::size_t i = 0; i < count; ++i)
      for (std::size_t k = 0; k < n; ++k)
        out[i * stride + n + k] = std::fabs(out[i * stride + n + k]) * 0.01f;  // a plausible predicted variance
  const auto noise = carousel::cuda::test::random_values(count * n, 3);
  std::vector<std::vector<float>> host_history(count), device_history(count);
  std::vector<float*> history_ptrs(count);
  for (std::size_t i = 0; i < count; ++i) {
    host_history[i] = carousel::cuda::test::random_values(n, 10 + static_cast<std::uint32_t>(i));
    device_history[i] = host_history[i];
    history_ptrs[i] = host_history[i].data();
  }
  auto expected = x;
  dm::apply_update(coeffs, dm::UpdateBatch{expected, out, noise, n, history_ptrs});
  const auto actual = device_update(e, coeffs, x, out, stride, noise, device_history);
  check_equal_or_close(actual, expected, exact);
  for (std::size_t i = 0; i < count; ++i)
    if (coeffs[i].uses_history()) check_equal_or_close(device_history[i], host_history[i], exact);
}

TEST_CASE("Cuda.Sampler.NanSurvivesClip") {
  // A NaN from the model (an overflowing fp16 UNet) stays NaN through clip_sample, as with std::min/std::max and
  // torch.clamp on the host: the clamp must not turn it into a bound and hide it.
  cu::Engine e;
  const dm::NoiseSchedule s(config_with(dm::PredictionType::epsilon, true, false, dm::VarianceType::fixed_small));
  const std::vector<dm::StepCoefficients> coeffs = {dm::ddim_coefficients(s, 801, 781, {.eta = 0.0f}),
                                                    dm::ddpm_coefficients(s, 700, 600)};
  const auto x = carousel::cuda::test::random_values(2 * n, 4);
  auto out = carousel::cuda::test::random_values(2 * n, 5);
  out[5] = out[n + 7] = std::numeric_limits<float>::quiet_NaN();
  const auto noise = carousel::cuda::test::random_values(2 * n, 6);
  std::vector<std::vector<float>> host_history(2, std::vector<float>(n)), device_history = host_history;
  std::vector<float*> history_ptrs = {host_history[0].data(), host_history[1].data()};
  auto expected = x;
  dm::apply_update(coeffs, dm::UpdateBatch{expected, out, noise, n, history_ptrs});
  REQUIRE(std::isnan(expected[5]));
  REQUIRE(std::isnan(expected[n + 7]));
  const auto actual = device_update(e, coeffs, x, out, n, noise, device_history);
  check_equal_or_close(actual, expected, true);
}

TEST_CASE("Cuda.Guidance.PerSampleScales") {
  cu::Engine e;
  // Rows as the Pipeline lays them out: the conditional rows of all jobs, then the unconditional rows of the guided.
  const std::vector<cu::GuidanceRow> rows = {
      {0, 4, {7.5f, 0.0f}}, {1, -1, {1.0f, 0.0f}}, {2, 5, {3.0f, 0.7f}}, {3, 6, {1.0f, 0.5f}}};
  const auto model_output = carousel::cuda::test::random_values(7 * n, 4);
  std::vector<float> expected(rows.size() * n);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const std::span<const float> all(model_output);
    const auto cond = all.subspan(static_cast<std::size_t>(rows[i].cond) * n, n);
    const auto uncond = rows[i].uncond >= 0 ? all.subspan(static_cast<std::size_t>(rows[i].uncond) * n, n) : cond;
    dm::combine_guidance(uncond, cond, rows[i].uncond >= 0 ? rows[i].params : dm::GuidanceParams{1.0f, 0.0f},
                         std::span<float>(expected).subspan(i * n, n));
  }
  const auto d_out = cu::upload(e, model_output, {7 * static_cast<std::int64_t>(n)}, cu::DType::f32);
  auto d_guided = e.empty({static_cast<std::int64_t>(rows.size() * n)}, cu::DType::f32);
  cu::combine_guidance(e, d_out.as<float>(), rows, n, d_guided.as<float>());
  const auto actual = cu::to_host(e, d_guided);
  // Rows without rescale are exact; the rescaled row goes through double standard deviations summed in another order.
  for (std::size_t i = 0; i < rows.size(); ++i) {
    CAPTURE(i);
    const std::vector<float> a(actual.values().begin() + static_cast<std::ptrdiff_t>(i * n),
                               actual.values().begin() + static_cast<std::ptrdiff_t>((i + 1) * n));
    const std::vector<float> b(expected.begin() + static_cast<std::ptrdiff_t>(i * n),
                               expected.begin() + static_cast<std::ptrdiff_t>((i + 1) * n));
    check_equal_or_close(a, b, i != 2);
  }
}
