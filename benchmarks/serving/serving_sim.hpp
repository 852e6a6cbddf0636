#pragma once
/// \file serving_sim.hpp
/// The serving benchmark's machinery: cost models, workloads, a recording model adapter and two drivers
/// for a real `carousel::StepBatcher` — a discrete-event simulation on `carousel::ManualClock` and a wall-clock run
/// on the batcher's scheduler thread — plus the latency/throughput summary of a run.
///
/// Everything here is benchmark code, not library API: it lives in namespace `carousel::bench` and is shared by
/// `carousel-bench-serving` and the simulator's own tests (tests/serving).

#include <carousel/carousel.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <queue>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace carousel::bench {

// ---- cost models ---------------------------------------------------------------------------------------------------

/// Model time of one batched call as a function of batch size b >= 1, in seconds: either t(b) = a + c*b or a measured
/// table (linear interpolation between measured sizes, linear extrapolation beyond the last two).
class CostCurve {
 public:
  /// t(b) = a + c*b (seconds). Throws `std::invalid_argument` when a or c is negative.
  static CostCurve linear(double a, double c) {
    if (a < 0 || c < 0) throw std::invalid_argument("CostCurve::linear: a and c must not be negative");
    CostCurve k;
    k.a_ = a;
    k.c_ = c;
    return k;
  }

  /// A measured table: `points` are (batch size, seconds) with distinct sizes >= 1. Throws `std::invalid_argument`
  /// when empty or a size is 0 or repeated, or a time is negative.
  static CostCurve table(std::vector<std::pair<std::size_t, double>> points) {
    if (points.empty()) throw std::invalid_argument("CostCurve::table: no points");
    std::sort(points.begin(), points.end());
    for (std::size_t i = 0; i < points.size(); ++i) {
      if (points[i].first == 0) throw std::invalid_argument("CostCurve::table: batch size 0");
      if (points[i].second < 0) throw std::invalid_argument("CostCurve::table: negative step time");
      if (i > 0 && points[i].first == points[i - 1].first)
        throw std::invalid_argument("CostCurve::table: batch size " + std::to_string(points[i].first) + " repeated");
    }
    CostCurve k;
    k.points_ = std::move(points);
    return k;
  }

  /// Reads a measured table from a CSV file whose header line names its columns: `batch_size` first, and `column`
  /// (milliseconds; `step_ms` by default, e.g. `decode_ms` for a measured decode) among the others, which are ignored.
  /// Throws `std::runtime_error` naming the file and line on a malformed file or a missing column.
  static CostCurve from_csv(const std::string& path, const std::string& column = "step_ms") {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("CostCurve::from_csv: cannot open " + path);
    std::string line;
    std::getline(in, line);
    const std::vector<std::string> names = split_csv(line);
    const auto at = std::find(names.begin(), names.end(), column);
    if (names.empty() || names.front() != "batch_size" || at == names.end())
      throw std::runtime_error("CostCurve::from_csv: " + path + ": the header must start with batch_size and name " +
                               column);
    const auto index = static_cast<std::size_t>(at - names.begin());
    std::vector<std::pair<std::size_t, double>> points;
    for (int number = 2; std::getline(in, line); ++number) {
      if (line.empty()) continue;
      const std::vector<std::string> fields = split_csv(line);
      try {
        if (fields.size() <= index) throw std::invalid_argument("too few fields");
        points.emplace_back(static_cast<std::size_t>(std::stoul(fields[0])), std::stod(fields[index]) / 1000.0);
      } catch (const std::exception&) {
        throw std::runtime_error("CostCurve::from_csv: " + path + ":" + std::to_string(number) + ": malformed line");
      }
    }
    return table(std::move(points));
  }

  /// Whether the header line of the CSV file `path` names `column` (false when the file cannot be read).
  static bool csv_has_column(const std::string& path, const std::string& column) {
    std::ifstream in(path);
    std::string line;
    if (!std::getline(in, line)) return false;
    const std::vector<std::string> names = split_csv(line);
    return std::find(names.begin(), names.end(), column) != names.end();
  }

  /// The curve with every time multiplied by `factor` (>= 0).
  CostCurve scaled(double factor) const {
    CostCurve k = *this;
    k.a_ *= factor;
    k.c_ *= factor;
    for (auto& p : k.points_)
      p.second *= factor;
    return k;
  }

