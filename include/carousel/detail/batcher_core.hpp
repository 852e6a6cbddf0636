#pragma once
/// \file carousel/detail/batcher_core.hpp
/// The core of `StepBatcher`: the shared state, `submit`, and the iteration that admits, steps and retires. It
/// coordinates the pieces next to it — the request queue, the batch-key groups, the arrival estimator, the admission
/// policy, the retire stage — and owns the locking. `iterate()` is the five steps of docs/data-flow.md.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "carousel/detail/admission_policy.hpp"
#include "carousel/detail/arrival_estimator.hpp"
#include "carousel/detail/batch_groups.hpp"
#include "carousel/detail/drain_estimate.hpp"
#include "carousel/detail/request.hpp"
#include "carousel/detail/request_control.hpp"
#include "carousel/detail/request_queue.hpp"
#include "carousel/detail/retire_stage.hpp"
#include "carousel/detail/step_time_model.hpp"
#include "carousel/errors.hpp"
#include "carousel/iteration.hpp"
#include "carousel/options.hpp"
#include "carousel/progress.hpp"
#include "carousel/request_status.hpp"
#include "carousel/stats.hpp"
#include "carousel/step_model.hpp"
#include "carousel/submit_options.hpp"
#include "carousel/ticket.hpp"

namespace carousel::detail {

/// Everything a `StepBatcher` shares with its threads and, weakly, with its tickets (for cancellation).
///
/// Locking: `mutex_` guards the queue, the running and held lists, the counters, the curves and the retire stage's
/// hand-off list; `submit`, `cancel_queued` and `stats` take it for short work. The model runs without it. One
/// iteration runs at a time (`drive_mutex_`), one retire stage run at a time (the stage's own mutex).
template <class Model, class State, class Clock>
class BatcherCore final : public CancelTarget, public std::enable_shared_from_this<BatcherCore<Model, State, Clock>> {
 public:
  using request_type = Request<State, Clock>;
  using outcome_type = Outcome<State, Clock>;
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;
  using iteration_type = Iteration<State, Clock>;
  using observer_type = std::function<void(const iteration_type&)>;

  BatcherCore(Model& model, const Options& o, Clock clock)
      : options(o),
        concurrent_retire(o.concurrent_retire && RetiringModel<Model, State>),
        model_(model),
        clock_(std::move(clock)),
        queue_(o.order),
        retire_(model, clock_) {}

  BatcherCore(const BatcherCore&) = delete;
  BatcherCore& operator=(const BatcherCore&) = delete;

  ~BatcherCore() {
    for (request_type* r : queue_)
      delete r;
    for (request_type* r : active_)
      delete r;
    for (request_type* r : held_)
      delete r;
  }

  const Options options;
  const bool concurrent_retire;  // options.concurrent_retire and the model has retire()

  // ---- submit, cancel, observe (any thread) --------------------------------------------------------------------

  Ticket<State> submit(State&& state, SubmitOptions<Clock>&& so) {
    if constexpr (ValidatingModel<Model, State>) {
      try {
        std::as_const(model_).validate(state);
      } catch (...) {
        const std::exception_ptr cause = std::current_exception();
        std::unique_lock lock(mutex_);
        ++counters_.submitted;
        ++counters_.rejected;
        const RequestId id = next_id_++;
        lock.unlock();
        return refused(id, std::move(so), Errc::invalid_request,
                       make_error(Errc::invalid_request, "Model::validate rejected the request", cause));
      }
    }
    std::size_t total = 0, cost = 0;
    [[maybe_unused]] Key key{};
    if constexpr (CountingModel<Model, State>) total = static_cast<std::size_t>(model_.total_steps(state));
    if constexpr (CostedModel<Model, State>) cost = static_cast<std::size_t>(model_.cost(state));
    if constexpr (keyed) key = model_.batch_key(state);
    const time_point now = clock_.now();

    std::unique_lock lock(mutex_);
    const RequestId id = next_id_++;
    ++counters_.submitted;
    if (stop_requested_ || (options.max_queue_size != 0 && queue_.size() >= options.max_queue_size)) {
      const Errc code = stop_requested_ ? Errc::shut_down : Errc::queue_full;
      ++counters_.rejected;
      lock.unlock();
      return refused(id, std::move(so), code,
                     make_error(code, code == Errc::shut_down ? "the batcher is stopping"
                                                              : "the queue holds max_queue_size requests"));
    }
    auto control = std::make_shared<RequestControl<State>>(id);
    control->on_complete = std::move(so.on_complete);
    auto r = std::make_unique<request_type>(id, std::move(state), so.priority, so.deadline, now);
    r->total_steps_ = total;
    r->cost_ = cost;
    r->on_progress_ = std::move(so.on_progress);
    r->seq_ = next_seq_++;
    if constexpr (keyed) r->group_ = keys_.index_of(key);
    r->control_ = control;
    arrivals_.record(now, total);
    control->target = std::weak_ptr<CancelTarget>(this->weak_from_this());
    control->queued_entry = r.get();
    queue_.push(r.release());
    ++generation_;
    lock.unlock();
    wake_.notify_one();
    return Ticket<State>(std::move(control));
  }

