#pragma once
/// \file carousel/options.hpp
/// Batcher-wide configuration.

#include <chrono>
#include <cstddef>

namespace carousel {

/// How waiting requests join the running batch.
enum class Admission {
  continuous,    ///< join-anytime: a waiting request joins at the next step boundary when there is room
  static_batch,  ///< the classic baseline: wait for a full batch or `batch_timeout`, then run it with no joins
  /// Continuous, but a waiting request joins a running batch only when the measured step-time curve says it pays:
  /// with t(b) = a + c*b fitted locally (c = t(b+1) - t(b)), a candidate with r remaining steps joins b running
  /// requests with remaining r_j when  a * min(r, max r_j) * (1 + waiting behind it)  >=  c * sum_j min(r_j, r)
  /// — the fixed cost it shares (it and everyone waiting behind it finish sooner) against the per-request cost it adds
  /// to every running request. Pairing two requests pays exactly when a > c; with a queue it batches for throughput.
  /// Besides, it admits up to the load-aware batch size b* that minimises the predicted latency n*t(b) + W_q(b) at
  /// the measured arrival rate (W_q: the M/M/1 wait at service rate b / (n*t(b) + d(b)), n the mean step count, d
  /// the measured retire() time), so that it keeps up with heavy load; when no size keeps up, the size with the
  /// highest service rate. And it batches retirement: a finished request may be held until the next running requests
  /// of its batch key finish when merging its `retire()` with theirs saves more loop time for everyone still running
  /// or waiting than the wait costs the held request; once held, it stays held until that merge (or until no request
  /// of its key runs any more).
  /// Until two batch sizes are measured it admits like `continuous`. Remaining steps come from `Model::total_steps`
  /// (without it every request counts as 1). What it guarantees against static batching and one-at-a-time
  /// scheduling, and how that is tested, is in docs/data-flow.md ("What cost-aware admission guarantees").
  cost_aware,
};

/// Which waiting request is admitted first.
enum class Order {
  fifo,               ///< submission order
  priority,           ///< larger `SubmitOptions::priority` first, then submission order
  earliest_deadline,  ///< earliest deadline first (no deadline last), then submission order
  fewest_remaining,   ///< fewest remaining steps first (needs `Model::total_steps`), then submission order
};

/// What `stop()` does with requests still in the batcher.
enum class StopMode {
  drain,   ///< refuse new submits, finish everything already queued or running, then stop
  cancel,  ///< refuse new submits and fail everything queued or running with `Errc::cancelled`
};

/// Batcher configuration (an aggregate: `carousel::Options{.max_batch_size = 16, .order = Order::priority}`).
struct Options {
  /// Most requests stepped in one iteration (all batch-key groups together). Must be at least 1.
  std::size_t max_batch_size = 8;
  /// Most `Model::cost` units running at once; 0 means no budget. A request whose cost alone exceeds the budget still
  /// runs when nothing else does, so nothing starves.
  std::size_t max_batch_cost = 0;
  /// Most requests waiting for admission (suspended ones included); beyond it `submit` fails with `queue_full`.
  /// 0 means unbounded.
  std::size_t max_queue_size = 0;
  /// Continuous (join-anytime) or static batching.
  Admission admission = Admission::continuous;
  /// Static batching only: the longest the oldest waiting request waits for the batch to fill.
  std::chrono::nanoseconds batch_timeout = std::chrono::milliseconds(100);
  /// Admission order of waiting requests.
  Order order = Order::fifo;
  /// Continuous or cost-aware admission with priority order only: a waiting request of strictly higher priority than
  /// the lowest-priority running one suspends it at a step boundary when the batch is full; the suspended request keeps
  /// its state and resumes later without a second `admit`.
  bool preempt = false;
  /// Runs `Model::retire` in a retire stage of its own instead of at the end of each iteration, so that the next
  /// iteration's steps do not wait for it (a VAE decode on its own CUDA stream while the UNet steps the others). A
  /// finished request leaves the batch at once, so its room is free at the next admission, and waits for the retire
  /// stage, which takes every finished request waiting when it begins (one `retire` call per batch-key group, oldest
  /// first). With `start()` the stage is a second thread; a caller driving `step_once()` calls `retire_once()` too.
  /// The model must allow `retire` to run concurrently with `admit`, `step` and `finished` on other states.
  /// Ignored for a model without `retire`. Cost-aware admission then counts no retire time in a batch's service time
  /// and does not hold finished requests back.
  bool concurrent_retire = false;
};

}  // namespace carousel