  /// t(b) in seconds, for b >= 1 (b = 0 costs nothing).
  double operator()(std::size_t b) const {
    if (b == 0) return 0.0;
    if (points_.empty()) return a_ + c_ * static_cast<double>(b);
    if (points_.size() == 1) return points_[0].second;
    std::size_t hi = 1;
    while (hi + 1 < points_.size() && points_[hi].first < b)
      ++hi;
    const auto& [b0, t0] = points_[hi - 1];
    const auto& [b1, t1] = points_[hi];
    const double x = (static_cast<double>(b) - static_cast<double>(b0)) / static_cast<double>(b1 - b0);
    return std::max(0.0, t0 + x * (t1 - t0));
  }

 private:
  // The comma-separated fields of one line (no quoting; a trailing carriage return dropped).
  static std::vector<std::string> split_csv(std::string line) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::vector<std::string> fields;
    std::istringstream in(line);
    for (std::string f; std::getline(in, f, ',');)
      fields.push_back(f);
    return fields;
  }

  double a_ = 0;
  double c_ = 0;
  std::vector<std::pair<std::size_t, double>> points_;
};

/// A serving regime: the step-time curve of the base resolution (batch key 0), the VAE decode curve, and how much
/// dearer each further resolution is (key k costs `key_factor`^k times key 0, for steps and decode alike).
struct Regime {
  std::string name;         ///< as in the CSV and the tables
  CostCurve step;           ///< UNet step (with classifier-free guidance), key 0
  CostCurve decode;         ///< VAE decode of the requests leaving together, key 0
  double key_factor = 2.0;  ///< cost multiplier per resolution step
  /// The decode runs in the batcher's retire stage (`Options::concurrent_retire`) instead of on the step loop, as on a
  /// second stream: the stage decodes everything that finished while it was busy in one call per batch key. The
  /// simulation replays that stage after the run (`decode_on_worker`); the wall-clock run has it on a second thread.
  /// Optimistic: it assumes the decode does not slow the steps down.
  bool decode_off_loop = false;
  /// Admission of b joining requests (tokenize + text encode in the diffusion Pipeline), spent on the step loop at
  /// the iteration they join; the same for every resolution. Zero unless measured (`--wallclock-pipeline`).
  CostCurve admit{};
  /// The step loop's own time per step call besides the model's (the batcher's bookkeeping, locks, its thread's
  /// wake-ups), seconds; spent after each step. Zero unless measured (`CostLedger::mean_loop_gap`).
  double loop_overhead = 0;

  /// t_key(b), seconds.
  double step_time(int key, std::size_t b) const { return std::pow(key_factor, key) * step(b); }
  /// d_key(b), seconds.
  double decode_time(int key, std::size_t b) const { return std::pow(key_factor, key) * decode(b); }
  /// A request's latency alone at batch size 1: steps x t_key(1) + d_key(1).
  double alone_time(int key, std::size_t steps) const {
    return static_cast<double>(steps) * step_time(key, 1) + decode_time(key, 1);
  }

  /// t(b) = a + c*b with d(b) = decode_factor x t(b); a and c in milliseconds.
  static Regime linear(std::string name, double a_ms, double c_ms, double decode_factor) {
    const CostCurve s = CostCurve::linear(a_ms / 1000.0, c_ms / 1000.0);
    return Regime{std::move(name), s, s.scaled(decode_factor)};
  }
};

// ---- workloads -----------------------------------------------------------------------------------------------------

/// One request of a trace.
struct Arrival {
  double time = 0;         ///< seconds from the start of the run
  std::size_t steps = 30;  ///< denoising steps (UNet evaluations)
  int key = 0;             ///< resolution index (batch key)
  int priority = 0;        ///< 1 = high-priority class, 0 = normal
  int user = -1;           ///< closed-loop user, or -1
};

/// How requests arrive.
enum class Pattern {
  poisson,      ///< open loop, exponential inter-arrival times at `rate`
  burst,        ///< open loop, `burst_size` requests at once every `burst_size / rate` seconds
  closed_loop,  ///< `users` users, each posts again the moment it gets its answer
  backlog,      ///< every request at time 0 (saturation throughput)
};

/// A workload: arrival pattern and the mix of request attributes. Deterministic given `seed`.
struct Workload {
  Pattern pattern = Pattern::poisson;        ///< how requests arrive
  double rate = 1.0;                         ///< requests per second (poisson, burst)
  std::size_t requests = 1000;               ///< requests in the run (all patterns)
  std::size_t burst_size = 16;               ///< burst
  std::size_t users = 8;                     ///< closed_loop
  std::vector<std::size_t> step_mix = {30};  ///< each request draws its step count uniformly from these
  int keys = 1;                              ///< resolutions: each request draws a key uniformly from [0, keys)
  double high_priority_fraction = 0.1;       ///< share of priority-1 requests
  std::uint64_t seed = 1;
};

