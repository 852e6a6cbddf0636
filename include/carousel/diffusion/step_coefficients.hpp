#pragma once
/// \file
/// \brief `StepCoefficients`: one request's sampler update for one step, as numbers a batched elementwise kernel
/// applies (see update.hpp).

#include <cmath>
#include <cstdint>

#include "carousel/diffusion/scheduler_config.hpp"

namespace carousel::diffusion {

/// What is done to the predicted x0 before it is used.
enum class X0Clamp : std::uint8_t {
  none,       ///< x0 as predicted.
  clip,       ///< clamp(x0, -clip_range, clip_range).
  threshold,  ///< dynamic thresholding: s = clamp(quantile(|x0|, ratio), 1, max); x0 = clamp(x0, -s, s) / s.
};

/// Where the epsilon term of the update comes from (DDIM); `none` when the update has no epsilon term (DDPM).
enum class EpsilonSource : std::uint8_t {
  none,          ///< No epsilon term.
  model_output,  ///< eps = out (epsilon prediction).
  raw_x0,        ///< eps = (x - sqrt_alpha_prod * x0) / sqrt_beta_prod with x0 before clamping.
  clamped_x0,    ///< the same with the clamped x0 (DDIM's use_clipped_model_output).
  velocity,      ///< eps = sqrt_alpha_prod * out + sqrt_beta_prod * x (v prediction).
};

/// How the noise term's scale is formed.
enum class NoiseScale : std::uint8_t {
  none,           ///< No noise this step (no draw either).
  fixed,          ///< noise_coeff * z.
  learned,        ///< sqrt(v) * z with v the model's predicted variance (DDPM "learned").
  learned_range,  ///< exp(0.5 * (f * max_log + (1 - f) * min_log)) * z, f = (v + 1) / 2 (DDPM "learned_range").
};

/// The two shapes of update.
enum class UpdateForm : std::uint8_t {
  mix,         ///< DDPM / DDIM: a combination of x0, x, eps and noise.
  euler,       ///< Euler (discrete): x + ((x - x0) / sigma) * dt.
  dpm_solver,  ///< DPM-Solver++ (multistep, first or second order): reads and writes the previous x0.
};

/// DPM-Solver++'s order for one step.
enum class DpmOrder : std::uint8_t {
  first,            ///< x' = sample_coeff x - x0_coeff x0.
  second_midpoint,  ///< ... - d1_coeff * (history_coeff * (x0 - x0_prev)).
  second_heun,      ///< ... + d1_coeff * (history_coeff * (x0 - x0_prev)).
};

/// The per-sample update of one sampler step, for sample x, model output `out` and standard normal noise z.
/// `UpdateForm::mix` (DDPM, DDIM):
///
///     x0   = (x - sqrt_beta_prod * out) / sqrt_alpha_prod      (epsilon)
///          | out                                               (sample)
///          | sqrt_alpha_prod * x - sqrt_beta_prod * out        (v_prediction)
///     x0   = clamp per `clamp`
///     x'   = x0_coeff * x0 [+ sample_coeff * x] [+ eps_coeff * eps] [+ noise term]
///
/// `UpdateForm::euler` (no clamping, no noise):
///
///     x0   = x - sigma * out | out | out * v_out_coeff + x / v_sample_divisor     (epsilon | sample | v)
///     x'   = x + ((x - x0) / sigma) * dt
///
/// `UpdateForm::dpm_solver` (x0 as for `mix`, with sqrt_alpha_prod = alpha_s0 and sqrt_beta_prod = sigma_s0, clamped
/// per `clamp`; `x0_prev` is the request's history, which the update then overwrites with x0):
///
///     x'   = sample_coeff * x - x0_coeff * x0
///            [-|+ d1_coeff * (history_coeff * (x0 - x0_prev))]                      (second order)
///
/// evaluated in float32 in exactly diffusers' operation order (bracketed terms only when enabled), so that the
/// result reproduces `DDPMScheduler.step` / `DDIMScheduler.step` / `EulerDiscreteScheduler.step`. The coefficients
/// themselves are computed by `ddpm_coefficients` / `ddim_coefficients` / `euler_coefficients` with torch's float32
/// scalar arithmetic.
///
/// A plain aggregate: cheap to copy into a device buffer for a GPU kernel.
struct StepCoefficients {
  UpdateForm form = UpdateForm::mix;                    ///< Which formula applies.
  DpmOrder dpm_order = DpmOrder::first;                 ///< DPM-Solver++: the order of this step.
  PredictionType prediction = PredictionType::epsilon;  ///< How x0 is formed.
  X0Clamp clamp = X0Clamp::none;                        ///< Clamping of x0.
  EpsilonSource epsilon = EpsilonSource::none;          ///< Source of the epsilon term.
  NoiseScale noise = NoiseScale::none;                  ///< Form of the noise term.
  bool sample_term = false;                             ///< Whether `sample_coeff * x` is added.
  float sqrt_alpha_prod = 1.0f;                         ///< sqrt(abar_t).
  float sqrt_beta_prod = 0.0f;                          ///< sqrt(1 - abar_t).
  float clip_range = 1.0f;                              ///< For `X0Clamp::clip`.
  float threshold_ratio = 0.995f;                       ///< For `X0Clamp::threshold`: the quantile of |x0|.
  float sample_max_value = 1.0f;                        ///< For `X0Clamp::threshold`: upper bound of s.
  float x0_coeff = 0.0f;                                ///< Coefficient of x0.
  float sample_coeff = 0.0f;                            ///< Coefficient of x (when `sample_term`).
  float eps_coeff = 0.0f;                               ///< Coefficient of eps (when `epsilon != none`).
  float noise_coeff = 0.0f;                             ///< Coefficient of z (`NoiseScale::fixed`).
  float min_log = 0.0f;                                 ///< For `NoiseScale::learned_range`.
  float max_log = 0.0f;                                 ///< For `NoiseScale::learned_range`.
  float sigma = 1.0f;                                   ///< Euler: the current sigma.
  float dt = 0.0f;                                      ///< Euler: next sigma minus the current one.
  float v_out_coeff = 0.0f;                             ///< Euler v: -sigma / sqrt(sigma^2 + 1).
  float v_sample_divisor = 1.0f;                        ///< Euler v: sigma^2 + 1.
  float history_coeff = 0.0f;                           ///< DPM-Solver++: 1 / r0.
  float d1_coeff = 0.0f;                                ///< DPM-Solver++: the D1 coefficient.

