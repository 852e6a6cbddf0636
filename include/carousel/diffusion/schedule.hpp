#pragma once
/// \file
/// \brief `NoiseSchedule`: betas, alphas and alphas_cumprod exactly as diffusers computes them in float32 torch.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "carousel/diffusion/scheduler_config.hpp"

namespace carousel::diffusion {

namespace detail {

// torch.linspace on the CPU for float32: step in float, the first half counted from start, the rest from end.
// torch's x86-64 (AVX2/AVX-512) and ARM builds contract `start + step * i` into a fused multiply-add.
inline std::vector<float> torch_linspace(float start, float end, std::int64_t steps) {
  std::vector<float> out(static_cast<std::size_t>(steps));
  if (steps == 1) {
    out[0] = start;
    return out;
  }
  const float step = (end - start) / static_cast<float>(steps - 1);
  const std::int64_t halfway = steps / 2;
  for (std::int64_t i = 0; i < steps; ++i)
    out[static_cast<std::size_t>(i)] = i < halfway ? std::fma(step, static_cast<float>(i), start)
                                                   : std::fma(-step, static_cast<float>(steps - i - 1), end);
  return out;
}

// diffusers' betas_for_alpha_bar: computed in double, stored as float32.
template <class AlphaBar>
std::vector<float> betas_for_alpha_bar(std::int64_t n, AlphaBar alpha_bar) {
  std::vector<float> out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / static_cast<double>(n);
    const double t2 = static_cast<double>(i + 1) / static_cast<double>(n);
    out[static_cast<std::size_t>(i)] = static_cast<float>(std::fmin(1.0 - alpha_bar(t2) / alpha_bar(t1), 0.999));
  }
  return out;
}

// torch.cumprod on the CPU for float32: accumulates in double, rounds each output.
inline std::vector<float> torch_cumprod(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  double acc = 1.0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    acc *= static_cast<double>(v[i]);
    out[i] = static_cast<float>(acc);
  }
  return out;
}

inline std::vector<float> one_minus(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    out[i] = 1.0f - v[i];
  return out;
}

// diffusers' rescale_zero_terminal_snr, in float32 torch arithmetic.
inline std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas) {
  std::vector<float> s = torch_cumprod(one_minus(betas));
  for (float& x : s)
    x = std::sqrt(x);
  const float s0 = s.front();
  const float s_last = s.back();
  const float scale = s0 / (s0 - s_last);
  for (float& x : s)
    x = (x - s_last) * scale;
  std::vector<float> alphas(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const float ab = s[i] * s[i];
    alphas[i] = i == 0 ? ab : ab / (s[i - 1] * s[i - 1]);
  }
  return one_minus(alphas);
}

}  // namespace detail

/// The training noise schedule of a `SchedulerConfig`: float32 betas, alphas = 1 - betas and their cumulative
/// product, bit-identical to diffusers' `scheduler.betas` / `.alphas` / `.alphas_cumprod` (torch float32 on the CPU).
///
/// Immutable after construction; safe to share between threads and requests (samplers hold it by
/// `std::shared_ptr<const NoiseSchedule>`).
class NoiseSchedule {
 public:
  /// Validates `config` (throws `std::invalid_argument` naming the field) and computes the schedule.
  explicit NoiseSchedule(SchedulerConfig config) : config_(std::move(config)) {
    config_.validate();
    const std::int64_t n = config_.num_train_timesteps;
    if (config_.trained_betas) {
      for (double b : *config_.trained_betas)
        betas_.push_back(static_cast<float>(b));
    } else {
      switch (config_.beta_schedule) {
        case BetaSchedule::linear:
          betas_ =
              detail::torch_linspace(static_cast<float>(config_.beta_start), static_cast<float>(config_.beta_end), n);
          break;
        case BetaSchedule::scaled_linear:
          betas_ = detail::torch_linspace(static_cast<float>(std::sqrt(config_.beta_start)),
                                          static_cast<float>(std::sqrt(config_.beta_end)), n);
          for (float& b : betas_)
            b = b * b;
          break;
        case BetaSchedule::squaredcos_cap_v2:
          betas_ = detail::betas_for_alpha_bar(n, [](double t) {
            const double c = std::cos((t + 0.008) / 1.008 * std::numbers::pi / 2.0);
            return c * c;
          });
          break;
        case BetaSchedule::laplace:
          betas_ = detail::betas_for_alpha_bar(n, [](double t) {
            const double lmb = -0.5 * std::copysign(1.0, 0.5 - t) * std::log(1.0 - 2.0 * std::fabs(0.5 - t) + 1e-6);
            const double snr = std::exp(lmb);
            return std::sqrt(snr / (1.0 + snr));
          });
          break;
        case BetaSchedule::sigmoid: {
          betas_ = detail::torch_linspace(-6.0f, 6.0f, n);
          const auto range = static_cast<float>(config_.beta_end - config_.beta_start);
          const auto start = static_cast<float>(config_.beta_start);
          for (float& b : betas_)
            b = (1.0f / (1.0f + std::exp(-b))) * range + start;
          break;
        }
      }
    }
    if (config_.rescale_betas_zero_snr) betas_ = detail::rescale_zero_terminal_snr(betas_);
    alphas_ = detail::one_minus(betas_);
    alphas_cumprod_ = detail::torch_cumprod(alphas_);
  }

  /// The validated configuration.
  [[nodiscard]] const SchedulerConfig& config() const noexcept { return config_; }
  /// T, the number of training timesteps.
  [[nodiscard]] std::int64_t num_train_timesteps() const noexcept { return config_.num_train_timesteps; }
  /// betas[0..T).
  [[nodiscard]] std::span<const float> betas() const noexcept { return betas_; }
  /// 1 - betas.
  [[nodiscard]] std::span<const float> alphas() const noexcept { return alphas_; }
  /// The cumulative product of alphas (abar).
  [[nodiscard]] std::span<const float> alphas_cumprod() const noexcept { return alphas_cumprod_; }

  /// abar[t] with Python indexing: t in [-T, T); negative t counts from the end, as `alphas_cumprod[t]` does in
  /// diffusers (the trailing-spacing quirk can produce t = -1). Throws `std::out_of_range` otherwise.
  [[nodiscard]] float alpha_cumprod(std::int64_t t) const {
    const std::int64_t n = num_train_timesteps();
    if (t < -n || t >= n)
      throw std::out_of_range("timestep " + std::to_string(t) + " is outside the schedule's " + std::to_string(n) +
                              " training timesteps");
    return alphas_cumprod_[static_cast<std::size_t>(t < 0 ? t + n : t)];
  }

  /// DDIM's abar before the first training step: 1 when `set_alpha_to_one`, else abar[0].
  [[nodiscard]] float final_alpha_cumprod() const noexcept {
    return config_.set_alpha_to_one ? 1.0f : alphas_cumprod_.front();
  }

 private:
  SchedulerConfig config_;
  std::vector<float> betas_;
  std::vector<float> alphas_;
  std::vector<float> alphas_cumprod_;
};

}  // namespace carousel::diffusion