  // A ticket that failed at submit (called without the mutex: completion runs on_complete).
  static Ticket<State> refused(RequestId id, SubmitOptions<Clock>&& so, Errc code, std::exception_ptr error) {
    auto control = std::make_shared<RequestControl<State>>(id);
    control->on_complete = std::move(so.on_complete);
    control->complete_error(code, std::move(error));
    return Ticket<State>(std::move(control));
  }

  void cancel_queued(RequestControlBase& control) override {
    std::unique_lock lock(mutex_);
    auto* r = static_cast<request_type*>(control.queued_entry);
    if (r == nullptr) {
      // Running or suspended-and-admitted requests stop at the next step boundary; wake an idle scheduler anyway.
      ++generation_;
      lock.unlock();
      wake_.notify_one();
      return;
    }
    std::unique_ptr<request_type> owned = take_queued(r);
    ++counters_.cancelled;
    ++generation_;
    lock.unlock();
    wake_.notify_one();
    owned->control_->complete_error(Errc::cancelled, make_error(Errc::cancelled, "cancelled while queued"));
  }

  void set_observer(observer_type fn) {
    std::lock_guard lock(mutex_);
    observer_ = std::move(fn);
  }

  Stats stats() const {
    Stats s;
    std::vector<std::size_t> remaining;
    StepTimeModel step_times, retire_times;
    {
      std::lock_guard lock(mutex_);
      s = counters_;
      s.queue_depth = queue_.size();
      s.active = active_.size() + held_.size();
      s.retiring = retire_.size();
      s.mean_batch_size = s.iterations ? static_cast<double>(s.request_steps) / static_cast<double>(s.iterations) : 0.0;
      s.mean_occupancy = s.iterations ? occupancy_sum_ / static_cast<double>(s.iterations) : 0.0;
      remaining.reserve(queue_.size() + active_.size() + held_.size());
      // In the order the batcher takes them: running (admission order), then queued (queue order).
      for (const request_type* r : active_)
        remaining.push_back(steps_left(*r));
      for (const request_type* r : queue_)
        remaining.push_back(steps_left(*r));
      remaining.insert(remaining.end(), held_.size(), 0);  // finished, waiting for a merged retire
      step_times = step_times_;
      retire_times = retire_times_;
    }
    for (std::size_t left : remaining)
      s.remaining_steps += left;
    s.drain_seconds = drain_seconds(
        remaining, options.max_batch_size, [&](std::size_t b) { return step_times.predict(b); },
        [&](std::size_t k) { return retire_times.predict(k); }, !concurrent_retire);
    return s;
  }

  std::optional<duration> predicted_step_time(std::size_t b) const {
    std::lock_guard lock(mutex_);
    const auto t = step_times_.predict(b);
    if (!t) return std::nullopt;
    return std::chrono::round<duration>(std::chrono::duration<double>(*t));
  }

  bool stopping() const {
    std::lock_guard lock(mutex_);
    return stop_requested_;
  }

  // ---- the iteration (the driving thread) ------------------------------------------------------------------------

