#pragma once
/// \file carousel/detail/arrival_estimator.hpp
/// The arrival rate and the mean step count of submitted requests, as running means.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace carousel::detail {

/// Running means of the time between submits and of the steps per request (plain averages until there are
/// 1 / `weight` samples, then exponential with `weight`, so the first samples are not swamped by the start value and
/// later ones follow a changing load). Not thread-safe (the batcher guards it).
template <class TimePoint>
class ArrivalEstimator {
 public:
  /// Weight of the newest sample once there are 1 / weight of them.
  static constexpr double weight = 0.05;

  /// Records a submit at `now` of a request with `total_steps` steps (0: unknown, counted as 1).
  void record(TimePoint now, std::size_t total_steps) {
    if (last_) {
      ++gaps_;
      const double gap = std::chrono::duration<double>(now - *last_).count();
      const double w = std::max(weight, 1.0 / static_cast<double>(gaps_));
      mean_gap_ = mean_gap_ < 0 ? gap : mean_gap_ + w * (gap - mean_gap_);
    }
    last_ = now;
    ++samples_;
    const double steps = total_steps ? static_cast<double>(total_steps) : 1.0;
    const double ws = std::max(weight, 1.0 / static_cast<double>(samples_));
    mean_steps_ = mean_steps_ < 0 ? steps : mean_steps_ + ws * (steps - mean_steps_);
  }

  /// Mean seconds between submits; negative before the second submit.
  double mean_gap() const noexcept { return mean_gap_; }
  /// Mean steps per request; negative before the first submit.
  double mean_steps() const noexcept { return mean_steps_; }

 private:
  std::optional<TimePoint> last_;
  std::uint64_t gaps_ = 0;
  std::uint64_t samples_ = 0;
  double mean_gap_ = -1;
  double mean_steps_ = -1;
};

}  // namespace carousel::detail
