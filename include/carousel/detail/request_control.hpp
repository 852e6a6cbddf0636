#pragma once
/// \file carousel/detail/request_control.hpp
/// The state a Ticket shares with its batcher: the one-shot result and the cancellation flag.

#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "carousel/errors.hpp"
#include "carousel/progress.hpp"
#include "carousel/request_status.hpp"

namespace carousel::detail {

class RequestControlBase;

/// The batcher side of cancellation; tickets hold it weakly so a ticket may outlive its batcher.
class CancelTarget {
 public:
  /// Called by `Ticket::cancel()` after the flag is set: fails the request at once if it is still queued.
  virtual void cancel_queued(RequestControlBase& control) = 0;

 protected:
  ~CancelTarget() = default;
};

/// The part of a request's shared state that does not depend on its State type.
class RequestControlBase {
 public:
  explicit RequestControlBase(RequestId id) noexcept : id_(id) {}
  RequestControlBase(const RequestControlBase&) = delete;
  RequestControlBase& operator=(const RequestControlBase&) = delete;

  RequestId id() const noexcept { return id_; }
  RequestStatus status() const noexcept { return status_.load(std::memory_order_acquire); }
  void set_status(RequestStatus s) noexcept { status_.store(s, std::memory_order_release); }
  bool cancel_requested() const noexcept { return cancel_.load(std::memory_order_acquire); }
  /// Sets the cancellation flag; returns false if it was already set.
  bool request_cancel() noexcept { return !cancel_.exchange(true, std::memory_order_acq_rel); }

  std::weak_ptr<CancelTarget> target;  // set once before the ticket is handed out
  void* queued_entry = nullptr;        // the batcher's queue entry while queued; guarded by the batcher's mutex
  /// SubmitOptions::on_complete: set once before the request can complete, called once after it did.
  std::function<void(RequestId, std::optional<Errc>)> on_complete;

 protected:
  ~RequestControlBase() = default;

  // Calls on_complete (once: only the call that completed the request gets here); swallows its exceptions.
  void notify_complete(std::optional<Errc> code) noexcept {
    if (!on_complete) return;
    auto fn = std::move(on_complete);
    try {
      fn(id_, code);
    } catch (...) {  // a continuation must not break the thread that completed the request
    }
  }

 private:
  RequestId id_;
  std::atomic<RequestStatus> status_{RequestStatus::queued};
  std::atomic<bool> cancel_{false};
};

/// A request's one-shot result: exactly one of `complete_value` / `complete_error` takes effect.
template <class State>
class RequestControl final : public RequestControlBase {
 public:
  using RequestControlBase::RequestControlBase;

  /// Completes with the state; returns false (and does nothing) if already complete.
  bool complete_value(State&& state) {
    {
      std::lock_guard lock(mutex_);
      if (ready_) return false;
      value_.emplace(std::move(state));
      ready_ = true;
    }
    set_status(RequestStatus::completed);
    cv_.notify_all();
    notify_complete(std::nullopt);
    return true;
  }

  /// Completes with an error; returns false (and does nothing) if already complete.
  bool complete_error(Errc code, std::exception_ptr error) {
    {
      std::lock_guard lock(mutex_);
      if (ready_) return false;
      error_ = std::move(error);
      code_ = code;
      ready_ = true;
    }
    set_status(RequestStatus::failed);
    cv_.notify_all();
    notify_complete(code);
    return true;
  }

  bool ready() const {
    std::lock_guard lock(mutex_);
    return ready_;
  }

  void wait() const {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return ready_; });
  }

  template <class Rep, class Period>
  bool wait_for(const std::chrono::duration<Rep, Period>& d) const {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, d, [&] { return ready_; });
  }

  template <class C, class D>
  bool wait_until(const std::chrono::time_point<C, D>& t) const {
    std::unique_lock lock(mutex_);
    return cv_.wait_until(lock, t, [&] { return ready_; });
  }

  std::optional<Errc> error_code() const {
    std::lock_guard lock(mutex_);
    return code_;
  }

  /// Waits, then moves the state out or rethrows the error. Called at most once (the ticket enforces it).
  State take() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return ready_; });
    // The exception leaves the shared state, so its last owner is the thread that handles it (the batcher may drop
    // its reference to this state at any time).
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    return std::move(*value_);
  }

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  bool ready_ = false;
  std::optional<State> value_;
  std::exception_ptr error_;
  std::optional<Errc> code_;
};

}  // namespace carousel::detail
