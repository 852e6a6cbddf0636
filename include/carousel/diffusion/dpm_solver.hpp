#pragma once
/// \file
/// \brief DPM-Solver++ (diffusers' `DPMSolverMultistepScheduler` with algorithm_type "dpmsolver++", orders 1 and 2:
/// "DPM++ 2M", optionally with Karras sigmas): its schedule and per-step coefficients.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "carousel/diffusion/euler.hpp"
#include "carousel/diffusion/schedule.hpp"
#include "carousel/diffusion/step_coefficients.hpp"
#include "carousel/diffusion/timesteps.hpp"

namespace carousel::diffusion {

/// DPM-Solver++'s inference schedule: N integer timesteps and N+1 float32 sigmas.
struct DpmSchedule {
  std::vector<std::int64_t> timesteps;  ///< `scheduler.timesteps`.
  std::vector<float> sigmas;            ///< `scheduler.sigmas`.
};

/// DPMSolverMultistepScheduler's `set_timesteps(N)` (lambda_min_clipped = -inf): timesteps by spacing (default
/// "linspace", which spreads N+1 points and drops the last), sigmas = sqrt((1 - abar) / abar) interpolated at them, or
/// Karras-spaced (rho = 7) over the whole training range with the timesteps mapped back and rounded (truncated for
/// squaredcos_cap_v2), then the final sigma. Throws `std::invalid_argument` naming `num_inference_steps` when it is 0
/// or exceeds `num_train_timesteps`.
[[nodiscard]] inline DpmSchedule make_dpm_schedule(const NoiseSchedule& schedule, std::int64_t num_inference_steps) {
  const SchedulerConfig& config = schedule.config();
  const TimestepSpacing spacing = config.spacing_or(TimestepSpacing::linspace);
  const std::int64_t t_max = config.num_train_timesteps;
  const std::int64_t n = num_inference_steps;
  static_cast<void>(make_timesteps(config, n, TimestepSpacing::leading));  // validates the step count
  DpmSchedule out;
  if (spacing == TimestepSpacing::linspace) {
    const auto stop = static_cast<double>(t_max - 1);
    const double step = stop / static_cast<double>(n);
    for (std::int64_t i = n; i >= 1; --i)
      out.timesteps.push_back(static_cast<std::int64_t>(std::nearbyint(i == n ? stop : static_cast<double>(i) * step)));
  } else if (spacing == TimestepSpacing::leading) {
    const std::int64_t ratio = t_max / (n + 1);
    for (std::int64_t i = n; i >= 1; --i)
      out.timesteps.push_back(i * ratio + config.steps_offset);
  } else {
    out.timesteps = make_timesteps(config, n, TimestepSpacing::trailing);
  }

  std::vector<float> full(schedule.alphas_cumprod().size());
  std::vector<float> log_sigmas(full.size());
  for (std::size_t i = 0; i < full.size(); ++i) {
    const float a = schedule.alphas_cumprod()[i];
    full[i] = std::sqrt((1.0f - a) / a);
    log_sigmas[i] = std::log(full[i]);
  }
  if (config.use_karras_sigmas) {
    const double rho = 7.0;
    const double min_inv_rho = std::pow(static_cast<double>(full.front()), 1.0 / rho);
    const double max_inv_rho = std::pow(static_cast<double>(full.back()), 1.0 / rho);
    const auto count = static_cast<std::size_t>(n);
    for (std::size_t i = 0; i < count; ++i) {
      const double ramp =
          count > 1 ? (i + 1 == count ? 1.0 : static_cast<double>(i) * (1.0 / static_cast<double>(count - 1))) : 0.0;
      const double sigma = std::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho);
      const double t = detail::sigma_to_t(sigma, log_sigmas);
      out.timesteps[i] = static_cast<std::int64_t>(
          config.beta_schedule == BetaSchedule::squaredcos_cap_v2 && !config.trained_betas ? t : std::nearbyint(t));
      out.sigmas.push_back(static_cast<float>(sigma));
    }
  } else {
    for (std::int64_t t : out.timesteps)
      out.sigmas.push_back(static_cast<float>(detail::interp_unit_grid(static_cast<double>(t), full)));
  }
  out.sigmas.push_back(config.final_sigmas_type == FinalSigmas::zero ? 0.0f : full.front());
  return out;
}

namespace detail {

// DPMSolverMultistepScheduler._sigma_to_alpha_sigma_t and lambda = log(alpha) - log(sigma), in float32.
struct DpmPoint {
  float alpha;
  float sigma;
  float lambda;
};

inline DpmPoint dpm_point(float sigma) {
  const float alpha = 1.0f / std::sqrt(sigma * sigma + 1.0f);
  const float s = sigma * alpha;
  return {alpha, s, std::log(alpha) - std::log(s)};
}

}  // namespace detail

/// Coefficients of `DPMSolverMultistepScheduler.step` at step `index` of a run with sigmas `sigmas` (N+1 values),
/// `previous_steps` steps already taken (diffusers' `lower_order_nums`, capped at `solver_order`), in diffusers'
/// float32 arithmetic. First order at the first step, at the last step when `euler_at_final`, `final_sigmas_type`
/// "zero" or (`lower_order_final` and N < 15), and when `solver_order` is 1; second order (midpoint or heun)
/// otherwise. Precondition: index + 1 < sigmas.size().
[[nodiscard]] inline StepCoefficients dpm_solver_coefficients(const SchedulerConfig& config,
                                                              std::span<const float> sigmas, std::size_t index,
                                                              std::size_t previous_steps) {
  const std::size_t steps = sigmas.size() - 1;
  const bool last = index + 1 == steps;
  const bool lower_order_final = last && (config.euler_at_final || (config.lower_order_final && steps < 15) ||
                                          config.final_sigmas_type == FinalSigmas::zero);
  const bool first_order = config.solver_order == 1 || previous_steps < 1 || lower_order_final;

  const detail::DpmPoint t = detail::dpm_point(sigmas[index + 1]);
  const detail::DpmPoint s0 = detail::dpm_point(sigmas[index]);
  StepCoefficients c;
  c.form = UpdateForm::dpm_solver;
  c.prediction = config.prediction_type;
  c.sqrt_alpha_prod = s0.alpha;
  c.sqrt_beta_prod = s0.sigma;
  if (config.thresholding) {
    c.clamp = X0Clamp::threshold;
    c.threshold_ratio = static_cast<float>(config.dynamic_thresholding_ratio);
    c.sample_max_value = static_cast<float>(config.sample_max_value);
  }
  const float h = t.lambda - s0.lambda;
  c.sample_coeff = t.sigma / s0.sigma;
  c.x0_coeff = t.alpha * (std::exp(-h) - 1.0f);
  if (first_order) return c;
  const detail::DpmPoint s1 = detail::dpm_point(sigmas[index - 1]);
  const float r0 = (s0.lambda - s1.lambda) / h;
  c.history_coeff = 1.0f / r0;
  if (config.solver_type == SolverType::midpoint) {
    c.dpm_order = DpmOrder::second_midpoint;
    c.d1_coeff = 0.5f * c.x0_coeff;
  } else {
    c.dpm_order = DpmOrder::second_heun;
    c.d1_coeff = t.alpha * ((std::exp(-h) - 1.0f) / h + 1.0f);
  }
  return c;
}

}  // namespace carousel::diffusion
