#pragma once
/// \file carousel/detail/admission_policy.hpp
/// The admission policy as pure functions of plain values: whether a request fits, which running request a waiting
/// one preempts, and cost-aware admission's three decisions (join now, the load-aware batch size, hold a finished
/// request for a merged retire). The batcher's core gathers the inputs under its mutex and applies the answers; the
/// functions themselves read no shared state, so they are tested on their own (tests/core/admission_policy_test.cpp).

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <type_traits>

#include "carousel/options.hpp"

namespace carousel::detail::policy {

/// A cost curve as the policy reads it: `curve(b)` is the predicted seconds of one call with b items, empty while
/// unknown (`StepTimeModel::predict`, or a lambda in a test).
template <class F>
concept CostCurve = std::invocable<const F&, std::size_t> &&
    std::convertible_to<std::invoke_result_t<const F&, std::size_t>, std::optional<double>>;

/// Whether a request costing `cost` units may join `running` requests costing `running_cost` in all: there is room
/// under `max_batch_size`, and under `max_batch_cost` unless nothing runs (so a request over the whole budget still
/// runs alone and nothing starves).
inline bool fits(const Options& options, std::size_t running, std::size_t running_cost, std::size_t cost) noexcept {
  if (running >= options.max_batch_size) return false;
  if (options.max_batch_cost == 0 || running == 0) return true;
  return running_cost + cost <= options.max_batch_cost;
}

/// What preemption reads of a running request.
struct RunningRequest {
  int priority = 0;
  std::uint64_t admit_seq = 0;  ///< admission order
};

/// The running request a waiting one of `waiting_priority` suspends when it does not fit: the lowest priority, and
/// among those the most recently admitted; empty unless that priority is strictly lower than `waiting_priority`.
/// Returns an index into `running`.
inline std::optional<std::size_t> preemption_victim(std::span<const RunningRequest> running,
                                                    int waiting_priority) noexcept {
  if (running.empty()) return std::nullopt;
  std::size_t victim = 0;
  for (std::size_t i = 1; i < running.size(); ++i) {
    const RunningRequest& a = running[i];
    const RunningRequest& v = running[victim];
    if (a.priority < v.priority || (a.priority == v.priority && a.admit_seq > v.admit_seq)) victim = i;
  }
  if (running[victim].priority >= waiting_priority) return std::nullopt;
  return victim;
}

/// Whether a request with `remaining` steps left may miss nothing: `step_seconds * remaining <= seconds_left`. True
/// while the step time is unknown.
inline bool deadline_reachable(std::optional<double> step_seconds, std::size_t remaining,
                               double seconds_left) noexcept {
  return !step_seconds || !(*step_seconds * static_cast<double>(remaining) > seconds_left);
}

/// `Admission::cost_aware`: whether a candidate with `remaining` steps left pays for joining the running requests,
/// whose remaining steps are `running` (each at least 1), with `waiting_behind` more requests queued behind it.
///
/// With t(b) = a + c*b fitted locally at the current batch size b (c = t(b+1) - t(b)) it joins when
///   a * min(remaining, max r_j) * (1 + waiting_behind)  >=  c * sum_j min(r_j, remaining):
/// the fixed cost it shares (it and everyone behind it finish sooner) against the per-request cost it adds to every
/// running request. True when nothing runs, while t(b) or t(b+1) is unknown (explore), or when c <= 0.
template <CostCurve StepCurve>
bool worth_joining(std::size_t remaining, std::span<const std::size_t> running, std::size_t waiting_behind,
                   const StepCurve& step) {
  if (running.empty()) return true;
  const std::size_t b = running.size();
  const std::optional<double> tb = step(b);
  const std::optional<double> tb1 = step(b + 1);
  if (!tb || !tb1) return true;
  const double c = *tb1 - *tb;
  if (c <= 0) return true;
  const double a = std::max(0.0, *tb1 - static_cast<double>(b + 1) * c);
  const auto r = static_cast<double>(remaining);
  double longest = 0, overlap = 0;
  for (std::size_t left : running) {
    const auto rj = static_cast<double>(left);
    longest = std::max(longest, rj);
    overlap += std::min(rj, r);
  }
  return a * std::min(longest, r) * (1 + static_cast<double>(waiting_behind)) >= c * overlap;
}

/// How much more throughput (relative) a larger batch size must promise before an overloaded batcher prefers it:
/// measured curves are noisy, and a size that buys nothing only makes every step longer.
inline constexpr double min_rate_gain = 0.01;

/// `Admission::cost_aware`: the batch size in [1, max_batch_size] that minimises the predicted latency
///   mean_steps * t(b) + W_q(b)
/// at the arrival rate 1 / `mean_gap`, with W_q the M/M/1 wait at service rate b / (mean_steps * t(b) + d(b))
/// (d: `retire`, counted 0 where unknown). 0 while the arrival rate or the step-time curve is unknown.
///
/// When no size keeps up with the arrivals: `max_batch_size` if it serves at least `min_rate_gain` more than one
/// request alone, else the size with the highest service rate (a larger size only when it serves `min_rate_gain`
/// more). So a curve on which batching gains nothing (t(b) = b t(1), d(k) = k d(1): 1) or loses (super-linear: 1)
/// does not batch for throughput it cannot get, while one that gains somewhere up to the limit runs full. The ends
/// are compared rather than the best size taken because t(b) is measured by the total batch size: with several batch
/// keys a mid-size batch is often measured on one key and a large one on several, each paying its own fixed part,
/// and the "best" mid size would then be one the queue's key mix cannot form.
template <CostCurve StepCurve, CostCurve RetireCurve>
std::size_t target_batch_size(double mean_gap, double mean_steps, std::size_t max_batch_size, const StepCurve& step,
                              const RetireCurve& retire) {
  if (mean_gap <= 0 || mean_steps <= 0) return 0;
  const double lambda = 1.0 / mean_gap;
  double best = std::numeric_limits<double>::infinity();
  std::size_t best_b = 0;
  double fastest = 0;  // the highest service rate, and the smallest size that has it
  std::size_t fastest_b = 1;
  double mu_one = 0, mu_max = 0;  // the service rates of 1 and of max_batch_size
  for (std::size_t b = 1; b <= max_batch_size; ++b) {
    const std::optional<double> t = step(b);
    if (!t) return 0;
    const std::optional<double> d = retire(b);
    const double service = mean_steps * *t + d.value_or(0.0);
    const double mu = static_cast<double>(b) / service;
    if (b == 1) mu_one = mu;
    if (b == max_batch_size) mu_max = mu;
    if (mu > fastest * (1 + min_rate_gain)) {
      fastest = mu;
      fastest_b = b;
    }
    if (lambda >= mu) continue;
    const double latency = mean_steps * *t + (lambda / mu) / (mu - lambda);
    if (latency < best) {
      best = latency;
      best_b = b;
    }
  }
  if (best_b != 0) return best_b;
  return mu_max > mu_one * (1 + min_rate_gain) ? max_batch_size : fastest_b;
}

/// `Admission::cost_aware`: whether to hold `finished` requests (k, one batch-key group) for one more iteration so
/// that their `retire()` merges with that of the next requests of the same group to finish: m of them, r iterations
/// from now, r the fewest steps left in `group_running` (steps left by `Model::total_steps` of the group's running
/// requests; 0 = unknown, never waited for). Merging saves d(k) + d(m) - d(k+m) of loop time for every request still
/// running or waiting (`running + waiting`, all groups: a retire on the loop delays them all), and costs each held
/// request r iterations of t(running):
///   hold when  (d(k) + d(m) - d(k+m)) * (running + waiting)  >  k * r * t(running).
/// False when nothing is finished, no running request of the group has known steps left (nothing to merge with), or
/// a needed point of either curve is unknown.
template <CostCurve StepCurve, CostCurve RetireCurve>
bool hold_retirement(std::size_t finished, std::span<const std::size_t> group_running, std::size_t running,
                     std::size_t waiting, const StepCurve& step, const RetireCurve& retire) {
  if (finished == 0 || group_running.empty() || running == 0) return false;
  std::size_t r = std::numeric_limits<std::size_t>::max(), m = 0;
  for (std::size_t left : group_running) {
    if (left == 0) continue;
    if (left < r) {
      r = left;
      m = 0;
    }
    m += left == r;
  }
  if (m == 0) return false;
  const std::optional<double> dk = retire(finished), dm = retire(m), dkm = retire(finished + m);
  const std::optional<double> t = step(running);
  if (!dk || !dm || !dkm || !t) return false;
  const double saving = *dk + *dm - *dkm;
  const auto others = static_cast<double>(running + waiting);
  return saving * others > static_cast<double>(finished) * static_cast<double>(r) * *t;
}

}  // namespace carousel::detail::policy
