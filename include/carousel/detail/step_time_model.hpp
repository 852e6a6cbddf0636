#pragma once
/// \file carousel/detail/step_time_model.hpp
/// A measured cost curve: the time of one batched call as a function of its batch size.

#include <cstddef>
#include <optional>
#include <vector>

namespace carousel::detail {

/// Exponentially weighted means of a call's time per batch size, and a least-squares line t(b) = a + c*b through
/// them for the sizes not seen yet. Not thread-safe (the batcher guards it).
///
/// A curve can change under the batcher: the first calls of a GPU model are slow (kernel selection, lazy
/// initialisation), a machine gets busy. A size that stops being measured would keep its old mean, and a policy that
/// trusts it may never try that size again. So when `shift_run` measurements in a row of one size are more than
/// `shift_factor` away from that size's mean, the model takes it that the curve has changed as a whole: it forgets
/// every other size and starts over from that one (a policy then measures the others again). Noise within a factor
/// of `shift_factor`, and a fixed curve, never trigger it.
class StepTimeModel {
 public:
  /// Records that a call with `batch_size` items took `seconds`.
  void record(std::size_t batch_size, double seconds) {
    if (batch_size == 0) return;
    if (mean_.size() <= batch_size) {
      mean_.resize(batch_size + 1, -1.0);
      off_.resize(batch_size + 1, 0);
      count_.resize(batch_size + 1, 0);
    }
    double& m = mean_[batch_size];
    const bool far = m > 0 && (seconds > shift_factor * m || seconds * shift_factor < m);
    if (far && count_[batch_size] == 1) {
      m = -1;  // a first measurement the second contradicts (a first call that paid for setup): drop it
      count_[batch_size] = 0;
    } else if (far && ++off_[batch_size] >= shift_run) {  // the curve has shifted: start over from this size
      mean_.assign(mean_.size(), -1.0);
      off_.assign(off_.size(), 0);
      count_.assign(count_.size(), 0);
    } else if (!far) {
      off_[batch_size] = 0;
    }
    m = m < 0 ? seconds : m + weight * (seconds - m);
    if (count_[batch_size] < 2) ++count_[batch_size];
    fit();
  }

  /// The predicted time of a call with `batch_size` items; empty before any measurement.
  std::optional<double> predict(std::size_t batch_size) const {
    if (batch_size < mean_.size() && mean_[batch_size] >= 0) return mean_[batch_size];
    if (points_ == 0) return std::nullopt;
    const double t = fixed_ + per_item_ * static_cast<double>(batch_size);
    return t > 0 ? t : average_;
  }

  /// Like `predict`, but beyond the largest measured size cost grows in proportion to the size:
  /// t(b) = t(L) * b / L. For a policy that must not count on a gain from batching it has not seen (the line through
  /// one or two small sizes may promise one), while `predict`'s optimism lets it try.
  std::optional<double> predict_cautious(std::size_t batch_size) const {
    if (points_ == 0 || batch_size <= largest_) return predict(batch_size);
    return mean_[largest_] * static_cast<double>(batch_size) / static_cast<double>(largest_);
  }

  /// Weight of the newest measurement in the running mean.
  static constexpr double weight = 0.1;
  /// How far from a size's mean (as a factor) a measurement must be to count towards a shift of the curve.
  static constexpr double shift_factor = 2.0;
  /// How many such measurements in a row of one size mean that the curve has shifted.
  static constexpr unsigned shift_run = 5;

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
      largest_ = b;
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

  std::vector<double> mean_;          // index = batch size; -1 = not measured
  std::vector<unsigned> off_;         // index = batch size; measurements in a row far from the mean
  std::vector<unsigned char> count_;  // index = batch size; measurements in the mean: 0, 1, or 2 for more
  std::size_t points_ = 0;
  std::size_t largest_ = 0;  // the largest measured size
  double average_ = 0, fixed_ = 0, per_item_ = 0;
};

}  // namespace carousel::detail
