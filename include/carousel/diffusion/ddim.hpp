#pragma once
/// \file
/// \brief DDIM (diffusers' `DDIMScheduler.step`) as per-step coefficients.

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "carousel/diffusion/schedule.hpp"
#include "carousel/diffusion/step_coefficients.hpp"

namespace carousel::diffusion {

/// DDIM's previous timestep, `t - T // N` for every spacing (diffusers does not read the timestep list).
[[nodiscard]] inline std::int64_t ddim_previous_timestep(std::int64_t t, std::int64_t num_train_timesteps,
                                                         std::int64_t num_inference_steps) {
  return t - num_train_timesteps / num_inference_steps;
}

/// Per-request DDIM options (the arguments of `DDIMScheduler.step`).
struct DdimOptions {
  float eta = 0.0f;                       ///< 0: deterministic DDIM; 1: DDPM-like noise. Must be >= 0.
  bool use_clipped_model_output = false;  ///< Recompute eps from the clamped x0.
};

/// Coefficients of `DDIMScheduler.step(out, t, x, eta, use_clipped_model_output)` going from `t` to `prev_t`
/// (`ddim_previous_timestep`), in diffusers' float32 arithmetic: a = abar[t], a' = abar[prev_t] or
/// `final_alpha_cumprod()`, sigma = eta sqrt((1-a')/(1-a) (1 - a/a')), x' = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps
/// + sigma z, the noise only when eta > 0 (also on the last step). `eta > 1` can make the square root NaN, as in
/// diffusers. Throws `std::invalid_argument` for eta < 0 and `std::out_of_range` for a timestep outside the schedule.
[[nodiscard]] inline StepCoefficients ddim_coefficients(const NoiseSchedule& schedule, std::int64_t t,
                                                        std::int64_t prev_t, const DdimOptions& options) {
  if (!(options.eta >= 0.0f))
    throw std::invalid_argument("DDIM: `eta` must be >= 0, got " + std::to_string(options.eta));
  const SchedulerConfig& config = schedule.config();
  const float alpha_prod_t = schedule.alpha_cumprod(t);
  const float alpha_prod_t_prev = prev_t >= 0 ? schedule.alpha_cumprod(prev_t) : schedule.final_alpha_cumprod();
  const float beta_prod_t = 1.0f - alpha_prod_t;
  const float beta_prod_t_prev = 1.0f - alpha_prod_t_prev;

  StepCoefficients c = detail::x0_stage(config, alpha_prod_t);
  switch (config.prediction_type) {
    case PredictionType::epsilon:
      c.epsilon = EpsilonSource::model_output;
      break;
    case PredictionType::sample:
      c.epsilon = EpsilonSource::raw_x0;
      break;
    case PredictionType::v_prediction:
      c.epsilon = EpsilonSource::velocity;
      break;
  }
  if (options.use_clipped_model_output) c.epsilon = EpsilonSource::clamped_x0;

  const float variance = (beta_prod_t_prev / beta_prod_t) * (1.0f - alpha_prod_t / alpha_prod_t_prev);
  const float std_dev_t = options.eta * std::sqrt(variance);
  c.x0_coeff = std::sqrt(alpha_prod_t_prev);
  c.eps_coeff = std::sqrt(1.0f - alpha_prod_t_prev - std_dev_t * std_dev_t);
  if (options.eta > 0.0f) {
    c.noise = NoiseScale::fixed;
    c.noise_coeff = std_dev_t;
  }
  return c;
}

}  // namespace carousel::diffusion
