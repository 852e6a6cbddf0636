#pragma once
/// \file carousel/stats.hpp
/// Counters and histograms a batcher keeps about itself.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace carousel {

/// A histogram of durations in seconds, with fixed exponential buckets from 1 µs to about 9.5 hours (factor 2).
///
/// Cheap to record into (a log2); Prometheus-compatible (`upper_bound(i)` are the `le` labels, plus +Inf).
class Histogram {
 public:
  /// Number of finite buckets; bucket i holds values in (upper_bound(i-1), upper_bound(i)].
  static constexpr std::size_t bucket_count = 36;

  /// The inclusive upper bound of finite bucket `i`, in seconds: 1e-6 * 2^i.
  static double upper_bound(std::size_t i) noexcept { return 1e-6 * std::ldexp(1.0, static_cast<int>(i)); }

  /// Records one value (seconds; negative values count as 0).
  void record(double seconds) noexcept {
    seconds = std::max(seconds, 0.0);
    ++counts_[bucket_of(seconds)];
    ++count_;
    sum_ += seconds;
    min_ = std::min(min_, seconds);
    max_ = std::max(max_, seconds);
  }

  /// How many values were recorded.
  std::uint64_t count() const noexcept { return count_; }
  /// The sum of the recorded values (seconds).
  double sum() const noexcept { return sum_; }
  /// The mean, or 0 when empty.
  double mean() const noexcept { return count_ ? sum_ / static_cast<double>(count_) : 0.0; }
  /// The smallest value, or 0 when empty.
  double min() const noexcept { return count_ ? min_ : 0.0; }
  /// The largest value, or 0 when empty.
  double max() const noexcept { return count_ ? max_ : 0.0; }
  /// Values in finite bucket `i` (not cumulative); index `bucket_count` holds those above the last bound.
  std::uint64_t bucket(std::size_t i) const noexcept { return counts_[i]; }

  /// An estimate of quantile `q` in [0, 1] (linear within a bucket, clamped to the observed min and max); 0 when empty.
  double quantile(double q) const noexcept {
    if (count_ == 0) return 0.0;
    const double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(count_);
    double seen = 0;
    for (std::size_t i = 0; i <= bucket_count; ++i) {
      const auto c = static_cast<double>(counts_[i]);
      if (c > 0 && seen + c >= rank) {
        const double lo = i == 0 ? 0.0 : upper_bound(i - 1);
        const double hi = i == bucket_count ? max_ : upper_bound(i);
        const double v = lo + (hi - lo) * ((rank - seen) / c);
        return std::clamp(v, min_, max_);
      }
      seen += c;
    }
    return max_;
  }

 private:
  static std::size_t bucket_of(double seconds) noexcept {
    if (seconds <= 1e-6) return 0;
    const double b = std::ceil(std::log2(seconds / 1e-6));
    return b >= static_cast<double>(bucket_count) ? bucket_count : static_cast<std::size_t>(b);
  }

  std::array<std::uint64_t, bucket_count + 1> counts_{};
  std::uint64_t count_ = 0;
  double sum_ = 0;
  double min_ = std::numeric_limits<double>::infinity();
  double max_ = 0;
};

/// A snapshot of a batcher's counters, gauges and histograms (`StepBatcher::stats()`).
///
/// Every submitted request is counted once in exactly one of completed, failed, cancelled, expired, rejected, or is
/// still in flight: `submitted == completed + failed + cancelled + expired + rejected + queue_depth + active +
/// retiring`.
struct Stats {
  std::uint64_t submitted = 0;      ///< calls to submit
  std::uint64_t admitted = 0;       ///< first admissions (a resumed request is not counted again)
  std::uint64_t completed = 0;      ///< completed with their state
  std::uint64_t failed = 0;         ///< failed with `model_error`
  std::uint64_t cancelled = 0;      ///< failed with `cancelled`
  std::uint64_t expired = 0;        ///< failed with `deadline_exceeded`
  std::uint64_t rejected = 0;       ///< refused: `invalid_request`, `queue_full`, `shut_down`, `deadline_unreachable`
  std::uint64_t preempted = 0;      ///< suspensions by preemption
  std::size_t queue_depth = 0;      ///< waiting now (suspended included)
  std::size_t active = 0;           ///< running now (finished ones held for a merged retire included)
  std::size_t retiring = 0;         ///< finished, waiting for or in the retire stage (`Options::concurrent_retire`)
  std::uint64_t iterations = 0;     ///< iterations that stepped at least one request
  std::uint64_t request_steps = 0;  ///< request-steps done (sum of batch sizes)
  double mean_batch_size = 0;       ///< request_steps / iterations
  double mean_occupancy = 0;        ///< mean of batch size / max_batch_size over iterations, in [0, 1]
  Histogram queue_wait;             ///< submit -> first admission, seconds
  Histogram latency;                ///< submit -> completion, seconds (successful requests)
  Histogram step_time;              ///< model time of one iteration (all step() calls), seconds
  /// Request-steps left over the queued, running and held requests: `total_steps - steps_done` of each with
  /// `Model::total_steps`; without it every queued or running request counts 1 (the least it still needs). The load
  /// a replica carries, in the unit the model works in (a request with 45 steps left weighs 45, one with 2 weighs 2).
  std::uint64_t remaining_steps = 0;
  /// The estimated seconds to finish everything queued and running if nothing else arrived: continuous admission
  /// replayed on the remaining step counts (running requests first, then the queue in admission order, at most
  /// `max_batch_size` per iteration, each freed place refilled at once) at the measured step-time curve t(b), plus
  /// the measured retire time d(k) of the requests that finish in the same iteration (only the last group's under
  /// `Options::concurrent_retire`). O(n log n); the rule is documented at `detail::drain_seconds`. Exact for
  /// continuous admission without `max_batch_cost`; static batching and cost-aware pacing take longer. 0 when idle,
  /// and 0 until the first iteration has been measured (there is no step time to multiply by yet; `remaining_steps`
  /// shows the work meanwhile). Computed by `stats()` outside the batcher's lock.
  double drain_seconds = 0;
};

}  // namespace carousel