  /// One iteration: 1. expire and cancel, 2. preempt, 3. admit, 4. step, 5. retire and complete. Returns whether it
  /// did anything.
  bool iterate() {
    std::lock_guard drive(drive_mutex_);
    Pass p(clock_.now());
    {
      std::lock_guard lock(mutex_);
      const bool cancelling = expire_and_cancel(p);  // 1.
      if (!cancelling) {
        std::size_t running_cost = 0;
        for (const request_type* r : active_)
          running_cost += r->cost_;
        if (options.preempt) preempt(running_cost);  // 2.
        choose_joiners(p, running_cost);             // 3. (who joins)
      }
      p.batch = active_;
      p.held = held_;
      p.observer = observer_;
      p.index = counters_.iterations;
    }
    admit(p);                 // 3. (Model::admit)
    step(p);                  // 4.
    retire(p);                // 5. (Model::retire, or hold, or hand off)
    return complete_pass(p);  // 5. (tickets)
  }

  /// The retire stage (concurrent_retire): retires every finished request waiting. Returns whether there was any.
  bool retire_stage_once() {
    std::lock_guard stage(retire_.stage_mutex());
    std::vector<request_type*> retiring;
    {
      std::lock_guard lock(mutex_);
      retiring = retire_.take();
    }
    if (retiring.empty()) return false;
    std::vector<outcome_type> out;
    typename Retirer::Measurements measured;
    retire_.retire(retiring, retire_.scratch(), out, measured);
    {
      std::lock_guard lock(mutex_);
      for (const auto& [k, sec] : measured)
        retire_times_.record(k, sec);
      count_outcomes(out);
      retire_.done();
      ++generation_;
    }
    wake_.notify_all();  // a stopping scheduler thread waits for the stage to empty
    complete(out);
    return true;
  }

  // ---- the threads and stopping ----------------------------------------------------------------------------------

  /// The scheduler thread: iterates while there is work, sleeps on the condition variable otherwise.
  void run() {
    for (;;) {
      std::uint64_t seen = 0;
      {
        std::lock_guard lock(mutex_);
        if (stop_requested_ && idle()) return;
        seen = generation_;
      }
      if (iterate()) continue;
      std::unique_lock lock(mutex_);
      auto changed = [&] { return generation_ != seen || (stop_requested_ && idle()); };
      if (const auto t = next_timed_event()) {
        const auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(*t - clock_.now());
        if (wait.count() > 0) wake_.wait_for(lock, wait, changed);
      } else {
        wake_.wait(lock, changed);
      }
    }
  }

