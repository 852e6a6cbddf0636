#pragma once
/// \file carousel/detail/step_time_model.hpp
/// A measured cost curve: the time of one batched call as a function of its batch size.

#include <cstddef>
#include <optional>
#include <vector>

namespace carousel::detail {

/// Exponentially weighted means of a call's time per batch size, and a least-squares line t(b) = a + c*b through
/// them for the sizes not seen yet. Not thread-safe (the batcher guards it).
class StepTimeModel {
 public:
  /// Records that a call with `batch_size` items took `seconds`.
  void record(std::size_t batch_size, double seconds) {
    if (batch_size == 0) return;
    if (mean_.size() <= batch_size) mean_.resize(batch_size + 1, -1.0);
    double& m = mean_[batch_size];
    m = m < 0 ? seconds : m + weight * (seconds - m);
    fit();
  }

  /// The predicted time of a call with `batch_size` items; empty before any measurement.
  std::optional<double> predict(std::size_t batch_size) const {
    if (batch_size < mean_.size() && mean_[batch_size] >= 0) return mean_[batch_size];
    if (points_ == 0) return std::nullopt;
    const double t = fixed_ + per_item_ * static_cast<double>(batch_size);
    return t > 0 ? t : average_;
  }

  /// Weight of the newest measurement in the running mean.
  static constexpr double weight = 0.1;

 private:
  void fit() {
    double n = 0, sb = 0, st = 0, sbb = 0, sbt = 0;
    for (std::size_t b = 1; b < mean_.size(); ++b) {
      if (mean_[b] < 0) continue;
      const auto x = static_cast<double>(b);
      n += 1;
      sb += x;
      st += mean_[b];
      sbb += x * x;
      sbt += x * mean_[b];
    }
    points_ = static_cast<std::size_t>(n);
    average_ = n > 0 ? st / n : 0;
    const double den = n * sbb - sb * sb;
    if (n < 2 || den <= 0) {
      fixed_ = average_;
      per_item_ = 0;
      return;
    }
    per_item_ = (n * sbt - sb * st) / den;
    fixed_ = (st - per_item_ * sb) / n;
  }

  std::vector<double> mean_;  // index = batch size; -1 = not measured
  std::size_t points_ = 0;
  double average_ = 0, fixed_ = 0, per_item_ = 0;
};

}  // namespace carousel::detail