/// Deterministic random numbers (mt19937_64 is fully specified by the standard; the conversions here are our own, so
/// a seed gives the same trace with every standard library).
class Random {
 public:
  explicit Random(std::uint64_t seed) : engine_(seed) {}
  /// Uniform in [0, 1).
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  /// Exponential with the given rate (> 0).
  double exponential(double rate) { return -std::log1p(-uniform()) / rate; }
  /// Uniform index in [0, n) for n >= 1.
  std::size_t index(std::size_t n) {
    return std::min(n - 1, static_cast<std::size_t>(uniform() * static_cast<double>(n)));
  }

 private:
  std::mt19937_64 engine_;
};

/// Draws the attributes (steps, key, priority) of one request of `w`.
inline Arrival draw_request(const Workload& w, Random& rng) {
  Arrival a;
  a.steps = w.step_mix[rng.index(w.step_mix.size())];
  a.key = static_cast<int>(rng.index(static_cast<std::size_t>(std::max(1, w.keys))));
  a.priority = rng.uniform() < w.high_priority_fraction ? 1 : 0;
  return a;
}

/// The arrival trace of an open-loop workload (poisson, burst, backlog), sorted by time; for closed_loop, the first
/// post of every user at time 0. Throws `std::invalid_argument` for an empty step mix or a non-positive rate.
inline std::vector<Arrival> generate_trace(const Workload& w) {
  if (w.step_mix.empty()) throw std::invalid_argument("Workload::step_mix is empty");
  if ((w.pattern == Pattern::poisson || w.pattern == Pattern::burst) && !(w.rate > 0))
    throw std::invalid_argument("Workload::rate must be positive");
  Random rng(w.seed);
  std::vector<Arrival> trace;
  const std::size_t n = w.pattern == Pattern::closed_loop ? std::min(w.users, w.requests) : w.requests;
  double t = 0;
  for (std::size_t i = 0; i < n; ++i) {
    Arrival a = draw_request(w, rng);
    switch (w.pattern) {
      case Pattern::poisson:
        t += rng.exponential(w.rate);
        a.time = t;
        break;
      case Pattern::burst: {
        const double interval = static_cast<double>(w.burst_size) / w.rate;
        a.time = (0.5 + static_cast<double>(i / w.burst_size)) * interval;
        break;
      }
      case Pattern::closed_loop:
        a.user = static_cast<int>(i);
        break;
      case Pattern::backlog:
        break;
    }
    trace.push_back(a);
  }
  return trace;
}

// ---- recording -----------------------------------------------------------------------------------------------------

/// What the harness records about one request (seconds from the start of the run; -1 = not yet).
struct Record {
  Arrival arrival;             ///< the request as the trace had it
  double submitted = -1;       ///< when submit() was called (the arrival time in the simulation)
  double admitted = -1;        ///< first admission
  double done = -1;            ///< after its decode (retire) returned
  std::size_t step_calls = 0;  ///< step() calls that included this request
};

/// What a run's model calls cost, measured in the run itself: the figures the simulator takes as its curves, so that a
/// simulation of the same trace on them shows how much of a disagreement each cost explains.
struct CostLedger {
  /// Seconds spent and calls made.
  struct Sum {
    double seconds = 0;
    std::size_t calls = 0;
  };
  std::map<std::size_t, Sum> step;    ///< step() by batch size (every batch key together)
  std::map<std::size_t, Sum> admit;   ///< admit() by number of joining requests
  std::map<std::size_t, Sum> decode;  ///< retire() by number of leaving requests
  /// The step loop's time outside the model between a call and the next step of requests that were already running
  /// (bookkeeping, locks, wake-ups; never idle time, which has no running request).
  Sum loop_gap;

  /// The per-size means of `m` as a measured curve; `fallback` when `m` is empty.
  static CostCurve curve(const std::map<std::size_t, Sum>& m, const CostCurve& fallback) {
    if (m.empty()) return fallback;
    std::vector<std::pair<std::size_t, double>> points;
    for (const auto& [b, sum] : m)
      points.emplace_back(b, sum.seconds / static_cast<double>(sum.calls));
    return CostCurve::table(std::move(points));
  }
  /// Mean loop gap per step call, seconds (0 without any).
  double mean_loop_gap() const {
    return loop_gap.calls == 0 ? 0.0 : loop_gap.seconds / static_cast<double>(loop_gap.calls);
  }
};

/// A state with the harness's request index attached.
template <class State>
struct Traced {
  State inner;         ///< the wrapped model's state
  std::size_t id = 0;  ///< index into the run's records
};

