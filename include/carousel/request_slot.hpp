#pragma once
/// \file carousel/request_slot.hpp
/// The scheduler's record of one request, as observers see it.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <optional>
#include <utility>

#include "carousel/progress.hpp"

namespace carousel {

/// The scheduler's record of one request: its state and its scheduling facts.
///
/// Slots are owned by the batcher; observers get const references that are valid during the callback only. A slot's
/// state is touched only by the thread that drives the batcher. The batcher's own record of a request derives from
/// this class (`detail::Request`) and adds what only the scheduler reads.
template <class State, class Clock = std::chrono::steady_clock>
class RequestSlot {
 public:
  using time_point = typename Clock::time_point;

  RequestSlot(const RequestSlot&) = delete;
  RequestSlot& operator=(const RequestSlot&) = delete;

  /// The request's id (the ticket's `id()`).
  RequestId id() const noexcept { return id_; }
  /// The request's state, as the model last left it.
  const State& state() const noexcept { return state_; }
  /// Steps completed so far.
  std::size_t steps_done() const noexcept { return steps_done_.load(std::memory_order_relaxed); }
  /// `Model::total_steps` of the request, or 0 when the model does not say.
  std::size_t total_steps() const noexcept { return total_steps_; }
  /// The request's priority (`SubmitOptions::priority`).
  int priority() const noexcept { return priority_; }
  /// The request's deadline, if it has one.
  const std::optional<time_point>& deadline() const noexcept { return deadline_; }
  /// When `submit` accepted the request.
  time_point submitted_at() const noexcept { return submitted_at_; }
  /// When the request was first admitted; empty while it has never run.
  const std::optional<time_point>& admitted_at() const noexcept { return admitted_at_; }

 protected:
  RequestSlot(RequestId id, State&& state, int priority, std::optional<time_point> deadline, time_point submitted)
      : id_(id), state_(std::move(state)), priority_(priority), deadline_(deadline), submitted_at_(submitted) {}
  ~RequestSlot() = default;

  RequestId id_;
  State state_;
  // Written only by the driving thread; atomic so that `StepBatcher::stats()` may read a running request's progress.
  std::atomic<std::size_t> steps_done_{0};
  std::size_t total_steps_ = 0;
  int priority_;
  std::optional<time_point> deadline_;
  time_point submitted_at_;
  std::optional<time_point> admitted_at_;
};

}  // namespace carousel
