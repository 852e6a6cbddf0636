#pragma once
/// \file
/// \brief Euler (diffusers' `EulerDiscreteScheduler`, deterministic: s_churn = 0): its sigma schedule, timesteps,
/// model-input scaling and per-step coefficients.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "carousel/diffusion/schedule.hpp"
#include "carousel/diffusion/step_coefficients.hpp"
#include "carousel/diffusion/timesteps.hpp"

namespace carousel::diffusion {

/// Euler's inference schedule: N float timesteps (what the UNet sees), N+1 float32 sigmas (the last one 0 or
/// sigma_min) and the scale of the initial noise.
struct EulerSchedule {
  std::vector<double> timesteps;  ///< float32 values, as `scheduler.timesteps`.
  std::vector<float> sigmas;      ///< `scheduler.sigmas`.
  float init_noise_sigma = 1.0f;  ///< `scheduler.init_noise_sigma`.
};

namespace detail {

// numpy.interp over xp = 0, 1, ..., n-1 (double arithmetic; exact at the nodes, clamped outside).
inline double interp_unit_grid(double x, const std::vector<float>& fp) {
  const auto last = static_cast<double>(fp.size() - 1);
  if (x > last) return static_cast<double>(fp.back());
  if (x < 0.0) return static_cast<double>(fp.front());
  if (x == last) return static_cast<double>(fp.back());
  const double j = std::floor(x);
  const auto i = static_cast<std::size_t>(j);
  if (j == x) return static_cast<double>(fp[i]);
  const double slope = static_cast<double>(fp[i + 1]) - static_cast<double>(fp[i]);
  return slope * (x - j) + static_cast<double>(fp[i]);
}

// EulerDiscreteScheduler._sigma_to_t: the fractional training timestep whose log-sigma interpolates to `sigma`.
inline double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  std::size_t low = 0;
  for (std::size_t i = 0; i < log_sigmas.size(); ++i)
    if (log_sigma - static_cast<double>(log_sigmas[i]) >= 0.0) low = i;
  low = std::min(low, log_sigmas.size() - 2);
  const auto lo = static_cast<double>(log_sigmas[low]);
  const auto hi = static_cast<double>(log_sigmas[low + 1]);
  const double w = std::clamp((lo - log_sigma) / (lo - hi), 0.0, 1.0);
  return (1.0 - w) * static_cast<double>(low) + w * static_cast<double>(low + 1);
}

}  // namespace detail

/// EulerDiscreteScheduler's `set_timesteps(N)`: timesteps by spacing (default "linspace"), sigmas =
/// sqrt((1 - abar) / abar) interpolated at them (or Karras-spaced with rho = 7 between sigma_min and sigma_max, the
/// timesteps then mapped back through log-sigma interpolation), then the final sigma. Throws
/// `std::invalid_argument` naming `num_inference_steps` when it is 0 or exceeds `num_train_timesteps`.
[[nodiscard]] inline EulerSchedule make_euler_schedule(const NoiseSchedule& schedule,
                                                       std::int64_t num_inference_steps) {
  const SchedulerConfig& config = schedule.config();
  const TimestepSpacing spacing = config.spacing_or(TimestepSpacing::linspace);
  EulerSchedule out;
  if (spacing == TimestepSpacing::linspace) {
    static_cast<void>(make_timesteps(config, num_inference_steps, spacing));  // validates the step count
    const auto stop = static_cast<double>(config.num_train_timesteps - 1);
    const std::int64_t n = num_inference_steps;
    const double step = n > 1 ? stop / static_cast<double>(n - 1) : 0.0;
    for (std::int64_t i = n - 1; i >= 0; --i)
      out.timesteps.push_back(static_cast<float>(i == n - 1 && n > 1 ? stop : static_cast<double>(i) * step));
  } else {
    for (std::int64_t t : make_timesteps(config, num_inference_steps, spacing))
      out.timesteps.push_back(static_cast<double>(t));
  }

  std::vector<float> full(schedule.alphas_cumprod().size());
  std::vector<float> log_sigmas(full.size());
  for (std::size_t i = 0; i < full.size(); ++i) {
    const float a = schedule.alphas_cumprod()[i];
    full[i] = std::sqrt((1.0f - a) / a);
    log_sigmas[i] = std::log(full[i]);
  }
  std::vector<double> sigmas;
  for (double t : out.timesteps)
    sigmas.push_back(detail::interp_unit_grid(t, full));
  if (config.use_karras_sigmas) {
    const double sigma_min = config.sigma_min.value_or(sigmas.back());
    const double sigma_max = config.sigma_max.value_or(sigmas.front());
    const double rho = 7.0;
    const double min_inv_rho = std::pow(sigma_min, 1.0 / rho);
    const double max_inv_rho = std::pow(sigma_max, 1.0 / rho);
    const std::size_t n = sigmas.size();
    for (std::size_t i = 0; i < n; ++i) {
      const double ramp =
          n > 1 ? (i + 1 == n ? 1.0 : static_cast<double>(i) * (1.0 / static_cast<double>(n - 1))) : 0.0;
      sigmas[i] = std::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho);
      out.timesteps[i] = static_cast<float>(detail::sigma_to_t(sigmas[i], log_sigmas));
    }
  }
  for (double s : sigmas)
    out.sigmas.push_back(static_cast<float>(s));
  out.sigmas.push_back(config.final_sigmas_type == FinalSigmas::zero ? 0.0f : full.front());
  const float max_sigma = *std::max_element(out.sigmas.begin(), out.sigmas.end());
  out.init_noise_sigma = spacing == TimestepSpacing::leading ? std::sqrt(max_sigma * max_sigma + 1.0f) : max_sigma;
  return out;
}

/// Euler's `scale_model_input` divisor for sigma: the UNet input is `sample / sqrt(sigma^2 + 1)` (a division).
[[nodiscard]] inline float euler_input_divisor(float sigma) {
  return std::sqrt(sigma * sigma + 1.0f);
}

/// Coefficients of `EulerDiscreteScheduler.step(out, t, x)` (s_churn = 0) from `sigma` to `sigma_next`.
[[nodiscard]] inline StepCoefficients euler_coefficients(const SchedulerConfig& config, float sigma, float sigma_next) {
  StepCoefficients c;
  c.form = UpdateForm::euler;
  c.prediction = config.prediction_type;
  c.sigma = sigma * (0.0f + 1.0f);  // sigma_hat with gamma = 0
  c.dt = sigma_next - c.sigma;
  c.v_sample_divisor = sigma * sigma + 1.0f;
  c.v_out_coeff = -sigma / std::sqrt(c.v_sample_divisor);
  return c;
}

}  // namespace carousel::diffusion
