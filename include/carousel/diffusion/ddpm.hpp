#pragma once
/// \file
/// \brief DDPM (diffusers' `DDPMScheduler.step`) as per-step coefficients.

#include <cmath>
#include <cstdint>
#include <span>

#include "carousel/diffusion/schedule.hpp"
#include "carousel/diffusion/step_coefficients.hpp"

namespace carousel::diffusion {

/// The DDPM previous timestep: the next entry of `timesteps` after index `index`, or -1 after the last.
[[nodiscard]] inline std::int64_t ddpm_previous_timestep(std::span<const std::int64_t> timesteps, std::size_t index) {
  return index + 1 < timesteps.size() ? timesteps[index + 1] : -1;
}

/// Coefficients of `DDPMScheduler.step(out, t, x)` going from timestep `t` to `prev_t` (-1 after the last step),
/// with diffusers' float32 arithmetic: a = abar[t], a' = abar[prev_t] or 1, beta_t = 1 - a/a',
/// x' = (sqrt(a') beta_t / (1-a)) x0 + (sqrt(a/a') (1-a') / (1-a)) x + sigma z, the noise only when t > 0.
/// Throws `std::out_of_range` when a timestep is outside the schedule.
[[nodiscard]] inline StepCoefficients ddpm_coefficients(const NoiseSchedule& schedule, std::int64_t t,
                                                        std::int64_t prev_t) {
  const SchedulerConfig& config = schedule.config();
  const float alpha_prod_t = schedule.alpha_cumprod(t);
  const float alpha_prod_t_prev = prev_t >= 0 ? schedule.alpha_cumprod(prev_t) : 1.0f;
  const float beta_prod_t = 1.0f - alpha_prod_t;
  const float beta_prod_t_prev = 1.0f - alpha_prod_t_prev;
  const float current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
  const float current_beta_t = 1.0f - current_alpha_t;

  StepCoefficients c = detail::x0_stage(config, alpha_prod_t);
  c.x0_coeff = (std::sqrt(alpha_prod_t_prev) * current_beta_t) / beta_prod_t;
  c.sample_term = true;
  c.sample_coeff = std::sqrt(current_alpha_t) * beta_prod_t_prev / beta_prod_t;
  if (t > 0) {
    const float variance = std::fmax(beta_prod_t_prev / beta_prod_t * current_beta_t, 1e-20f);
    switch (config.variance_type) {
      case VarianceType::fixed_small:
        c.noise = NoiseScale::fixed;
        c.noise_coeff = std::sqrt(variance);
        break;
      case VarianceType::fixed_small_log:
        c.noise = NoiseScale::fixed;
        c.noise_coeff = std::exp(0.5f * std::log(variance));
        break;
      case VarianceType::fixed_large:
        c.noise = NoiseScale::fixed;
        c.noise_coeff = std::sqrt(current_beta_t);
        break;
      case VarianceType::fixed_large_log:  // rejected by SchedulerConfig::validate
        break;
      case VarianceType::learned:
        c.noise = NoiseScale::learned;
        break;
      case VarianceType::learned_range:
        c.noise = NoiseScale::learned_range;
        c.min_log = std::log(variance);
        c.max_log = std::log(current_beta_t);
        break;
    }
  }
  return c;
}

}  // namespace carousel::diffusion