/// Wraps any StepModel so the harness sees admission, every step and completion of each request, and how long the
/// model spent in step() and retire(). This is the hook a real model (the CPU diffusion Pipeline, a CUDA one) plugs
/// into: the harness drives `StepBatcher<TracedModel<M, S, Clock>, Traced<S>, Clock>`.
///
/// Called from the batcher's driving thread, except `retire`, which may run on the retire stage's thread
/// (`Options::concurrent_retire`) concurrently with the others; `batch_key`/`total_steps` are forwarded pure functions.
/// `records` must not be resized while the batcher runs.
template <class Model, class State, class Clock>
class TracedModel {
 public:
  /// `on_done(id)` is called after a request's retire() returned (closed-loop users post again from it).
  TracedModel(Model& model, Clock clock, typename Clock::time_point origin, std::vector<Record>& records,
              std::function<void(std::size_t)> on_done = {})
      : model_(model), clock_(std::move(clock)), origin_(origin), records_(records), on_done_(std::move(on_done)) {}

  /// Forwards to `Model::admit` when it has one; records the first admission.
  void admit(std::span<Traced<State>* const> joining) {
    const double t0 = now();
    if constexpr (AdmittingModel<Model, State>) model_.admit(inners(joining, scratch_));
    const double t = now();
    add(ledger_.admit, joining.size(), t - t0);
    last_loop_call_end_ = t;
    for (Traced<State>* s : joining)
      records_[s->id].admitted = t;
  }

  /// Forwards to `Model::step`; counts the call for every request in it and times it.
  void step(std::span<Traced<State>* const> batch) {
    const double t0 = now();
    loop_thread_ = std::this_thread::get_id();
    const bool continuing =
        std::any_of(batch.begin(), batch.end(), [&](const Traced<State>* s) { return records_[s->id].step_calls > 0; });
    if (continuing && last_loop_call_end_ >= 0) {
      ledger_.loop_gap.seconds += t0 - last_loop_call_end_;
      ++ledger_.loop_gap.calls;
    }
    model_.step(inners(batch, scratch_));
    const double t = now();
    step_seconds_ += t - t0;
    add(ledger_.step, batch.size(), t - t0);
    last_loop_call_end_ = t;
    for (Traced<State>* s : batch)
      ++records_[s->id].step_calls;
  }

  /// Forwards to `Model::retire` when it has one and times it; records completion, then calls `on_done`.
  void retire(std::span<Traced<State>* const> leaving) {
    const double t0 = now();
    if constexpr (RetiringModel<Model, State>) model_.retire(inners(leaving, retire_scratch_));
    const double t = now();
    decode_seconds_ += t - t0;
    ++retire_calls_;
    {
      std::lock_guard lock(decode_mutex_);
      add(ledger_.decode, leaving.size(), t - t0);
    }
    if (std::this_thread::get_id() == loop_thread_.load()) last_loop_call_end_ = t;
    for (Traced<State>* s : leaving) {
      records_[s->id].done = t;
      if (on_done_) on_done_(s->id);
    }
  }

  /// `Model::finished` of the wrapped state.
  bool finished(const Traced<State>& s) const { return model_.finished(s.inner); }

  /// `Model::batch_key`, present when the model has one.
  auto batch_key(const Traced<State>& s) const requires KeyedModel<Model, State> { return model_.batch_key(s.inner); }

  /// `Model::total_steps`, present when the model has one.
  std::size_t total_steps(const Traced<State>& s) const requires CountingModel<Model, State> {
    return static_cast<std::size_t>(model_.total_steps(s.inner));
  }

  /// Time spent in the wrapped model's step() / retire(), seconds.
  double step_seconds() const noexcept { return step_seconds_; }
  double decode_seconds() const noexcept { return decode_seconds_; }
  /// Calls of retire() so far.
  std::size_t retire_calls() const noexcept { return retire_calls_; }
  /// What the calls cost, by kind and batch size. Read it after the batcher stopped.
  const CostLedger& ledger() const noexcept { return ledger_; }

 private:
  double now() const { return std::chrono::duration<double>(clock_.now() - origin_).count(); }

  static void add(std::map<std::size_t, CostLedger::Sum>& m, std::size_t b, double seconds) {
    auto& sum = m[b];
    sum.seconds += seconds;
    ++sum.calls;
  }

  static std::span<State* const> inners(std::span<Traced<State>* const> outer, std::vector<State*>& scratch) {
    scratch.clear();
    for (Traced<State>* s : outer)
      scratch.push_back(&s->inner);
    return scratch;
  }

  Model& model_;
  Clock clock_;
  typename Clock::time_point origin_;
  std::vector<Record>& records_;
  std::function<void(std::size_t)> on_done_;
  std::vector<State*> scratch_;         // admit, step
  std::vector<State*> retire_scratch_;  // retire (maybe on the retire stage's thread)
  double step_seconds_ = 0;
  double decode_seconds_ = 0;
  std::size_t retire_calls_ = 0;
  CostLedger ledger_;
  std::mutex decode_mutex_;                   // ledger_.decode: retire may run on the retire stage's thread
  std::atomic<std::thread::id> loop_thread_;  // the thread that steps (retire on it is on the step loop)
  double last_loop_call_end_ = -1;            // end of the step loop's last model call
};

