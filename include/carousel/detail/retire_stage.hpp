#pragma once
/// \file carousel/detail/retire_stage.hpp
/// The retire stage: `Model::retire` for finished requests, one call per batch-key group in admission order, and the
/// hand-off list through which a concurrent stage (`Options::concurrent_retire`) takes them from the loop.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "carousel/detail/batch_groups.hpp"
#include "carousel/detail/request.hpp"
#include "carousel/errors.hpp"
#include "carousel/step_model.hpp"

namespace carousel::detail {

/// Retires finished requests, on the driving thread (at the end of an iteration) or in a stage of its own.
///
/// Owns the requests handed off to it until a stage takes them. The hand-off list is guarded by the batcher's mutex:
/// the members marked "caller holds the batcher's mutex" touch it. `retire` touches only the requests it is given.
template <class Model, class State, class Clock>
class RetireStage {
 public:
  using request_type = Request<State, Clock>;
  using outcome_type = Outcome<State, Clock>;
  /// (requests in one retire() call, seconds it took)
  using Measurements = std::vector<std::pair<std::size_t, double>>;

  RetireStage(Model& model, const Clock& clock) : model_(model), clock_(clock) {}
  RetireStage(const RetireStage&) = delete;
  RetireStage& operator=(const RetireStage&) = delete;
  ~RetireStage() {
    for (request_type* r : waiting_)
      delete r;
  }

  /// Calls `Model::retire` for `retiring`, sorted here into admission order (oldest first), one call per batch-key
  /// group: the requests of a group that throws fail with `model_error`, the others complete. Appends every request to
  /// `out` (taking ownership) and each call's (size, seconds) to `measured`. Without `Model::retire` they simply
  /// complete.
  void retire(std::vector<request_type*>& retiring, std::vector<State*>& scratch, std::vector<outcome_type>& out,
              Measurements& measured) {
    std::sort(retiring.begin(), retiring.end(),
              [](const request_type* x, const request_type* y) { return x->admit_seq_ < y->admit_seq_; });
    for_each_request_group<KeyedModel<Model, State>>(retiring, [&](const std::vector<request_type*>& group) {
      if constexpr (RetiringModel<Model, State>) {
        const auto t0 = clock_.now();
        try {
          model_.retire(states_of(group, scratch));
        } catch (...) {
          for (request_type* r : group)
            fail(out, std::unique_ptr<request_type>(r), Errc::model_error, "Model::retire threw",
                 std::current_exception());
          return;
        }
        measured.emplace_back(group.size(), std::chrono::duration<double>(clock_.now() - t0).count());
      }
      for (request_type* r : group)
        out.push_back(outcome_type{std::unique_ptr<request_type>(r), std::nullopt, nullptr});
    });
  }

  /// Queues finished requests for the stage (caller holds the batcher's mutex).
  void hand_off(const std::vector<request_type*>& finished) {
    waiting_.insert(waiting_.end(), finished.begin(), finished.end());
  }

  /// Whether finished requests wait for the stage (caller holds the batcher's mutex).
  bool has_waiting() const noexcept { return !waiting_.empty(); }

  /// Requests waiting for or in the stage (caller holds the batcher's mutex).
  std::size_t size() const noexcept { return waiting_.size() + in_progress_; }

  /// Takes every waiting request for one run of the stage (caller holds the batcher's mutex and `stage_mutex()`).
  std::vector<request_type*> take() {
    std::vector<request_type*> taken;
    taken.swap(waiting_);
    in_progress_ = taken.size();
    return taken;
  }

  /// The run that `take` began is over (caller holds the batcher's mutex and `stage_mutex()`).
  void done() noexcept { in_progress_ = 0; }

  /// Held for a whole run of the stage: one run at a time.
  std::mutex& stage_mutex() noexcept { return stage_mutex_; }

  /// The stage's own scratch (guarded by `stage_mutex()`).
  std::vector<State*>& scratch() noexcept { return scratch_; }

 private:
  Model& model_;
  const Clock& clock_;
  std::vector<request_type*> waiting_;  // finished, waiting for the stage, in no particular order
  std::size_t in_progress_ = 0;         // in the current run's retire() calls
  std::mutex stage_mutex_;
  std::vector<State*> scratch_;
};

}  // namespace carousel::detail
