#pragma once
/// \file carousel/detail/request.hpp
/// The batcher's own record of a request (the observer's `RequestSlot` plus what only the scheduler reads), and the
/// outcome with which a request leaves the batcher.

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "carousel/detail/request_control.hpp"
#include "carousel/errors.hpp"
#include "carousel/progress.hpp"
#include "carousel/request_slot.hpp"

namespace carousel::detail {

/// One request inside the batcher. Observers see it as its `RequestSlot` base; the scheduler's pieces read and write
/// the fields below (under the batcher's mutex, or on the driving thread, as each piece says).
template <class State, class Clock>
class Request final : public RequestSlot<State, Clock> {
  using Slot = RequestSlot<State, Clock>;

 public:
  using typename Slot::time_point;

  Request(RequestId id, State&& state, int priority, std::optional<time_point> deadline, time_point submitted)
      : Slot(id, std::move(state), priority, deadline, submitted) {}

  using Slot::admitted_at_;
  using Slot::deadline_;
  using Slot::priority_;
  using Slot::state_;
  using Slot::submitted_at_;
  using Slot::total_steps_;

  /// Submission order (the queue's tie-breaker).
  std::uint64_t seq() const noexcept { return seq_; }

  /// Steps left by `Model::total_steps`; 0 once done or when the model does not say.
  std::size_t remaining_steps() const noexcept {
    const std::size_t done = this->steps_done();
    return total_steps_ > done ? total_steps_ - done : 0;
  }

  /// One more step done (driving thread only; a relaxed store, since only this thread writes it).
  void count_step() noexcept { this->steps_done_.store(this->steps_done() + 1, std::memory_order_relaxed); }

  std::size_t cost_ = 0;         // Model::cost
  std::uint64_t seq_ = 0;        // submission order
  std::uint64_t admit_seq_ = 0;  // admission order, once admitted
  std::size_t group_ = 0;        // index of the request's batch key in the batcher's key registry
  bool admitted_ = false;        // admit() has run for it (a resumed request is not admitted again)
  bool leaving_ = false;         // finished or failed in the current iteration
  bool kept_ = false;            // held for a merged retire (set and cleared within one iteration)
  bool awaiting_merge_ = false;  // held for a merged retire since an earlier iteration
  std::function<void(const Progress&)> on_progress_;
  std::shared_ptr<RequestControl<State>> control_;
};

/// A request leaving the batcher and how its ticket completes.
template <class State, class Clock>
struct Outcome {
  std::unique_ptr<Request<State, Clock>> request;
  std::optional<Errc> code;  // empty: success
  std::exception_ptr error;
};

/// Appends the failure of `request` with `code` (the exception `cause`, if any, nested in the error).
template <class State, class Clock>
void fail(std::vector<Outcome<State, Clock>>& out, std::unique_ptr<Request<State, Clock>> request, Errc code,
          const std::string& what, std::exception_ptr cause = nullptr) {
  out.push_back(Outcome<State, Clock>{std::move(request), code, make_error(code, what, std::move(cause))});
}

/// The states of `requests`, in their order, as the span a model hook takes (`scratch` holds them).
template <class State, class Clock>
std::span<State* const> states_of(const std::vector<Request<State, Clock>*>& requests, std::vector<State*>& scratch) {
  scratch.clear();
  for (Request<State, Clock>* r : requests)
    scratch.push_back(&r->state_);
  return scratch;
}

/// Completes the tickets of `out`: the state moves out of a successful request. Call without the batcher's mutex
/// (completion runs `SubmitOptions::on_complete`).
template <class State, class Clock>
void complete(std::vector<Outcome<State, Clock>>& out) {
  for (Outcome<State, Clock>& o : out) {
    if (o.code) {
      o.request->control_->complete_error(*o.code, std::move(o.error));
    } else {
      o.request->control_->complete_value(std::move(o.request->state_));
    }
  }
}

}  // namespace carousel::detail
