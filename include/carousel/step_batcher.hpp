#pragma once
/// \file carousel/step_batcher.hpp
/// StepBatcher: join-anytime, leave-on-finish batching of an iterative model.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "carousel/detail/request_control.hpp"
#include "carousel/detail/step_time_model.hpp"
#include "carousel/errors.hpp"
#include "carousel/iteration.hpp"
#include "carousel/options.hpp"
#include "carousel/progress.hpp"
#include "carousel/request_slot.hpp"
#include "carousel/request_status.hpp"
#include "carousel/stats.hpp"
#include "carousel/step_model.hpp"
#include "carousel/submit_options.hpp"
#include "carousel/ticket.hpp"

namespace carousel {

namespace detail {

struct NoKey {
  bool operator==(const NoKey&) const = default;
};

template <class Model, class State>
struct BatchKeyOf {
  using type = NoKey;
};

template <class Model, class State>
requires KeyedModel<Model, State>
struct BatchKeyOf<Model, State> {
  using type = std::remove_cvref_t<decltype(std::declval<const Model&>().batch_key(std::declval<const State&>()))>;
};

}  // namespace detail

/// Runs one step of every admitted request per iteration, as one batch: a new request joins at the next step boundary,
/// a finished one leaves at once.
///
/// An iteration: expire and cancel what ran out, admit the waiting requests that fit (calling `Model::admit` for the
/// first-timers), step every running request once (one `Model::step` call per batch-key group, each in admission
/// order), then retire the finished ones (`Model::retire`) and complete their tickets. Drive it with `step_once()` on
/// your own thread, or let `start()` run a scheduler thread that sleeps on a condition variable whenever there is
/// nothing to do. With `Options::concurrent_retire` the finished requests go to a retire stage instead (a second
/// thread after `start()`, or `retire_once()`), and the next iteration does not wait for their `retire`.
///
/// Thread-safety: `submit`, `stats`, `set_observer` and `Ticket` methods may be called from any thread at any time.
/// The model is only called from the driving thread (the scheduler thread, or whoever calls `step_once`), except
/// `batch_key`, `total_steps` and `cost`, which are called from `submit`, and `retire` under
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
      : core_(std::make_shared<Core>(model, validate(options), std::move(clock))) {}

  StepBatcher(const StepBatcher&) = delete;
  StepBatcher& operator=(const StepBatcher&) = delete;

  /// Stops with `StopMode::cancel` if `stop()` was not called: pending tickets fail with `Errc::cancelled`.
  ~StepBatcher() { stop(StopMode::cancel); }

  /// Queues a request; never waits for the model. Thread-safe.
  ///
  /// The returned ticket is already failed with `queue_full` when `Options::max_queue_size` requests are waiting, and
  /// with `shut_down` once `stop()` has begun.
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
    return core_->retire_stage();
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
  using Slot = slot_type;
  using Key = typename detail::BatchKeyOf<Model, State>::type;
  static constexpr bool keyed = KeyedModel<Model, State>;

