#pragma once
/// \file carousel/step_batcher.hpp
/// StepBatcher: join-anytime, leave-on-finish batching of an iterative model.

#include <chrono>
#include <concepts>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>

#include "carousel/detail/batcher_core.hpp"
#include "carousel/iteration.hpp"
#include "carousel/options.hpp"
#include "carousel/request_slot.hpp"
#include "carousel/stats.hpp"
#include "carousel/step_model.hpp"
#include "carousel/submit_options.hpp"
#include "carousel/ticket.hpp"

namespace carousel {

/// Runs one step of every admitted request per iteration, as one batch: a new request joins at the next step boundary,
/// a finished one leaves at once.
///
/// An iteration: expire and cancel what ran out, admit the waiting requests that fit (calling `Model::admit` for the
/// first-timers), step every running request once (one `Model::step` call per batch-key group, each in admission
/// order), then retire the finished ones (`Model::retire`) and complete their tickets. Drive it with `step_once()` on
/// your own thread, or let `start()` run a scheduler thread that sleeps on a condition variable whenever there is
/// nothing to do. With `Options::concurrent_retire` the finished requests go to a retire stage instead (a second
/// thread after `start()`, or `retire_once()`), and the next iteration does not wait for their `retire`. The
/// iteration is `detail::BatcherCore::iterate` (carousel/detail/batcher_core.hpp), whose five calls are the five
/// steps of docs/data-flow.md.
///
/// Thread-safety: `submit`, `stats`, `set_observer` and `Ticket` methods may be called from any thread at any time.
/// The model is only called from the driving thread (the scheduler thread, or whoever calls `step_once`), except
/// `validate`, `batch_key`, `total_steps` and `cost`, which are called from `submit`, and `retire` under
/// `Options::concurrent_retire`, which is called from the retire stage.
/// A throwing model fails only the requests of the throwing call, with `Errc::model_error`; the loop goes on.
///
/// \code
///   Model model;
///   carousel::StepBatcher<Model, Job> batcher{model, {.max_batch_size = 8}};
///   batcher.start();
///   carousel::Ticket<Job> t = batcher.submit(Job{30});
///   Job result = t.get();
///   batcher.stop();
/// \endcode
template <class Model, class State, class Clock = std::chrono::steady_clock>
class StepBatcher {
  static_assert(std::movable<State>, "carousel::StepBatcher: State must be movable");
  static_assert(SteppableModel<Model, State>,
                "carousel::StepBatcher: Model needs `void step(std::span<State* const> batch)`");
  static_assert(FinishingModel<Model, State>, "carousel::StepBatcher: Model needs `bool finished(const State&) const`");
  static_assert(!detail::MisdeclaredAdmit<Model, State>,
                "carousel::StepBatcher: Model::admit must be `void admit(std::span<State* const> joining)`");
  static_assert(!detail::MisdeclaredRetire<Model, State>,
                "carousel::StepBatcher: Model::retire must be `void retire(std::span<State* const> leaving)`");
  static_assert(!detail::MisdeclaredBatchKey<Model, State>,
                "carousel::StepBatcher: Model::batch_key must be `Key batch_key(const State&) const` with a copyable, "
                "equality-comparable Key");
  static_assert(!detail::MisdeclaredTotalSteps<Model, State>,
                "carousel::StepBatcher: Model::total_steps must be `std::size_t total_steps(const State&) const`");
  static_assert(!detail::MisdeclaredCost<Model, State>,
                "carousel::StepBatcher: Model::cost must be `std::size_t cost(const State&) const`");
  static_assert(!detail::MisdeclaredValidate<Model, State>,
                "carousel::StepBatcher: Model::validate must be `void validate(State&) const`");

 public:
  using model_type = Model;
  using state_type = State;
  using clock_type = Clock;
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;
  using slot_type = RequestSlot<State, Clock>;
  using iteration_type = Iteration<State, Clock>;
  using observer_type = std::function<void(const iteration_type&)>;

  /// A batcher over `model` (which must outlive it). Throws `std::invalid_argument` for inconsistent options:
  /// `max_batch_size == 0`, `preempt` without `Order::priority` and continuous admission, or `fewest_remaining`
  /// without `Model::total_steps`.
  explicit StepBatcher(Model& model, Options options = {}, Clock clock = {})
      : core_(std::make_shared<Core>(model, checked(options), std::move(clock))) {}

  StepBatcher(const StepBatcher&) = delete;
  StepBatcher& operator=(const StepBatcher&) = delete;

