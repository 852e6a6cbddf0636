#pragma once
/// \file carousel/detail/drain_estimate.hpp
/// The estimated time to finish the work a batcher holds (`Stats::drain_seconds`).

#include <algorithm>
#include <cstddef>
#include <functional>
#include <optional>
#include <queue>
#include <span>
#include <utility>
#include <vector>

#include "carousel/detail/admission_policy.hpp"

namespace carousel::detail {

/// Seconds to finish requests with `remaining` steps left each, listed in the order the batcher takes them (the
/// running ones first, then the queued ones in admission order), when at most `max_batch_size` run per iteration, an
/// iteration of b requests takes `step(b)`, and the requests that finish in one iteration retire together in
/// `retire(k)`.
///
/// The rule: a greedy drain that replays continuous admission without new arrivals. The first `max_batch_size`
/// requests start at iteration 0; each next one takes the place that frees first (list scheduling, a min-heap of
/// places); request j runs from iteration s_j to f_j = s_j + r_j. Iteration x then steps b(x) = #{j : s_j <= x < f_j}
/// requests, and the drain is  sum_x step(b(x))  plus, for every iteration in which k requests finish,  retire(k)
/// (only the last such group's when `retire_on_loop` is false: a retire stage overlaps the steps that follow it;
/// unknown points of `retire` count 0). A request with 0 steps left occupies no place and retires at once.
/// O(n log n) for n requests: the heap, then a sweep over the 2n sorted start and finish events.
///
/// Exact for the batcher under continuous admission (any order) when nothing else arrives and no `max_batch_cost`,
/// cost-aware pacing or held retirement intervenes. Returns 0 for no requests, and 0 while the step-time curve is
/// unknown (nothing measured yet).
template <policy::CostCurve StepCurve, policy::CostCurve RetireCurve>
double drain_seconds(std::span<const std::size_t> remaining, std::size_t max_batch_size, const StepCurve& step,
                     const RetireCurve& retire, bool retire_on_loop) {
  if (remaining.empty() || max_batch_size == 0 || !step(1)) return 0.0;
  std::vector<std::pair<std::size_t, int>> events;  // (iteration, +1 start / -1 finish); finishes sort first
  std::vector<std::size_t> finishes;                // f_j of every request (0 for those with no steps left)
  events.reserve(2 * remaining.size());
  finishes.reserve(remaining.size());
  std::priority_queue<std::size_t, std::vector<std::size_t>, std::greater<>> free_at;  // the places
  for (std::size_t i = 0; i < std::min(max_batch_size, remaining.size()); ++i)
    free_at.push(0);
  for (std::size_t r : remaining) {
    if (r == 0) {
      finishes.push_back(0);
      continue;
    }
    const std::size_t start = free_at.top();
    free_at.pop();
    free_at.push(start + r);
    events.emplace_back(start, +1);
    events.emplace_back(start + r, -1);
    finishes.push_back(start + r);
  }
  std::sort(events.begin(), events.end());
  double total = 0;
  std::size_t running = 0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    running = events[i].second > 0 ? running + 1 : running - 1;
    const bool last_at_this_iteration = i + 1 == events.size() || events[i + 1].first != events[i].first;
    if (last_at_this_iteration && running > 0) {
      total += static_cast<double>(events[i + 1].first - events[i].first) * step(running).value_or(0.0);
    }
  }
  std::sort(finishes.begin(), finishes.end());
  double retiring = 0;
  for (std::size_t i = 0; i < finishes.size();) {
    std::size_t k = 0;
    while (i + k < finishes.size() && finishes[i + k] == finishes[i])
      ++k;
    retiring = std::optional<double>(retire(k)).value_or(0.0);
    if (retire_on_loop) total += retiring;
    i += k;
  }
  if (!retire_on_loop) total += retiring;
  return total;
}

}  // namespace carousel::detail