  static Options validate(const Options& o) {
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

  static double seconds(duration d) { return std::chrono::duration<double>(d).count(); }

  // Orders waiting requests; the first element is admitted first.
  struct QueueLess {
    Order order;
    bool operator()(const Slot* a, const Slot* b) const {
      switch (order) {
        case Order::fifo:
          break;
        case Order::priority:
          if (a->priority_ != b->priority_) return a->priority_ > b->priority_;
          break;
        case Order::earliest_deadline:
          if (a->deadline_ != b->deadline_) {
            if (!a->deadline_) return false;
            if (!b->deadline_) return true;
            return *a->deadline_ < *b->deadline_;
          }
          break;
        case Order::fewest_remaining: {
          const auto ra = a->total_steps_ - std::min(a->steps_done_, a->total_steps_);
          const auto rb = b->total_steps_ - std::min(b->steps_done_, b->total_steps_);
          if (ra != rb) return ra < rb;
          break;
        }
      }
      return a->seq_ < b->seq_;
    }
  };

  // A request leaving the batcher this iteration and how its ticket completes.
  struct Outcome {
    std::unique_ptr<Slot> slot;
    std::optional<Errc> code;  // empty: success
    std::exception_ptr error;
  };

  // Everything tickets may reach (for cancellation) lives here, shared with them weakly.
  struct Core final : detail::CancelTarget, std::enable_shared_from_this<Core> {
    Core(Model& m, Options o, Clock c)
        : model(m),
          options(o),
          concurrent_retire(o.concurrent_retire && RetiringModel<Model, State>),
          clock(std::move(c)),
          queue(QueueLess{o.order}) {}

    ~Core() {
      for (Slot* s : queue)
        delete s;
      for (Slot* s : active)
        delete s;
      for (Slot* s : held)
        delete s;
      for (Slot* s : to_retire)
        delete s;
    }

    Model& model;
    const Options options;
    const bool concurrent_retire;  // options.concurrent_retire and the model has retire()
    Clock clock;

    mutable std::mutex mutex;  // guards everything below except what the comments say
    std::condition_variable wake;
    std::set<Slot*, QueueLess> queue;  // waiting (new or suspended)
    std::vector<Slot*> active;         // running, in admission order; written only by the driver, under the mutex
    std::vector<Key> keys;             // key registry: Slot::group_ indexes it
    std::uint64_t next_id = 1;
    std::uint64_t next_seq = 0;
    std::uint64_t next_admit_seq = 0;
    std::uint64_t generation = 0;  // bumped on every event that may let the scheduler thread do work
    std::optional<time_point> earliest_queued_deadline;  // a lower bound
    bool stop_requested = false;
    StopMode stop_mode = StopMode::drain;
    observer_type observer;
    Stats counters;
    double occupancy_sum = 0;
    detail::StepTimeModel step_times;    // model time of an iteration by batch size
    detail::StepTimeModel retire_times;  // time of a retire() call by number of leavers
    std::vector<Slot*> held;  // finished, retire() deferred (cost_aware); written only by the driver, under the mutex
    std::optional<time_point> last_submit;
    double mean_gap = -1;    // running mean of the time between submits, seconds
    double mean_steps = -1;  // running mean of total_steps at submit
    std::uint64_t gaps_seen = 0;
    std::mutex drive_mutex;  // one iteration at a time

    // The retire stage (concurrent_retire).
    std::vector<Slot*> to_retire;  // finished, waiting for the retire stage (which sorts them into admission order)
    std::size_t retiring_now = 0;  // in the stage's current retire() calls
    std::condition_variable retire_wake;
    std::mutex retire_mutex;  // one retire stage at a time

    // Scratch of the driver (guarded by drive_mutex) and of the retire stage (guarded by retire_mutex).
    std::vector<State*> states;
    std::vector<const Slot*> view;
    std::vector<State*> retire_states;

    bool stopping() const {
      std::lock_guard lock(mutex);
      return stop_requested;
    }

    Ticket<State> submit(State&& state, SubmitOptions<Clock>&& so) {
      std::size_t total = 0, cost = 0;
      [[maybe_unused]] Key key{};
      if constexpr (CountingModel<Model, State>) total = static_cast<std::size_t>(model.total_steps(state));
      if constexpr (CostedModel<Model, State>) cost = static_cast<std::size_t>(model.cost(state));
      if constexpr (keyed) key = model.batch_key(state);
      const time_point now = clock.now();

      std::unique_lock lock(mutex);
      const RequestId id = next_id++;
      auto control = std::make_shared<detail::RequestControl<State>>(id);
      control->on_complete = std::move(so.on_complete);
      ++counters.submitted;
      if (stop_requested || (options.max_queue_size != 0 && queue.size() >= options.max_queue_size)) {
        const Errc code = stop_requested ? Errc::shut_down : Errc::queue_full;
        ++counters.rejected;
        lock.unlock();
        control->complete_error(
            code, detail::make_error(code, code == Errc::shut_down ? "the batcher is stopping"
                                                                   : "the queue holds max_queue_size requests"));
        return Ticket<State>(std::move(control));
      }
      auto slot = std::unique_ptr<Slot>(new Slot(id, std::move(state), so.priority, so.deadline, now));
      slot->total_steps_ = total;
      slot->cost_ = cost;
      slot->on_progress_ = std::move(so.on_progress);
      slot->seq_ = next_seq++;
      if constexpr (keyed) slot->group_ = key_index(key);
      slot->control_ = control;
      // Running means (plain averages until there are 1/arrival_weight samples, then exponential).
      if (last_submit) {
        ++gaps_seen;
        const double w = std::max(arrival_weight, 1.0 / static_cast<double>(gaps_seen));
        mean_gap = mean_gap < 0 ? seconds(now - *last_submit) : mean_gap + w * (seconds(now - *last_submit) - mean_gap);
      }
      last_submit = now;
      const double steps = total ? static_cast<double>(total) : 1.0;
      const double ws = std::max(arrival_weight, 1.0 / static_cast<double>(next_seq));
      mean_steps = mean_steps < 0 ? steps : mean_steps + ws * (steps - mean_steps);
      control->target = std::weak_ptr<detail::CancelTarget>(this->weak_from_this());
      control->queued_entry = slot.get();
      if (slot->deadline_ && (!earliest_queued_deadline || *slot->deadline_ < *earliest_queued_deadline)) {
        earliest_queued_deadline = slot->deadline_;
      }
      queue.insert(slot.release());
      ++generation;
      lock.unlock();
      wake.notify_one();
      return Ticket<State>(std::move(control));
    }

    static constexpr double arrival_weight = 0.05;

    std::size_t key_index(const Key& key) {
      for (std::size_t i = 0; i < keys.size(); ++i) {
        if (keys[i] == key) return i;
      }
      keys.push_back(key);
      return keys.size() - 1;
    }

    void cancel_queued(detail::RequestControlBase& control) override {
      std::unique_lock lock(mutex);
      auto* slot = static_cast<Slot*>(control.queued_entry);
      if (slot == nullptr) {
        // Running or suspended-and-admitted requests stop at the next step boundary; wake an idle scheduler anyway.
        ++generation;
        lock.unlock();
        wake.notify_one();
        return;
      }
      queue.erase(slot);
      control.queued_entry = nullptr;
      ++counters.cancelled;
      ++generation;
      std::unique_ptr<Slot> owned(slot);
      lock.unlock();
      wake.notify_one();
      owned->control_->complete_error(Errc::cancelled, detail::make_error(Errc::cancelled, "cancelled while queued"));
    }

    void set_observer(observer_type fn) {
      std::lock_guard lock(mutex);
      observer = std::move(fn);
    }

    Stats stats() const {
      std::lock_guard lock(mutex);
      Stats s = counters;
      s.queue_depth = queue.size();
      s.active = active.size() + held.size();
      s.retiring = to_retire.size() + retiring_now;
      s.mean_batch_size = s.iterations ? static_cast<double>(s.request_steps) / static_cast<double>(s.iterations) : 0.0;
      s.mean_occupancy = s.iterations ? occupancy_sum / static_cast<double>(s.iterations) : 0.0;
      return s;
    }

    std::optional<duration> predicted_step_time(std::size_t b) const {
      std::lock_guard lock(mutex);
      const auto t = step_times.predict(b);
      if (!t) return std::nullopt;
      return std::chrono::round<duration>(std::chrono::duration<double>(*t));
    }

    // ---- the iteration ---------------------------------------------------------------------------------------------

    // Removes `slot` from the queue (the caller holds the mutex) and hands it out for completion.
    std::unique_ptr<Slot> take_queued(Slot* slot) {
      queue.erase(slot);
      slot->control_->queued_entry = nullptr;
      return std::unique_ptr<Slot>(slot);
    }

    static void fail(std::vector<Outcome>& out, std::unique_ptr<Slot> slot, Errc code, const std::string& what,
                     std::exception_ptr cause = nullptr) {
      out.push_back(Outcome{std::move(slot), code, detail::make_error(code, what, std::move(cause))});
    }

    // Whether static batching may start a batch now (the caller holds the mutex; nothing is running).
    bool static_batch_ready(time_point now) const {
      if (queue.empty()) return false;
      if (stop_requested || queue.size() >= options.max_batch_size) return true;
      return oldest_queued_submit() + options.batch_timeout <= now;
    }

    time_point oldest_queued_submit() const {
      time_point oldest = time_point::max();
      for (const Slot* s : queue)
        oldest = std::min(oldest, s->submitted_at_);
      return oldest;
    }

    bool fits(const Slot& s, std::size_t active_cost) const {
      if (active.size() >= options.max_batch_size) return false;
      if (options.max_batch_cost == 0 || active.empty()) return true;
      return active_cost + s.cost_ <= options.max_batch_cost;
    }

    void insert_active(Slot* s) {
      auto pos = std::upper_bound(active.begin(), active.end(), s->admit_seq_,
                                  [](std::uint64_t seq, const Slot* a) { return seq < a->admit_seq_; });
      active.insert(pos, s);
    }

    // Expiry, cancellation, preemption and admission, under the mutex. Returns the first-time joiners.
    void prepare(time_point now, std::vector<Outcome>& out, std::vector<Slot*>& joining) {
      if (earliest_queued_deadline && *earliest_queued_deadline <= now) {
        earliest_queued_deadline.reset();
        for (auto it = queue.begin(); it != queue.end();) {
          Slot* s = *it++;
          if (!s->deadline_) continue;
          if (*s->deadline_ <= now) {
            ++counters.expired;
            fail(out, take_queued(s), Errc::deadline_exceeded, "the deadline passed while queued");
          } else if (!earliest_queued_deadline || *s->deadline_ < *earliest_queued_deadline) {
            earliest_queued_deadline = s->deadline_;
          }
        }
      }

      const bool cancel_all = stop_requested && stop_mode == StopMode::cancel;
      std::erase_if(active, [&](Slot* s) {
        if (cancel_all || s->control_->cancel_requested()) {
          ++counters.cancelled;
          fail(out, std::unique_ptr<Slot>(s), Errc::cancelled, "cancelled while running");
          return true;
        }
        if (s->deadline_ && *s->deadline_ <= now) {
          ++counters.expired;
          fail(out, std::unique_ptr<Slot>(s), Errc::deadline_exceeded, "the deadline passed while running");
          return true;
        }
        return false;
      });
      if (cancel_all) {
        for (Slot* s : held) {
          ++counters.cancelled;
          fail(out, std::unique_ptr<Slot>(s), Errc::cancelled, "the batcher was stopped");
        }
        held.clear();
        while (!queue.empty()) {
          ++counters.cancelled;
          fail(out, take_queued(*queue.begin()), Errc::cancelled, "the batcher was stopped");
        }
        return;
      }

      std::size_t active_cost = 0;
      for (const Slot* s : active)
        active_cost += s->cost_;

      if (options.preempt) preempt(active_cost);

      if (options.admission == Admission::static_batch && !(active.empty() && static_batch_ready(now))) return;

      std::optional<std::size_t> target;  // cost_aware: the load-aware batch size, computed when first needed
      while (!queue.empty()) {
        Slot* s = *queue.begin();
        if (!fits(*s, active_cost)) break;
        if (options.admission == Admission::cost_aware && !worth_joining(*s)) {
          if (!target) target = target_batch_size();
          if (active.size() >= *target) break;
        }
        auto owned = take_queued(s);
        if (!s->admitted_ && s->deadline_ && s->total_steps_ > s->steps_done_) {
          if (const auto t = step_times.predict(active.size() + 1)) {
            const double need = *t * static_cast<double>(s->total_steps_ - s->steps_done_);
            if (need > seconds(*s->deadline_ - now)) {
              ++counters.rejected;
              fail(out, std::move(owned), Errc::deadline_unreachable,
                   "remaining steps at the measured step time cannot meet the deadline");
              continue;
            }
          }
        }
        owned.release();
        active_cost += s->cost_;
        if (!s->admitted_) {
          s->admit_seq_ = next_admit_seq++;
          s->admitted_at_ = now;
          ++counters.admitted;
          counters.queue_wait.record(seconds(now - s->submitted_at_));
          joining.push_back(s);
        }
        s->control_->set_status(RequestStatus::running);
        insert_active(s);
      }
    }

    // Admission::cost_aware: whether adding `s` (still at the head of the queue) to the running batch pays.
    bool worth_joining(const Slot& s) const {
      if (active.empty()) return true;
      const std::size_t b = active.size();
      const auto tb = step_times.predict(b);
      const auto tb1 = step_times.predict(b + 1);
      if (!tb || !tb1) return true;  // nothing measured yet: explore
      const double c = *tb1 - *tb;
      if (c <= 0) return true;
      const double a = std::max(0.0, *tb1 - static_cast<double>(b + 1) * c);
      auto remaining = [](const Slot& x) {
        return x.total_steps_ > x.steps_done_ ? static_cast<double>(x.total_steps_ - x.steps_done_) : 1.0;
      };
      const double r = remaining(s);
      double longest = 0, overlap = 0;
      for (const Slot* j : active) {
        const double rj = remaining(*j);
        longest = std::max(longest, rj);
        overlap += std::min(rj, r);
      }
      const auto behind = static_cast<double>(queue.size() - 1);
      return a * std::min(longest, r) * (1 + behind) >= c * overlap;
    }

    // Admission::cost_aware: the batch size that minimises the predicted latency at the measured arrival rate,
    // n*t(b) + W_q(b), with W_q the M/M/1 wait at service rate b / (n*t(b) + d(b)) (n: mean steps, d: retire time).
    // 0 while the arrival rate is unknown; max_batch_size when no size keeps up with the arrivals.
    std::size_t target_batch_size() const {
      if (mean_gap <= 0 || mean_steps <= 0) return 0;
      const double lambda = 1.0 / mean_gap;
      double best = std::numeric_limits<double>::infinity();
      std::size_t best_b = options.max_batch_size;
      for (std::size_t b = 1; b <= options.max_batch_size; ++b) {
        const auto t = step_times.predict(b);
        if (!t) return 0;
        const double service = mean_steps * *t + (concurrent_retire ? 0.0 : retire_times.predict(b).value_or(0.0));
        const double mu = static_cast<double>(b) / service;
        if (lambda >= mu) continue;
        const double latency = mean_steps * *t + (lambda / mu) / (mu - lambda);
        if (latency < best) {
          best = latency;
          best_b = b;
        }
      }
      return best_b;
    }

    // Admission::cost_aware: whether to hold the finished requests (k in all, with those held before) until the next
    // running requests finish (m of them, r iterations from now) so that one retire() serves them all. Merging saves
    // d(k) + d(m) - d(k+m) of loop time for every request still running or waiting, and costs each held request r
    // iterations of t(b). The decision is taken again every iteration.
    bool hold_retirement(std::size_t k, const std::vector<Slot*>& running) const {
      if (options.admission != Admission::cost_aware || concurrent_retire || k == 0 || running.empty()) return false;
      std::size_t r = std::numeric_limits<std::size_t>::max(), m = 0;
      for (const Slot* s : running) {
        if (s->total_steps_ <= s->steps_done_) continue;
        const std::size_t left = s->total_steps_ - s->steps_done_;
        if (left < r) {
          r = left;
          m = 0;
        }
        m += left == r;
      }
      if (m == 0) return false;
      std::lock_guard lock(mutex);
      if (stop_requested) return false;
      const auto dk = retire_times.predict(k), dm = retire_times.predict(m), dkm = retire_times.predict(k + m);
      const auto t = step_times.predict(running.size());
      if (!dk || !dm || !dkm || !t) return false;
      const double saving = *dk + *dm - *dkm;
      const auto others = static_cast<double>(running.size() + queue.size());
      return saving * others > static_cast<double>(k) * static_cast<double>(r) * *t;
    }

    // Suspends the lowest-priority running requests while a strictly higher-priority one waits and does not fit.
    void preempt(std::size_t& active_cost) {
      while (!queue.empty() && !active.empty()) {
        Slot* waiting = *queue.begin();  // highest priority (preempt implies Order::priority)
        if (fits(*waiting, active_cost)) return;
        // The victim: lowest priority, and among those the most recently admitted.
        auto victim = std::min_element(active.begin(), active.end(), [](const Slot* a, const Slot* b) {
          if (a->priority_ != b->priority_) return a->priority_ < b->priority_;
          return a->admit_seq_ > b->admit_seq_;
        });
        if ((*victim)->priority_ >= waiting->priority_) return;
        Slot* s = *victim;
        active.erase(victim);
        active_cost -= s->cost_;
        ++counters.preempted;
        s->control_->set_status(RequestStatus::suspended);
        s->control_->queued_entry = s;
        queue.insert(s);
      }
    }

    // Calls `fn(group)` for each batch-key group of `slots`, each in the order of `slots`.
    template <class Fn>
    void for_each_group(const std::vector<Slot*>& slots, Fn&& fn) {
      if constexpr (!keyed) {
        fn(slots);
      } else {
        std::vector<std::size_t> seen;
        for (const Slot* s : slots) {
          if (std::find(seen.begin(), seen.end(), s->group_) == seen.end()) seen.push_back(s->group_);
        }
        if (seen.size() == 1) return fn(slots);
        std::vector<Slot*> group;
        for (std::size_t g : seen) {
          group.clear();
          for (Slot* s : slots) {
            if (s->group_ == g) group.push_back(s);
          }
          fn(group);
        }
      }
    }

    static std::span<State* const> states_of(const std::vector<Slot*>& slots, std::vector<State*>& scratch) {
      scratch.clear();
      for (Slot* s : slots)
        scratch.push_back(&s->state_);
      return scratch;
    }

    // Calls retire() for `retiring` (sorted here into admission order so retire() sees them oldest first), one call
    // per batch-key group: a group that throws fails with model_error, the others complete. Records each call's
    // (size, seconds) in `measured`.
    void retire_groups(std::vector<Slot*>& retiring, std::vector<State*>& scratch, std::vector<Outcome>& out,
                       std::vector<std::pair<std::size_t, double>>& measured) {
      std::sort(retiring.begin(), retiring.end(),
                [](const Slot* x, const Slot* y) { return x->admit_seq_ < y->admit_seq_; });
      for_each_group(retiring, [&](const std::vector<Slot*>& group) {
        if constexpr (RetiringModel<Model, State>) {
          const time_point t0 = clock.now();
          try {
            model.retire(states_of(group, scratch));
          } catch (...) {
            for (Slot* s : group)
              fail(out, std::unique_ptr<Slot>(s), Errc::model_error, "Model::retire threw", std::current_exception());
            return;
          }
          measured.emplace_back(group.size(), seconds(clock.now() - t0));
        }
        for (Slot* s : group)
          out.push_back(Outcome{std::unique_ptr<Slot>(s), std::nullopt, nullptr});
      });
    }

    // Counts `out` (the caller holds the mutex).
    void count_outcomes(const std::vector<Outcome>& out) {
      const time_point done = clock.now();
      for (const Outcome& o : out) {
        if (!o.code) {
          ++counters.completed;
          counters.latency.record(seconds(done - o.slot->submitted_at_));
        } else if (*o.code == Errc::model_error) {
          ++counters.failed;
        }
      }
    }

    static void complete(std::vector<Outcome>& out) {
      for (Outcome& o : out) {
        if (o.code) {
          o.slot->control_->complete_error(*o.code, std::move(o.error));
        } else {
          o.slot->control_->complete_value(std::move(o.slot->state_));
        }
      }
    }

    // The retire stage (concurrent_retire): retires every finished request waiting. Returns whether there was any.
    bool retire_stage() {
      std::lock_guard stage(retire_mutex);
      std::vector<Slot*> retiring;
      {
        std::lock_guard lock(mutex);
        retiring.swap(to_retire);
        retiring_now = retiring.size();
      }
      if (retiring.empty()) return false;
      std::vector<Outcome> out;
      std::vector<std::pair<std::size_t, double>> measured;
      retire_groups(retiring, retire_states, out, measured);
      {
        std::lock_guard lock(mutex);
        for (const auto& [k, sec] : measured)
          retire_times.record(k, sec);
        count_outcomes(out);
        retiring_now = 0;
        ++generation;
      }
      wake.notify_all();  // a stopping scheduler thread waits for the stage to empty
      complete(out);
      return true;
    }

    // The retire thread: runs the stage whenever finished requests wait, until the batcher stops and is idle.
    void run_retire() {
      for (;;) {
        {
          std::unique_lock lock(mutex);
          retire_wake.wait(lock, [&] { return !to_retire.empty() || (stop_requested && loop_idle()); });
          if (to_retire.empty()) return;
        }
        retire_stage();
      }
    }

    bool iterate() {
      std::lock_guard drive(drive_mutex);
      std::vector<Outcome> out;
      std::vector<Slot*> joining;
      std::vector<Slot*> batch;
      std::vector<Slot*> held_now;  // finished earlier, retire() deferred
      observer_type obs;
      std::uint64_t index = 0;
      const time_point now = clock.now();
      {
        std::lock_guard lock(mutex);
        prepare(now, out, joining);
        batch = active;
        held_now = held;
        obs = observer;
        index = counters.iterations;
      }

      // Slots that finish or fail below are marked `leaving_`: the failed ones go to `out` at once, the finished ones
      // after retire(); all of them leave `active` at the end of the iteration.
      std::vector<Slot*> leaving;  // finished: to retire
      bool any_dropped = false;
      auto drop = [&](const std::vector<Slot*>& group, const char* hook, std::exception_ptr cause) {
        any_dropped = true;
        for (Slot* s : group) {
          s->leaving_ = true;
          fail(out, std::unique_ptr<Slot>(s), Errc::model_error, std::string("Model::") + hook + " threw", cause);
        }
      };
      auto finish = [&](Slot* s) {
        s->leaving_ = true;
        leaving.push_back(s);
      };

      if (!joining.empty()) {
        if constexpr (AdmittingModel<Model, State>) {
          for_each_group(joining, [&](const std::vector<Slot*>& group) {
            try {
              model.admit(states_of(group, states));
              for (Slot* s : group)
                s->admitted_ = true;
            } catch (...) {
              drop(group, "admit", std::current_exception());
            }
          });
        } else {
          for (Slot* s : joining)
            s->admitted_ = true;
        }
        // A joiner that is already finished (e.g. zero steps) leaves without a step.
        for (Slot* s : joining) {
          if (s->leaving_) continue;
          try {
            if (model.finished(std::as_const(s->state_))) finish(s);
          } catch (...) {
            drop({s}, "finished", std::current_exception());
          }
        }
        std::erase_if(batch, [](const Slot* s) { return s->leaving_; });
      }

      double model_seconds = 0;
      const std::size_t stepped = batch.size();
      if (!batch.empty()) {
        if (obs) {
          view.assign(batch.begin(), batch.end());
          try {
            obs(iteration_type{index, now, std::span<const Slot* const>(view), joining.size()});
          } catch (...) {  // an observer must not stop the loop
          }
        }
        for_each_group(batch, [&](const std::vector<Slot*>& group) {
          const time_point t0 = clock.now();
          try {
            model.step(states_of(group, states));
          } catch (...) {
            model_seconds += seconds(clock.now() - t0);
            drop(group, "step", std::current_exception());
            return;
          }
          model_seconds += seconds(clock.now() - t0);
          for (Slot* s : group) {
            ++s->steps_done_;
            try {
              if (s->on_progress_) s->on_progress_(Progress{s->control_->id(), s->steps_done_, s->total_steps_});
              if (model.finished(std::as_const(s->state_))) finish(s);
            } catch (...) {
              drop({s}, "finished or on_progress", std::current_exception());
            }
          }
        });
      }

      // Retire this iteration's finished requests together with any held from earlier ones, unless cost-aware
      // retirement holds them all one more iteration.
      std::vector<Slot*> retiring = held_now;
      retiring.insert(retiring.end(), leaving.begin(), leaving.end());
      bool hold = false;
      std::vector<std::pair<std::size_t, double>> retire_measured;
      if constexpr (RetiringModel<Model, State>) {
        if (!retiring.empty() && options.admission == Admission::cost_aware) {
          std::vector<Slot*> running;
          for (Slot* s : batch) {
            if (!s->leaving_) running.push_back(s);
          }
          hold = hold_retirement(retiring.size(), running);
        }
      }
      const bool handoff = concurrent_retire && !retiring.empty();  // to the retire stage
      if (!hold && !handoff && !retiring.empty()) retire_groups(retiring, states, out, retire_measured);

      const bool did_work = !out.empty() || !joining.empty() || stepped != 0 || hold || handoff;
      bool wake_stage = false;
      {
        std::lock_guard lock(mutex);
        if (any_dropped || !leaving.empty()) std::erase_if(active, [](const Slot* s) { return s->leaving_; });
        if (hold) {
          held.insert(held.end(), leaving.begin(), leaving.end());
        } else {
          held.clear();
        }
        if (handoff) to_retire.insert(to_retire.end(), retiring.begin(), retiring.end());  // the stage sorts them
        wake_stage = concurrent_retire && (handoff || stop_requested);
        for (const auto& [k, sec] : retire_measured)
          retire_times.record(k, sec);
        if (stepped != 0) {
          ++counters.iterations;
          counters.request_steps += stepped;
          occupancy_sum += static_cast<double>(stepped) / static_cast<double>(options.max_batch_size);
          counters.step_time.record(model_seconds);
          step_times.record(stepped, model_seconds);
        }
        count_outcomes(out);
      }
      if (wake_stage) retire_wake.notify_one();
      complete(out);
      return did_work;
    }

    // ---- the scheduler thread and stopping -------------------------------------------------------------------------

    // When the scheduler thread must look again even if nothing is submitted (the caller holds the mutex).
    std::optional<time_point> next_timed_event() const {
      std::optional<time_point> t = earliest_queued_deadline;
      if (options.admission == Admission::static_batch && active.empty() && !queue.empty()) {
        const time_point fill = oldest_queued_submit() + options.batch_timeout;
        if (!t || fill < *t) t = fill;
      }
      return t;
    }

    // Nothing queued or running (the caller holds the mutex).
    bool loop_idle() const { return queue.empty() && active.empty() && held.empty(); }

    // Nothing queued, running or retiring (the caller holds the mutex).
    bool idle() const { return loop_idle() && to_retire.empty() && retiring_now == 0; }

    void run() {
      for (;;) {
        std::uint64_t seen = 0;
        {
          std::lock_guard lock(mutex);
          if (stop_requested && idle()) return;
          seen = generation;
        }
        if (iterate()) continue;
        std::unique_lock lock(mutex);
        auto changed = [&] { return generation != seen || (stop_requested && idle()); };
        if (const auto t = next_timed_event()) {
          const auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(*t - clock.now());
          if (wait.count() > 0) wake.wait_for(lock, wait, changed);
        } else {
          wake.wait(lock, changed);
        }
      }
    }

    void request_stop(StopMode mode) {
      {
        std::lock_guard lock(mutex);
        if (!stop_requested) {
          stop_requested = true;
          stop_mode = mode;
        } else if (mode == StopMode::cancel) {
          stop_mode = StopMode::cancel;
        }
        ++generation;
      }
      wake.notify_all();
      retire_wake.notify_all();
    }

    // After the scheduler thread (if any) has ended: drive whatever is left on the calling thread.
    void finish_stop() {
      for (;;) {
        {
          std::lock_guard lock(mutex);
          if (idle()) return;
        }
        iterate();
        retire_stage();
      }
    }
  };

  std::shared_ptr<Core> core_;
  std::thread thread_;
  std::thread retire_thread_;  // Options::concurrent_retire after start()
};

}  // namespace carousel
