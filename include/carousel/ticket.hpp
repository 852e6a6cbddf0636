#pragma once
/// \file carousel/ticket.hpp
/// The caller's handle on a submitted request.

#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <utility>

#include "carousel/detail/request_control.hpp"
#include "carousel/errors.hpp"
#include "carousel/progress.hpp"
#include "carousel/request_status.hpp"

namespace carousel {

/// The result of `StepBatcher::submit`: a one-shot future for the request's final state, plus cancellation.
///
/// Every ticket completes exactly once: with the state, or with a `carousel::Error`. Movable, not copyable. A ticket
/// may outlive its batcher (the batcher completes everything it holds before it is destroyed). The methods may be
/// called from any thread, but one ticket object must not be used from two threads at once (like `std::future`).
template <class State>
class Ticket {
 public:
  /// An empty ticket (`valid()` is false).
  Ticket() = default;
  /// Internal: made by the batcher.
  explicit Ticket(std::shared_ptr<detail::RequestControl<State>> control) noexcept : control_(std::move(control)) {}

  /// True until `get()` has taken the result.
  bool valid() const noexcept { return control_ != nullptr; }

  /// The request's id (unique within its batcher). Precondition: `valid()`.
  RequestId id() const noexcept { return control_->id(); }

  /// Blocks until the request completes, then returns its state or throws its `carousel::Error`.
  /// Precondition: `valid()`; afterwards the ticket is empty.
  State get() {
    if (!control_) throw std::future_error(std::future_errc::no_state);
    auto control = std::move(control_);
    return control->take();
  }

  /// Blocks until the request completes.
  void wait() const { control_->wait(); }

  /// Waits at most `d`; `std::future_status::ready` once the request completed, else `timeout`.
  template <class Rep, class Period>
  std::future_status wait_for(const std::chrono::duration<Rep, Period>& d) const {
    return control_->wait_for(d) ? std::future_status::ready : std::future_status::timeout;
  }

  /// Waits until `t` (of any clock with a real-time `now()`); like `wait_for`.
  template <class C, class D>
  std::future_status wait_until(const std::chrono::time_point<C, D>& t) const {
    return control_->wait_until(t) ? std::future_status::ready : std::future_status::timeout;
  }

  /// True once the request completed (successfully or not).
  bool ready() const { return control_->ready(); }

  /// Asks for cancellation: a queued request fails with `Errc::cancelled` at once, a running or suspended one at the
  /// next step boundary. Returns false if the request had already completed or was already cancelled.
  bool cancel() {
    if (!control_ || control_->ready() || !control_->request_cancel()) return false;
    if (auto target = control_->target.lock()) target->cancel_queued(*control_);
    return true;
  }

  /// Where the request is now (a snapshot; it may change at once).
  RequestStatus status() const noexcept { return control_->status(); }

  /// The error code once the request has failed; empty while in flight or after success.
  std::optional<Errc> error_code() const { return control_->error_code(); }

 private:
  std::shared_ptr<detail::RequestControl<State>> control_;
};

}  // namespace carousel
