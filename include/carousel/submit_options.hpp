#pragma once
/// \file carousel/submit_options.hpp
/// Per-request options given to `StepBatcher::submit`.

#include <chrono>
#include <functional>
#include <optional>

#include "carousel/errors.hpp"
#include "carousel/progress.hpp"

namespace carousel {

/// Per-request options. `Clock` is the batcher's clock; deadlines are its time points.
/// \code
///   batcher.submit(job, {.priority = 5, .deadline = clock.now() + 2s,
///                        .on_progress = [](const carousel::Progress& p) { ... },
///                        .on_complete = [](carousel::RequestId id, std::optional<carousel::Errc> error) { ... }});
/// \endcode
template <class Clock = std::chrono::steady_clock>
struct SubmitOptions {
  /// Larger runs first under `Order::priority`, and may preempt under `Options::preempt`.
  int priority = 0;
  /// When set, the request fails with `deadline_exceeded` if it is still queued or running at this time, and is refused
  /// with `deadline_unreachable` at admission when its remaining steps at the measured step time cannot make it.
  std::optional<typename Clock::time_point> deadline{};
  /// Called on the scheduler thread after each step of this request. Keep it short; if it throws, the request fails
  /// with `model_error`.
  std::function<void(const Progress&)> on_progress{};
  /// Called once when the request completes, successfully (`error` empty) or not, right after its ticket became
  /// ready, on the thread that completed it: the scheduler or retire thread, the thread that cancelled it while
  /// queued or stopped the batcher, or the submitting thread (inside `submit`) when it was refused. A continuation for
  /// event-driven callers, instead of a thread blocked in `Ticket::get`: take the result from the ticket (it no longer
  /// blocks) — on your own thread, since the ticket may be in use there. Keep it short; it may submit, but must not
  /// call `step_once`, `retire_once` or `stop` of the batcher; exceptions are swallowed.
  std::function<void(RequestId id, std::optional<Errc> error)> on_complete{};
};

}  // namespace carousel
