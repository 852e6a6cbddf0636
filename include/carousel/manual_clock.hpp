#pragma once
/// \file carousel/manual_clock.hpp
/// A virtual clock for tests and simulations: time moves only when told to.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

namespace carousel {

/// A Clock (in the std::chrono sense, but with a non-static `now()`) whose time only moves by `advance()`/`set()`.
///
/// Copies share one time line, so a test keeps a copy and the batcher another. Thread-safe.
/// A batcher on a ManualClock is meant to be driven with `step_once()`; its scheduler thread would convert virtual
/// waits into real ones.
/// \code
///   carousel::ManualClock clock;
///   carousel::StepBatcher<Model, Job, carousel::ManualClock> batcher{model, {}, clock};
///   clock.advance(std::chrono::milliseconds(5));
/// \endcode
class ManualClock {
 public:
  using rep = std::int64_t;
  using period = std::nano;
  using duration = std::chrono::duration<rep, period>;
  using time_point = std::chrono::time_point<ManualClock, duration>;
  static constexpr bool is_steady = true;

  /// A new time line starting at the epoch.
  ManualClock() : ticks_(std::make_shared<std::atomic<rep>>(0)) {}

  /// The current virtual time.
  time_point now() const noexcept { return time_point(duration(ticks_->load(std::memory_order_acquire))); }

  /// Moves time forward by `d` (which must not be negative).
  void advance(duration d) noexcept { ticks_->fetch_add(d.count(), std::memory_order_acq_rel); }

  /// Sets the time; callers keep it monotonic.
  void set(time_point t) noexcept { ticks_->store(t.time_since_epoch().count(), std::memory_order_release); }

 private:
  std::shared_ptr<std::atomic<rep>> ticks_;
};

}  // namespace carousel
