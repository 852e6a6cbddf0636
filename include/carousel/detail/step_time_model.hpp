#pragma once
/// \file carousel/detail/step_time_model.hpp
/// The batcher's measured step-time curve: model time of one iteration as a function of batch size.

#include <cstddef>
#include <optional>
#include <vector>

namespace carousel::detail {

/// Exponentially weighted means of the iteration time per batch size, and a least-squares line t(b) = a + c*b through
/// them for the sizes not seen yet. Not thread-safe (the batcher guards it).
class StepTimeModel {
 public:
  /// Records that an iteration of `batch_size` requests took `seconds` of model time.
  void record(std::size_t batch_size, double seconds) {
    if (batch_size == 0) return;
    if (mean_.size() <= batch_size) mean_.resize(batch_size + 1, -1.0);
    double& m = mean_[batch_size];
    m = m < 0 ? seconds : m + weight * (seconds - m);
  }

  /// The predicted model time of one iteration with `batch_size` requests; empty before any measurement.
  std::optional<double> predict(std::size_t batch_size) const {
    if (batch_size < mean_.size() && mean_[batch_size] >= 0) return mean_[batch_size];
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
    if (n == 0) return std::nullopt;
    const double den = n * sbb - sb * sb;
    if (n < 2 || den <= 0) return st / n;
    const double c = (n * sbt - sb * st) / den;
    const double a = (st - c * sb) / n;
    const double t = a + c * static_cast<double>(batch_size);
    return t > 0 ? t : st / n;
  }

  /// Weight of the newest measurement in the running mean.
  static constexpr double weight = 0.1;

 private:
  std::vector<double> mean_;  // index = batch size; -1 = not measured
};

}  // namespace carousel::detail