  /// The retire thread: runs the stage whenever finished requests wait, until the batcher stops and is idle.
  void run_retire() {
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        retire_wake_.wait(lock, [&] { return retire_.has_waiting() || (stop_requested_ && loop_idle()); });
        if (!retire_.has_waiting()) return;
      }
      retire_stage_once();
    }
  }

  void request_stop(StopMode mode) {
    {
      std::lock_guard lock(mutex_);
      if (!stop_requested_) {
        stop_requested_ = true;
        stop_mode_ = mode;
      } else if (mode == StopMode::cancel) {
        stop_mode_ = StopMode::cancel;
      }
      ++generation_;
    }
    wake_.notify_all();
    retire_wake_.notify_all();
  }

  /// After the scheduler thread (if any) has ended: drives whatever is left on the calling thread.
  void finish_stop() {
    for (;;) {
      {
        std::lock_guard lock(mutex_);
        if (idle()) return;
      }
      iterate();
      retire_stage_once();
    }
  }

 private:
  static constexpr bool keyed = KeyedModel<Model, State>;
  using Key = typename BatchKeyOf<Model, State>::type;
  using Retirer = RetireStage<Model, State, Clock>;

  // What one iteration carries from step to step. The lists hold requests owned by the batcher; `out` owns those
  // leaving it.
  struct Pass {
    explicit Pass(time_point t) : now(t) {}

    time_point now;
    std::vector<outcome_type> out;        // leaving the batcher: tickets complete at the end
    std::vector<request_type*> joining;   // admitted for the first time: Model::admit
    std::vector<request_type*> batch;     // running: Model::step
    std::vector<request_type*> held;      // finished in an earlier iteration, retire() deferred
    std::vector<request_type*> leaving;   // finished in this iteration: Model::retire
    std::vector<request_type*> retiring;  // held + leaving, retired now or handed off
    std::vector<request_type*> kept;      // held + leaving, held one more iteration (cost-aware retirement)
    typename Retirer::Measurements retire_measured;
    observer_type observer;
    std::uint64_t index = 0;
    std::size_t stepped = 0;
    double model_seconds = 0;
    bool dropped = false;  // some running request failed
    bool handoff = false;  // `retiring` goes to the retire stage
  };

  static double seconds(duration d) { return std::chrono::duration<double>(d).count(); }

  // Calls `fn(group)` once per batch-key group of `requests`, each in the order of `requests`.
  template <class Fn>
  static void for_each_group(const std::vector<request_type*>& requests, Fn&& fn) {
    for_each_request_group<keyed>(requests, fn);
  }

  // Removes a queued request (the caller holds the mutex) and hands it out for completion.
  std::unique_ptr<request_type> take_queued(request_type* r) {
    queue_.erase(r);
    r->control_->queued_entry = nullptr;
    return std::unique_ptr<request_type>(r);
  }

  // Removes the queue's front (the caller holds the mutex) and hands it out.
  std::unique_ptr<request_type> take_front() {
    request_type* r = queue_.pop_front();
    r->control_->queued_entry = nullptr;
    return std::unique_ptr<request_type>(r);
  }

  // 1. Queued requests past their deadline expire; running ones cancelled or past their deadline leave; under
  // StopMode::cancel everything held and queued fails too. Returns whether the batcher is cancelling (no admission).
  bool expire_and_cancel(Pass& p) {
    queue_.expire(p.now, [&](request_type* r) {
      r->control_->queued_entry = nullptr;
      ++counters_.expired;
      fail(p.out, std::unique_ptr<request_type>(r), Errc::deadline_exceeded, "the deadline passed while queued");
    });
    const bool cancel_all = stop_requested_ && stop_mode_ == StopMode::cancel;
    std::erase_if(active_, [&](request_type* r) {
      if (cancel_all || r->control_->cancel_requested()) {
        ++counters_.cancelled;
        fail(p.out, std::unique_ptr<request_type>(r), Errc::cancelled, "cancelled while running");
        return true;
      }
      if (r->deadline_ && *r->deadline_ <= p.now) {
        ++counters_.expired;
        fail(p.out, std::unique_ptr<request_type>(r), Errc::deadline_exceeded, "the deadline passed while running");
        return true;
      }
      return false;
    });
    if (!cancel_all) return false;
    for (request_type* r : held_) {
      ++counters_.cancelled;
      fail(p.out, std::unique_ptr<request_type>(r), Errc::cancelled, "the batcher was stopped");
    }
    held_.clear();
    while (!queue_.empty()) {
      ++counters_.cancelled;
      fail(p.out, take_front(), Errc::cancelled, "the batcher was stopped");
    }
    return true;
  }

  // 2. While a waiting request does not fit, suspends the running request the policy names (strictly lower
  // priority); the suspended request keeps its state and goes back to the queue.
  void preempt(std::size_t& running_cost) {
    while (!queue_.empty() && !active_.empty()) {
      const request_type* waiting = queue_.front();  // highest priority (preempt implies Order::priority)
      if (policy::fits(options, active_.size(), running_cost, waiting->cost_)) return;
      preemption_view_.clear();
      for (const request_type* r : active_)
        preemption_view_.push_back({r->priority_, r->admit_seq_});
      const auto victim = policy::preemption_victim(preemption_view_, waiting->priority_);
      if (!victim) return;
      request_type* r = active_[*victim];
      active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(*victim));
      running_cost -= r->cost_;
      ++counters_.preempted;
      r->control_->set_status(RequestStatus::suspended);
      r->control_->queued_entry = r;
      queue_.push(r);
    }
  }

  // Steps left as Stats::remaining_steps counts them: by total_steps, or 1 for a model without it. A running
  // request's steps_done is read while the driver may advance it (a relaxed atomic: the value is a snapshot).
  static std::size_t steps_left(const request_type& r) {
    if constexpr (CountingModel<Model, State>) {
      return r.remaining_steps();
    } else {
      return 1;
    }
  }

  // Steps left as cost-aware admission counts them: at least 1 (unknown counts as 1).
  static std::size_t counted_remaining(const request_type& r) {
    const std::size_t left = r.remaining_steps();
    return left ? left : 1;
  }

  // 3. Moves the waiting requests that fit (and, under cost-aware admission, pay) from the queue to the running
  // batch, in queue order; first-timers go to `p.joining`. Static batching admits only into an empty batch that is
  // full or timed out. A first-timer whose deadline cannot be met at the measured step time is refused.
  void choose_joiners(Pass& p, std::size_t running_cost) {
    if (options.admission == Admission::static_batch && !(active_.empty() && static_batch_ready(p.now))) return;
    std::optional<std::size_t> target;  // cost_aware: the load-aware batch size, computed when first needed
    bool have_remaining = false;        // cost_aware: running_remaining_ mirrors active_
    auto step_curve = [this](std::size_t b) { return step_times_.predict(b); };
    while (!queue_.empty()) {
      request_type* r = queue_.front();
      if (!policy::fits(options, active_.size(), running_cost, r->cost_)) break;
      if (options.admission == Admission::cost_aware) {
        if (!have_remaining) {
          running_remaining_.clear();
          for (const request_type* a : active_)
            running_remaining_.push_back(counted_remaining(*a));
          have_remaining = true;
        }
        if (!policy::worth_joining(counted_remaining(*r), running_remaining_, queue_.size() - 1, step_curve)) {
          if (!target) {
            target = policy::target_batch_size(arrivals_.mean_gap(), arrivals_.mean_steps(), options.max_batch_size,
                                               step_curve, [this](std::size_t b) { return retire_time(b); });
          }
          if (active_.size() >= *target) break;
        }
      }
      std::unique_ptr<request_type> owned = take_front();
      if (!r->admitted_ && r->deadline_ && r->remaining_steps() > 0 &&
          !policy::deadline_reachable(step_times_.predict(active_.size() + 1), r->remaining_steps(),
                                      seconds(*r->deadline_ - p.now))) {
        ++counters_.rejected;
        fail(p.out, std::move(owned), Errc::deadline_unreachable,
             "remaining steps at the measured step time cannot meet the deadline");
        continue;
      }
      owned.release();
      running_cost += r->cost_;
      if (!r->admitted_) {
        r->admit_seq_ = next_admit_seq_++;
        r->admitted_at_ = p.now;
        ++counters_.admitted;
        counters_.queue_wait.record(seconds(p.now - r->submitted_at_));
        p.joining.push_back(r);
      }
      r->control_->set_status(RequestStatus::running);
      insert_active(r);
      if (have_remaining) running_remaining_.push_back(counted_remaining(*r));
    }
  }

  // Whether static batching may start a batch now (the caller holds the mutex; nothing is running).
  bool static_batch_ready(time_point now) const {
    if (queue_.empty()) return false;
    if (stop_requested_ || queue_.size() >= options.max_batch_size) return true;
    return queue_.oldest_submit() + options.batch_timeout <= now;
  }

  // Keeps active_ in admission order (a resumed request goes back to its place).
  void insert_active(request_type* r) {
    auto pos = std::upper_bound(active_.begin(), active_.end(), r->admit_seq_,
                                [](std::uint64_t seq, const request_type* a) { return seq < a->admit_seq_; });
    active_.insert(pos, r);
  }

  // The retire() time of k requests as the load-aware batch size counts it: none when the retire stage runs it off
  // the loop; beyond the largest merge measured, no gain from merging (the caller holds the mutex).
  std::optional<double> retire_time(std::size_t k) const {
    if (concurrent_retire) return std::nullopt;
    return retire_times_.predict_cautious(k);
  }

  // Fails every request of `group` with model_error (the hook named `hook` threw `cause`); they leave at the end.
  void drop(Pass& p, const std::vector<request_type*>& group, const char* hook, std::exception_ptr cause) {
    p.dropped = true;
    for (request_type* r : group) {
      r->leaving_ = true;
      fail(p.out, std::unique_ptr<request_type>(r), Errc::model_error, std::string("Model::") + hook + " threw", cause);
    }
  }

  // A request finished its steps: it leaves at the end of the iteration, after retire().
  static void finish(Pass& p, request_type* r) {
    r->leaving_ = true;
    p.leaving.push_back(r);
  }

  // 3. Model::admit for the first-timers, once per batch-key group; a joiner already finished (zero steps) leaves
  // without a step.
  void admit(Pass& p) {
    if (p.joining.empty()) return;
    if constexpr (AdmittingModel<Model, State>) {
      for_each_group(p.joining, [&](const std::vector<request_type*>& group) {
        try {
          model_.admit(states_of(group, states_));
          for (request_type* r : group)
            r->admitted_ = true;
        } catch (...) {
          drop(p, group, "admit", std::current_exception());
        }
      });
    } else {
      for (request_type* r : p.joining)
        r->admitted_ = true;
    }
    for (request_type* r : p.joining) {
      if (r->leaving_) continue;
      try {
        if (model_.finished(std::as_const(r->state_))) finish(p, r);
      } catch (...) {
        drop(p, {r}, "finished", std::current_exception());
      }
    }
    std::erase_if(p.batch, [](const request_type* r) { return r->leaving_; });
  }

  // 4. The observer sees the batch; Model::step once per batch-key group, each in admission order; each request's
  // progress, then whether it finished.
  void step(Pass& p) {
    p.stepped = p.batch.size();
    if (p.batch.empty()) return;
    if (p.observer) {
      view_.assign(p.batch.begin(), p.batch.end());
      try {
        p.observer(
            iteration_type{p.index, p.now, std::span<const RequestSlot<State, Clock>* const>(view_), p.joining.size()});
      } catch (...) {  // an observer must not stop the loop
      }
    }
    for_each_group(p.batch, [&](const std::vector<request_type*>& group) {
      const time_point t0 = clock_.now();
      try {
        model_.step(states_of(group, states_));
      } catch (...) {
        p.model_seconds += seconds(clock_.now() - t0);
        drop(p, group, "step", std::current_exception());
        return;
      }
      p.model_seconds += seconds(clock_.now() - t0);
      for (request_type* r : group) {
        r->count_step();
        try {
          if (r->on_progress_) r->on_progress_(Progress{r->control_->id(), r->steps_done(), r->total_steps_});
          if (model_.finished(std::as_const(r->state_))) finish(p, r);
        } catch (...) {
          drop(p, {r}, "finished or on_progress", std::current_exception());
        }
      }
    });
  }

  // 5. The requests that finished in this iteration, with those held from earlier ones, retire together — unless
  // cost-aware retirement holds a batch-key group of them one more iteration, or the retire stage takes them.
  void retire(Pass& p) {
    if (p.held.empty() && p.leaving.empty()) return;
    p.retiring = p.held;
    p.retiring.insert(p.retiring.end(), p.leaving.begin(), p.leaving.end());
    if constexpr (RetiringModel<Model, State>) {
      if (options.admission == Admission::cost_aware && !concurrent_retire) hold_for_merge(p);
    }
    p.handoff = concurrent_retire;
    if (!p.handoff && !p.retiring.empty()) retire_.retire(p.retiring, states_, p.out, p.retire_measured);
  }

  // Cost-aware retirement: moves from `p.retiring` to `p.kept` each batch-key group that the policy holds for the
  // next finishers of the same group (retire() is called per group, so only they can merge with it). A hold is kept
  // until those finishers arrive: a group of held requests only, with no new finisher, stays held while a request of
  // its group runs with steps left — the wait already spent is only repaid by the merge — and retires at once when
  // none does (nothing left to merge with).
  void hold_for_merge(Pass& p) {
    std::size_t running = 0;
    for (const request_type* r : p.batch)
      running += !r->leaving_;
    if (running == 0) return;
    std::lock_guard lock(mutex_);
    if (stop_requested_) return;
    const std::size_t waiting = queue_.size();
    for_each_group(p.retiring, [&](const std::vector<request_type*>& group) {
      hold_remaining_.clear();
      for (const request_type* r : p.batch) {
        if (!r->leaving_ && r->group_ == group.front()->group_) hold_remaining_.push_back(r->remaining_steps());
      }
      const bool only_held =
          std::all_of(group.begin(), group.end(), [](const request_type* r) { return r->awaiting_merge_; });
      const bool hold = only_held ? std::any_of(hold_remaining_.begin(), hold_remaining_.end(),
                                                [](std::size_t left) { return left > 0; })
                                  : policy::hold_retirement(
                                        group.size(), hold_remaining_, running, waiting,
                                        [this](std::size_t b) { return step_times_.predict(b); },
                                        [this](std::size_t k) { return retire_times_.predict(k); });
      if (hold) {
        for (request_type* r : group)
          r->kept_ = r->awaiting_merge_ = true;
      }
    });
    for (request_type* r : p.retiring) {
      if (r->kept_) p.kept.push_back(r);
    }
    if (p.kept.empty()) return;
    std::erase_if(p.retiring, [](request_type* r) {
      if (!r->kept_) return false;
      r->kept_ = false;
      return true;
    });
  }

  // 5. Publishes the iteration (running list, held list, hand-off, counters, curves) and completes the tickets of
  // the requests that left. Returns whether the iteration did anything.
  bool complete_pass(Pass& p) {
    const bool did_work = !p.out.empty() || !p.joining.empty() || p.stepped != 0 || !p.kept.empty() || p.handoff;
    bool wake_stage = false;
    {
      std::lock_guard lock(mutex_);
      if (p.dropped || !p.leaving.empty()) std::erase_if(active_, [](const request_type* r) { return r->leaving_; });
      held_ = p.kept;
      if (p.handoff) retire_.hand_off(p.retiring);  // the stage sorts them
      wake_stage = concurrent_retire && (p.handoff || stop_requested_);
      for (const auto& [k, sec] : p.retire_measured)
        retire_times_.record(k, sec);
      if (p.stepped != 0) {
        ++counters_.iterations;
        counters_.request_steps += p.stepped;
        occupancy_sum_ += static_cast<double>(p.stepped) / static_cast<double>(options.max_batch_size);
        counters_.step_time.record(p.model_seconds);
        step_times_.record(p.stepped, p.model_seconds);
      }
      count_outcomes(p.out);
    }
    if (wake_stage) retire_wake_.notify_one();
    complete(p.out);
    return did_work;
  }

  // Counts `out` (the caller holds the mutex).
  void count_outcomes(const std::vector<outcome_type>& out) {
    if (out.empty()) return;
    const time_point done = clock_.now();
    for (const outcome_type& o : out) {
      if (!o.code) {
        ++counters_.completed;
        counters_.latency.record(seconds(done - o.request->submitted_at_));
      } else if (*o.code == Errc::model_error) {
        ++counters_.failed;
      }
    }
  }

  // When the scheduler thread must look again even if nothing is submitted (the caller holds the mutex).
  std::optional<time_point> next_timed_event() const {
    std::optional<time_point> t = queue_.earliest_deadline();
    if (options.admission == Admission::static_batch && active_.empty() && !queue_.empty()) {
      const time_point fill = queue_.oldest_submit() + options.batch_timeout;
      if (!t || fill < *t) t = fill;
    }
    return t;
  }

  // Nothing queued, running or held (the caller holds the mutex).
  bool loop_idle() const { return queue_.empty() && active_.empty() && held_.empty(); }

  // Nothing queued, running, held or retiring (the caller holds the mutex).
  bool idle() const { return loop_idle() && retire_.size() == 0; }

  Model& model_;
  Clock clock_;

  mutable std::mutex mutex_;  // guards everything below up to drive_mutex_, except what the comments say
  std::condition_variable wake_;
  RequestQueue<request_type> queue_;   // waiting (new or suspended)
  std::vector<request_type*> active_;  // running, in admission order; written only by the driver, under the mutex
  std::vector<request_type*> held_;    // finished, retire() deferred (cost_aware); written only by the driver
  KeyRegistry<Key> keys_;              // request_type::group_ indexes it
  std::uint64_t next_id_ = 1;
  std::uint64_t next_seq_ = 0;
  std::uint64_t next_admit_seq_ = 0;
  std::uint64_t generation_ = 0;  // bumped on every event that may let the scheduler thread do work
  bool stop_requested_ = false;
  StopMode stop_mode_ = StopMode::drain;
  observer_type observer_;
  Stats counters_;
  double occupancy_sum_ = 0;
  StepTimeModel step_times_;    // model time of an iteration by batch size
  StepTimeModel retire_times_;  // time of a retire() call by number of leavers
  ArrivalEstimator<time_point> arrivals_;
  Retirer retire_;  // its hand-off list is guarded by mutex_
  std::condition_variable retire_wake_;

  std::mutex drive_mutex_;  // one iteration at a time; guards the driver's scratch below
  std::vector<State*> states_;
  std::vector<const RequestSlot<State, Clock>*> view_;
  std::vector<std::size_t> running_remaining_;  // cost_aware admission (also under mutex_)
  std::vector<std::size_t> hold_remaining_;
  std::vector<policy::RunningRequest> preemption_view_;  // (also under mutex_)
};

}  // namespace carousel::detail