// ---- the cost model as a StepModel ---------------------------------------------------------------------------------

/// The state of a simulated request.
struct SimJob {
  std::size_t steps = 30;  ///< UNet evaluations to do
  std::size_t done = 0;    ///< UNet evaluations done
  int key = 0;             ///< resolution (batch key)
};

/// A StepModel whose step() costs t_key(b) and whose retire() (VAE decode) costs d_key(b), spent by `Spend`
/// (a callable `void(double seconds)`): advancing a virtual clock, or sleeping in real time (`WallSpend`).
/// `regime` must outlive the model.
template <class Spend>
class CostModel {
 public:
  /// A model with `regime`'s costs, spent through `spend`. With `Regime::decode_off_loop` the decode is spent through
  /// `decode_spend` (the retire stage's own, as it runs on another thread), or not at all without one (the simulation
  /// replays it afterwards).
  CostModel(const Regime& regime, Spend spend, std::optional<Spend> decode_spend = std::nullopt)
      : regime_(regime), spend_(std::move(spend)), decode_spend_(std::move(decode_spend)) {}

  /// Admission of the joining requests: spends `Regime::admit`(b) when it is not zero.
  void admit(std::span<SimJob* const> joining) {
    const double a = regime_.admit(joining.size());
    if (a > 0) spend_(a);
  }
  /// One UNet evaluation of the batch (one batch key): spends t_key(b).
  void step(std::span<SimJob* const> batch) {
    spend_(regime_.step_time(batch.front()->key, batch.size()) + regime_.loop_overhead);
    for (SimJob* j : batch)
      ++j->done;
  }
  /// The VAE decode of the leavers (one batch key): spends d_key(b) (see the constructor for where).
  void retire(std::span<SimJob* const> leaving) {
    const double d = regime_.decode_time(leaving.front()->key, leaving.size());
    if (!regime_.decode_off_loop) {
      spend_(d);
    } else if (decode_spend_) {
      (*decode_spend_)(d);
    }
  }
  /// Done once every step ran.
  bool finished(const SimJob& j) const { return j.done >= j.steps; }
  /// The resolution.
  int batch_key(const SimJob& j) const { return j.key; }
  /// The step count.
  std::size_t total_steps(const SimJob& j) const { return j.steps; }

 private:
  const Regime& regime_;
  Spend spend_;
  std::optional<Spend> decode_spend_;
};

/// Spends real time by sleeping, and keeps the model's total time on its cost model: a sleep wakes late (on a busy
/// machine by 0.1-0.5 ms on average, a whole time slice at worst), so each call deducts what the calls before it
/// overran (never sleeping less than nothing). The model's time line then matches the cost model within one wake-up
/// latency, like a device whose kernels do not stretch when the host thread is descheduled; the batcher's own
/// overhead (locks, thread wake-ups on submit, the iteration) is all still in the measurement. Spinning instead
/// would be preempted as soon as other work competes for the cores. One WallSpend per driving thread.
class WallSpend {
 public:
  /// Spends `seconds` of model time (less the overrun carried from earlier calls).
  void operator()(double seconds) {
    using clock = std::chrono::steady_clock;
    const auto want = std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(seconds));
    const auto start = clock::now();
    if (want > overrun_) std::this_thread::sleep_until(start + (want - overrun_));
    overrun_ += (clock::now() - start) - want;
  }

 private:
  std::chrono::steady_clock::duration overrun_{};  // model time spent so far minus model time asked for
};

// ---- a finished run ------------------------------------------------------------------------------------------------

/// Everything a run leaves behind.
struct RunResult {
  std::vector<Record> records;   ///< one per request, in submission order
  Stats stats;                   ///< the batcher's own statistics at the end
  double step_seconds = 0;       ///< model time in step()
  double decode_seconds = 0;     ///< model time in retire() (decode), or of the decode worker
  bool decode_on_loop = true;    ///< false: decode_seconds were spent off the step loop (`Regime::decode_off_loop`)
  std::size_t decode_calls = 0;  ///< retire() calls, or calls of the decode worker
  CostLedger ledger;             ///< what the model's calls cost in this run (the wall-clock run's measured costs)
  /// The batcher's own step-time estimate at the end of the run, per batch size 1..max_batch_size (seconds; 0 before
  /// any measurement): what cost_aware read.
  std::vector<double> predicted_step;
};