  /// Stops with `StopMode::cancel` if `stop()` was not called: pending tickets fail with `Errc::cancelled`.
  ~StepBatcher() { stop(StopMode::cancel); }

  /// Queues a request; never waits for the model. Thread-safe.
  ///
  /// With `Model::validate`, the request is validated first, on the calling thread; if that throws, the returned
  /// ticket is already failed with `invalid_request` (the model's exception nested). The returned ticket is already
  /// failed with `queue_full` when `Options::max_queue_size` requests are waiting, and with `shut_down` once `stop()`
  /// has begun. All three count as `Stats::rejected`.
  Ticket<State> submit(State state, SubmitOptions<Clock> options = {}) {
    return core_->submit(std::move(state), std::move(options));
  }

  /// Runs one iteration on the calling thread. Returns whether it did anything (stepped, admitted or completed a
  /// request). Tickets of requests that finished in it are ready when it returns — under `Options::concurrent_retire`
  /// when the `retire_once()` that takes them returns. Must not be called while the scheduler thread runs (throws
  /// `std::logic_error`).
  bool step_once() {
    if (thread_.joinable()) throw std::logic_error("carousel::StepBatcher::step_once: the scheduler thread is running");
    return core_->iterate();
  }

  /// `Options::concurrent_retire` without `start()`: runs the retire stage once on the calling thread — one `retire`
  /// call per batch-key group for every finished request waiting — and completes their tickets. May run concurrently
  /// with `step_once()` on another thread. Returns whether any request was waiting (always false without
  /// `concurrent_retire`, whose iterations retire their own). Throws `std::logic_error` while the retire thread runs.
  bool retire_once() {
    if (retire_thread_.joinable())
      throw std::logic_error("carousel::StepBatcher::retire_once: the retire thread is running");
    return core_->retire_stage_once();
  }

  /// Starts the scheduler thread, and under `Options::concurrent_retire` the retire thread. Throws `std::logic_error`
  /// if already started or stopped.
  void start() {
    if (thread_.joinable() || core_->stopping())
      throw std::logic_error("carousel::StepBatcher::start: already started");
    thread_ = std::thread([core = core_.get()] { core->run(); });
    if (core_->concurrent_retire) retire_thread_ = std::thread([core = core_.get()] { core->run_retire(); });
  }

  /// Refuses new submits, then either finishes everything queued and running (`drain`, on the scheduler thread if it
  /// runs, else on the calling thread; static batches run without waiting for `batch_timeout`) or fails it with
  /// `Errc::cancelled` at the next step boundary (`cancel`). Returns when the batcher is idle. Idempotent.
  void stop(StopMode mode = StopMode::drain) {
    core_->request_stop(mode);
    if (thread_.joinable()) thread_.join();
    if (retire_thread_.joinable()) retire_thread_.join();
    core_->finish_stop();
  }

  /// A snapshot of the counters, gauges and histograms. Thread-safe.
  Stats stats() const { return core_->stats(); }

  /// Sets (or clears, with an empty function) the function called on the driving thread before each iteration's
  /// steps with the batch about to be stepped. Thread-safe; takes effect at the next iteration. Exceptions from the
  /// observer are swallowed.
  void set_observer(observer_type observer) { core_->set_observer(std::move(observer)); }

  /// The options in force.
  const Options& options() const noexcept { return core_->options; }

  /// The predicted model time of one iteration with `batch_size` requests, from the measured step-time curve; empty
  /// before the first measurement. Thread-safe.
  std::optional<duration> predicted_step_time(std::size_t batch_size) const {
    return core_->predicted_step_time(batch_size);
  }

 private:
  using Core = detail::BatcherCore<Model, State, Clock>;

  static Options checked(const Options& o) {
    if (o.max_batch_size == 0) throw std::invalid_argument("carousel::Options: max_batch_size must be at least 1");
    if (o.preempt && (o.order != Order::priority || o.admission == Admission::static_batch)) {
      throw std::invalid_argument(
          "carousel::Options: preempt needs order = Order::priority and continuous or cost-aware admission");
    }
    if (o.order == Order::fewest_remaining && !CountingModel<Model, State>) {
      throw std::invalid_argument("carousel::Options: order = Order::fewest_remaining needs Model::total_steps");
    }
    return o;
  }

  std::shared_ptr<Core> core_;
  std::thread thread_;
  std::thread retire_thread_;  // Options::concurrent_retire after start()
};

}  // namespace carousel