  /// Whether this step consumes standard normal noise (and so draws from the request's generator).
  [[nodiscard]] bool draws_noise() const noexcept { return noise != NoiseScale::none; }
  /// Whether this step uses the request's x0 history (DPM-Solver++; written by every DPM-Solver++ step, read by
  /// second-order ones).
  [[nodiscard]] bool uses_history() const noexcept { return form == UpdateForm::dpm_solver; }
  /// Whether this step reads a predicted variance after the first `numel` values of the model output.
  [[nodiscard]] bool reads_variance() const noexcept {
    return noise == NoiseScale::learned || noise == NoiseScale::learned_range;
  }
};

namespace detail {

// The x0 stage common to DDPM and DDIM: prediction form and clamping from the configuration.
inline StepCoefficients x0_stage(const SchedulerConfig& config, float alpha_prod_t) {
  StepCoefficients c;
  c.prediction = config.prediction_type;
  c.sqrt_alpha_prod = std::sqrt(alpha_prod_t);
  c.sqrt_beta_prod = std::sqrt(1.0f - alpha_prod_t);
  if (config.thresholding) {
    c.clamp = X0Clamp::threshold;
    c.threshold_ratio = static_cast<float>(config.dynamic_thresholding_ratio);
    c.sample_max_value = static_cast<float>(config.sample_max_value);
  } else if (config.clip_sample) {
    c.clamp = X0Clamp::clip;
    c.clip_range = static_cast<float>(config.clip_sample_range);
  }
  return c;
}

}  // namespace detail

}  // namespace carousel::diffusion