/// Throws `std::logic_error` unless every request completed and got exactly as many step() calls as it has steps
/// (the equal-UNet-evaluations invariant: no off-by-one in any mode).
inline void check_invariants(const RunResult& r) {
  for (std::size_t i = 0; i < r.records.size(); ++i) {
    const Record& rec = r.records[i];
    if (rec.done < 0) throw std::logic_error("serving: request " + std::to_string(i) + " did not complete");
    if (rec.step_calls != rec.arrival.steps) {
      throw std::logic_error("serving: request " + std::to_string(i) + " got " + std::to_string(rec.step_calls) +
                             " step() calls for " + std::to_string(rec.arrival.steps) + " steps");
    }
  }
}

// ---- the discrete-event simulation ---------------------------------------------------------------------------------

/// For `Regime::decode_off_loop`: replays the decode of every request on one decode worker after the run (the worker
/// never delays the loop, so it can be computed afterwards). `done` holds the retire time on entry and the end of the
/// request's decode on return.
inline void decode_on_worker(const Regime& regime, RunResult& r) {
  std::vector<std::size_t> order(r.records.size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t x, std::size_t y) { return r.records[x].done < r.records[y].done; });
  double free_at = 0, busy = 0;
  std::size_t calls = 0;
  for (std::size_t i = 0; i < order.size();) {
    const double start = std::max(free_at, r.records[order[i]].done);
    std::size_t j = i;
    while (j < order.size() && r.records[order[j]].done <= start)
      ++j;
    double t = start;
    for (int key = 0;; ++key) {  // one decode call per batch key among the waiting ones
      std::size_t k = 0, left = 0;
      for (std::size_t n = i; n < j; ++n) {
        k += r.records[order[n]].arrival.key == key;
        left += r.records[order[n]].arrival.key > key;
      }
      if (k > 0) {
        t += regime.decode_time(key, k);
        ++calls;
        for (std::size_t n = i; n < j; ++n)
          if (r.records[order[n]].arrival.key == key) r.records[order[n]].done = t;
      }
      if (left == 0) break;
    }
    busy += t - start;
    free_at = t;
    i = j;
  }
  r.decode_seconds = busy;
  r.decode_on_loop = false;
  r.decode_calls = calls;
}

