#pragma once
/// \file
/// \brief diffusers' `set_timesteps` for the three timestep spacings, and validation of custom timesteps.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "carousel/diffusion/scheduler_config.hpp"

namespace carousel::diffusion {

/// The inference timesteps diffusers' DDPM/DDIM `set_timesteps(num_inference_steps)` produces, in descending order.
///  - linspace: round-half-even of numpy `linspace(0, T-1, N)`, reversed;
///  - leading: `i * (T // N)` for i = N-1..0, plus `steps_offset`;
///  - trailing: round-half-even of numpy `arange(T, 0, -T/N)`, minus 1. numpy's float arange yields N+1 values for
///    some N (61, 103, 121, ...); the last is then -1, exactly as in diffusers.
/// `config.timestep_spacing` is used when set, else `default_spacing` (the scheduler's default).
/// Throws `std::invalid_argument` naming `num_inference_steps` when it is 0 or larger than `num_train_timesteps`.
[[nodiscard]] inline std::vector<std::int64_t> make_timesteps(
    const SchedulerConfig& config, std::int64_t num_inference_steps,
    TimestepSpacing default_spacing = TimestepSpacing::leading) {
  const std::int64_t t_max = config.num_train_timesteps;
  const std::int64_t n = num_inference_steps;
  if (n < 1) throw std::invalid_argument("set_timesteps: `num_inference_steps` must be at least 1");
  if (n > t_max)
    throw std::invalid_argument("set_timesteps: `num_inference_steps` (" + std::to_string(n) +
                                ") cannot be larger than `num_train_timesteps` (" + std::to_string(t_max) + ")");
  std::vector<std::int64_t> out;
  switch (config.spacing_or(default_spacing)) {
    case TimestepSpacing::linspace: {
      // numpy.linspace: i * step with step = (stop - start) / (num - 1), the last value set to stop exactly.
      const auto stop = static_cast<double>(t_max - 1);
      const double step = n > 1 ? stop / static_cast<double>(n - 1) : 0.0;
      for (std::int64_t i = n - 1; i >= 0; --i) {
        const double v = i == n - 1 && n > 1 ? stop : static_cast<double>(i) * step;
        out.push_back(static_cast<std::int64_t>(std::nearbyint(v)));
      }
      break;
    }
    case TimestepSpacing::leading: {
      const std::int64_t ratio = t_max / n;
      for (std::int64_t i = n - 1; i >= 0; --i)
        out.push_back(i * ratio + config.steps_offset);
      break;
    }
    case TimestepSpacing::trailing: {
      // numpy.arange(start, stop, step) for floats: length ceil((stop - start) / step); values
      // start + i * delta with delta = (start + step) - start.
      const auto start = static_cast<double>(t_max);
      const double step = -(start / static_cast<double>(n));
      const auto length = static_cast<std::int64_t>(std::ceil((0.0 - start) / step));
      const double delta = (start + step) - start;
      for (std::int64_t i = 0; i < length; ++i)
        out.push_back(static_cast<std::int64_t>(std::nearbyint(start + static_cast<double>(i) * delta)) - 1);
      break;
    }
  }
  return out;
}

/// Checks custom timesteps as diffusers' DDPM `set_timesteps(timesteps=...)` does: non-empty, strictly descending,
/// first below `num_train_timesteps`, last not below 0. Throws `std::invalid_argument` naming `timesteps`.
inline void validate_custom_timesteps(const SchedulerConfig& config, std::span<const std::int64_t> timesteps) {
  if (timesteps.empty()) throw std::invalid_argument("set_timesteps: `timesteps` must not be empty");
  for (std::size_t i = 1; i < timesteps.size(); ++i)
    if (timesteps[i] >= timesteps[i - 1])
      throw std::invalid_argument("set_timesteps: `timesteps` must be strictly descending (index " + std::to_string(i) +
                                  ")");
  if (timesteps.front() >= config.num_train_timesteps)
    throw std::invalid_argument("set_timesteps: `timesteps` must start below `num_train_timesteps` (" +
                                std::to_string(config.num_train_timesteps) + ")");
  if (timesteps.back() < 0) throw std::invalid_argument("set_timesteps: `timesteps` must not be negative");
}

}  // namespace carousel::diffusion
