#pragma once
// Small models for the core tests.

#include <carousel/carousel.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace carousel::test {

struct Job {
  int total = 30;
  int done = 0;
  int key = 0;                // batch key (for KeyedModel)
  std::size_t cost = 1;       // budget units (for CostedModel)
  bool poison_step = false;   // step() throws while this job is in the batch
  bool poison_admit = false;  // admit() throws while this job joins
  bool poison_retire = false;
  bool poison_finished = false;
  int admits = 0;   // how many times admit() saw this job
  int retires = 0;  // how many times retire() saw this job
};

// Counts steps; throws where a job says so; records every call. Advances an optional ManualClock per step.
struct ToyModel {
  std::vector<std::vector<int>> step_keys;  // the keys of each step() call
  std::vector<std::size_t> step_sizes;
  std::vector<std::size_t> admit_sizes, retire_sizes;
  ManualClock* clock = nullptr;
  std::chrono::nanoseconds step_cost{0};      // fixed part of a step on the manual clock
  std::chrono::nanoseconds per_item_cost{0};  // per request in the step
  std::chrono::nanoseconds retire_cost{0};    // fixed part of a retire() call on the manual clock

  void step(std::span<Job* const> batch) {
    std::vector<int> keys;
    for (Job* j : batch)
      keys.push_back(j->key);
    step_keys.push_back(keys);
    step_sizes.push_back(batch.size());
    if (clock) clock->advance(step_cost + per_item_cost * static_cast<long>(batch.size()));
    for (Job* j : batch) {
      if (j->poison_step) throw std::runtime_error("poisoned step");
    }
    for (Job* j : batch)
      ++j->done;
  }
  bool finished(const Job& j) const {
    if (j.poison_finished && j.done > 0) throw std::runtime_error("poisoned finished");
    return j.done >= j.total;
  }
  void admit(std::span<Job* const> joining) {
    admit_sizes.push_back(joining.size());
    for (Job* j : joining) {
      if (j->poison_admit) throw std::runtime_error("poisoned admit");
    }
    for (Job* j : joining)
      ++j->admits;
  }
  void retire(std::span<Job* const> leaving) {
    retire_sizes.push_back(leaving.size());
    if (clock) clock->advance(retire_cost);
    for (Job* j : leaving) {
      if (j->poison_retire) throw std::invalid_argument("poisoned retire");
    }
    for (Job* j : leaving)
      ++j->retires;
  }
  std::size_t total_steps(const Job& j) const { return static_cast<std::size_t>(j.total); }
  std::size_t cost(const Job& j) const { return j.cost; }
};

// The same, with batch keys.
struct KeyedToyModel : ToyModel {
  int batch_key(const Job& j) const { return j.key; }
};

// The same, with a validate hook: a negative total is refused; a total of 0 means the default of 3 steps.
struct ValidatingToyModel : ToyModel {
  void validate(Job& j) const {
    if (j.total < 0) throw std::invalid_argument("total: must not be negative");
    if (j.total == 0) j.total = 3;
  }
};

// Only the required members.
struct MinimalModel {
  void step(std::span<Job* const> batch) {
    for (Job* j : batch)
      ++j->done;
  }
  bool finished(const Job& j) const { return j.done >= j.total; }
};

}  // namespace carousel::test