/// Runs the arrivals of `trace` through a real `StepBatcher` on a ManualClock, driven by `step_once()`: step() and
/// retire() advance virtual time by the regime's costs, arrivals that fall inside a step are submitted at their own
/// time (from inside the step, as a client thread would), idle gaps jump to the next arrival or static-batch timeout.
/// Arrivals with `user >= 0` are closed-loop users: when one's request completes, the user posts a new request drawn
/// from `workload` at once, until `workload.requests` were posted. Deterministic. Checks the invariants
/// (`check_invariants`) before returning.
inline RunResult simulate(const Regime& regime, const Options& options, const std::vector<Arrival>& trace,
                          const Workload& workload) {
  using Ns = std::chrono::nanoseconds;
  auto to_ns = [](double s) { return std::chrono::round<Ns>(std::chrono::duration<double>(s)); };
  auto to_s = [](ManualClock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); };

  ManualClock clock;
  RunResult result;
  std::vector<Record>& records = result.records;
  records.reserve(std::max(trace.size(), workload.requests));

  // Pending arrivals, earliest first (ties in trace order).
  struct Pending {
    Ns time;
    std::uint64_t seq;
    Arrival arrival;
    bool operator>(const Pending& o) const { return time != o.time ? time > o.time : seq > o.seq; }
  };
  std::priority_queue<Pending, std::vector<Pending>, std::greater<>> pending;
  std::uint64_t next_seq = 0;
  for (const Arrival& a : trace)
    pending.push(Pending{to_ns(a.time), next_seq++, a});

  Random user_rng(workload.seed ^ 0x9e3779b97f4a7c15ULL);
  std::size_t posted = pending.size();
  auto on_done = [&](std::size_t id) {
    const int user = records[id].arrival.user;
    if (user < 0 || posted >= workload.requests) return;
    Arrival next = draw_request(workload, user_rng);
    next.user = user;
    next.time = to_s(clock.now());
    pending.push(Pending{clock.now().time_since_epoch(), next_seq++, next});
    ++posted;
  };

  using Batcher = StepBatcher<TracedModel<CostModel<std::function<void(double)>>, SimJob, ManualClock>, Traced<SimJob>,
                              ManualClock>;
  Batcher* batcher_ptr = nullptr;
  // Submits every arrival due by `limit`, each at its own time.
  auto submit_due = [&](ManualClock::time_point limit) {
    while (!pending.empty() && ManualClock::time_point(pending.top().time) <= limit) {
      const Pending p = pending.top();
      pending.pop();
      if (ManualClock::time_point(p.time) > clock.now()) clock.set(ManualClock::time_point(p.time));
      Record rec;
      rec.arrival = p.arrival;
      rec.submitted = to_s(clock.now());
      records.push_back(rec);
      batcher_ptr->submit(Traced<SimJob>{SimJob{p.arrival.steps, 0, p.arrival.key}, records.size() - 1},
                          SubmitOptions<ManualClock>{.priority = p.arrival.priority});
    }
  };
  std::function<void(double)> spend = [&](double seconds) {
    const auto end = clock.now() + to_ns(seconds);
    submit_due(end);
    clock.set(end);
  };

  CostModel<std::function<void(double)>> model(regime, spend);
  TracedModel<CostModel<std::function<void(double)>>, SimJob, ManualClock> traced(model, clock, {}, records, on_done);
  Options run_options = options;
  run_options.concurrent_retire = regime.decode_off_loop;
  Batcher batcher(traced, run_options, clock);
  batcher_ptr = &batcher;

  std::size_t oldest_unadmitted = 0;  // records are in submission order
  for (;;) {
    submit_due(clock.now());
    const bool stepped = batcher.step_once();
    if (batcher.retire_once() || stepped) continue;  // the retire stage costs the loop nothing here
    std::optional<Ns> next;
    if (!pending.empty()) next = pending.top().time;
    if (options.admission == Admission::static_batch) {
      while (oldest_unadmitted < records.size() && records[oldest_unadmitted].admitted >= 0)
        ++oldest_unadmitted;
      if (oldest_unadmitted < records.size()) {
        const Ns fill = to_ns(records[oldest_unadmitted].submitted) + options.batch_timeout;
        if (!next || fill < *next) next = fill;
      }
    }
    if (!next) {
      const Stats s = batcher.stats();
      if (s.queue_depth + s.active + s.retiring == 0) break;
      throw std::logic_error("serving: the simulation is stuck with requests in the batcher and no event due");
    }
    if (ManualClock::time_point(*next) <= clock.now())
      throw std::logic_error("serving: the simulation is stuck: the batcher did nothing at a due event");
    clock.set(ManualClock::time_point(*next));
  }
  result.stats = batcher.stats();
  result.step_seconds = traced.step_seconds();
  result.decode_seconds = traced.decode_seconds();
  result.decode_calls = traced.retire_calls();
  result.ledger = traced.ledger();
  if (regime.decode_off_loop) decode_on_worker(regime, result);
  check_invariants(result);
  return result;
}

/// Simulates `workload` (its trace from `generate_trace`); see the overload above.
inline RunResult simulate(const Regime& regime, const Options& options, const Workload& workload) {
  return simulate(regime, options, generate_trace(workload), workload);
}

// ---- the wall-clock run --------------------------------------------------------------------------------------------

/// Runs an open-loop `trace` through a real `StepBatcher` on `steady_clock` with its scheduler thread (`start()`),
/// submitting each arrival from this thread at its time in real time. `make_state(const Arrival&)` builds the model's
/// state for a request; any StepModel works, so a real diffusion pipeline plugs in here. Checks the invariants.
template <class Model, class MakeState>
RunResult run_wallclock(Model& model, const Options& options, const std::vector<Arrival>& trace, MakeState make_state) {
  using State = std::remove_cvref_t<decltype(make_state(std::declval<const Arrival&>()))>;
  using Clock = std::chrono::steady_clock;
  RunResult result;
  result.records.resize(trace.size());
  for (std::size_t i = 0; i < trace.size(); ++i)
    result.records[i].arrival = trace[i];
  const Clock::time_point origin = Clock::now();
  TracedModel<Model, State, Clock> traced(model, Clock{}, origin, result.records);
  StepBatcher<TracedModel<Model, State, Clock>, Traced<State>, Clock> batcher(traced, options);
  std::vector<Ticket<Traced<State>>> tickets;
  tickets.reserve(trace.size());
  batcher.start();
  for (std::size_t i = 0; i < trace.size(); ++i) {
    std::this_thread::sleep_until(
        origin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(trace[i].time)));
    result.records[i].submitted = std::chrono::duration<double>(Clock::now() - origin).count();
    tickets.push_back(batcher.submit(Traced<State>{make_state(trace[i]), i}, {.priority = trace[i].priority}));
  }
  for (auto& t : tickets)
    t.wait();
  batcher.stop();
  result.stats = batcher.stats();
  result.step_seconds = traced.step_seconds();
  result.decode_seconds = traced.decode_seconds();
  result.decode_calls = traced.retire_calls();
  result.decode_on_loop = !options.concurrent_retire;
  result.ledger = traced.ledger();
  for (std::size_t b = 1; b <= options.max_batch_size; ++b) {
    const auto predicted = batcher.predicted_step_time(b);
    result.predicted_step.push_back(predicted ? std::chrono::duration<double>(*predicted).count() : 0.0);
  }
  check_invariants(result);
  return result;
}

// ---- summaries -----------------------------------------------------------------------------------------------------

/// The figures of one run (or one priority class of it). Times in seconds.
struct Summary {
  std::size_t count = 0;                                ///< requests summarized
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;  ///< latency: submit -> decoded
  double slowdown_mean = 0, slowdown_p99 = 0;           ///< latency / alone-at-batch-1 time
  double wait_mean = 0, wait_p99 = 0;                   ///< queue wait: submit -> first admission
  double throughput = 0;                                ///< completed per second over the run
  double occupancy = 0;                                 ///< mean batch size / max_batch_size over iterations
  double busy = 0;                                      ///< time the step loop spent in the model / run time
  double decode_share = 0;                              ///< decode time / (step + decode time)
  double decode_batch = 0;                              ///< requests per decode call (run-wide)
};

/// Quantile `q` of `v` (sorted in place), linearly interpolated between order statistics; 0 when empty.
inline double quantile(std::vector<double>& v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(pos);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

/// Summarizes the requests of `r` that `keep(record)` selects (all when empty). Throughput, occupancy, busy and
/// decode share are run-wide.
inline Summary summarize(const RunResult& r, const Regime& regime,
                         const std::function<bool(const Record&)>& keep = {}) {
  Summary s;
  std::vector<double> lat, slow, wait;
  double first = std::numeric_limits<double>::infinity(), last = 0;
  for (const Record& rec : r.records) {
    first = std::min(first, rec.submitted);
    last = std::max(last, rec.done);
    if (keep && !keep(rec)) continue;
    const double l = rec.done - rec.submitted;
    lat.push_back(l);
    slow.push_back(l / regime.alone_time(rec.arrival.key, rec.arrival.steps));
    wait.push_back(rec.admitted - rec.submitted);
  }
  s.count = lat.size();
  if (s.count == 0) return s;
  auto mean = [](const std::vector<double>& v) {
    double sum = 0;
    for (double x : v)
      sum += x;
    return sum / static_cast<double>(v.size());
  };
  s.mean = mean(lat);
  s.p50 = quantile(lat, 0.5);
  s.p90 = quantile(lat, 0.9);
  s.p99 = quantile(lat, 0.99);
  s.max = lat.back();
  s.slowdown_mean = mean(slow);
  s.slowdown_p99 = quantile(slow, 0.99);
  s.wait_mean = mean(wait);
  s.wait_p99 = quantile(wait, 0.99);
  const double span = last - first;
  s.throughput = span > 0 ? static_cast<double>(r.records.size()) / span : 0.0;
  s.occupancy = r.stats.mean_occupancy;
  const double model = r.step_seconds + r.decode_seconds;
  const double loop = r.decode_on_loop ? model : r.step_seconds;
  s.busy = span > 0 ? loop / span : 0.0;
  s.decode_share = model > 0 ? r.decode_seconds / model : 0.0;
  s.decode_batch = r.decode_calls ? static_cast<double>(r.records.size()) / static_cast<double>(r.decode_calls) : 0.0;
  return s;
}

// ---- the modes under test ------------------------------------------------------------------------------------------

/// A named batcher configuration.
struct Mode {
  std::string name;  ///< as in the CSV and the tables
  Options options;   ///< the batcher's configuration
};

/// The modes of the benchmark, baseline first: static batching with a 0.3 s timeout (the seed's "grouped"), dynamic
/// batching (static with a 20 ms timeout, Triton-style), continuous FIFO, continuous fewest-remaining-first,
/// continuous with priority order and preemption, and cost-aware admission.
inline std::vector<Mode> modes(std::size_t max_batch_size) {
  using namespace std::chrono_literals;
  const Options base{.max_batch_size = max_batch_size};
  std::vector<Mode> m;
  Options o = base;
  o.admission = Admission::static_batch;
  o.batch_timeout = 300ms;
  m.push_back({"static", o});
  o.batch_timeout = 20ms;
  m.push_back({"dynamic", o});
  o = base;
  m.push_back({"continuous", o});
  o.order = Order::fewest_remaining;
  m.push_back({"fewest_remaining", o});
  o.order = Order::priority;
  o.preempt = true;
  m.push_back({"preempt", o});
  o = base;
  o.admission = Admission::cost_aware;
  m.push_back({"cost_aware", o});
  return m;
}

}  // namespace carousel::bench
