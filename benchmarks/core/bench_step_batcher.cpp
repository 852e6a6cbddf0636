// Scheduler overhead of StepBatcher, excluding the model: a no-op model, manual driving.
//
//   BM_Iteration/batch:B/waiting:W   one step_once() with B running requests and W more waiting (batch full)
//   BM_Churn/batch:B/stage:S         one step_once() where every request finishes after one step and B new ones join;
//                                    the model has an empty retire(), run in the iteration (S = 0) or, with
//                                    Options::concurrent_retire, by the retire_once() that follows (S = 1)
//   BM_Submit (threads 1..8)         submit() throughput against a running scheduler thread
#include <benchmark/benchmark.h>

#include <carousel/carousel.hpp>

#include <span>
#include <vector>

namespace {

struct Job {
  int total;
  int done = 0;
};

// Counts steps and nothing else.
struct NoOpModel {
  void step(std::span<Job* const> batch) {
    for (Job* j : batch)
      ++j->done;
  }
  bool finished(const Job& j) const { return j.done >= j.total; }
};

// The same with an empty retire().
struct RetiringNoOpModel : NoOpModel {
  void retire(std::span<Job* const> leaving) { benchmark::DoNotOptimize(leaving.data()); }
};

// Steps forever (total < 0) until cancelled; the model does nothing.
struct ForeverModel {
  void step(std::span<Job* const> batch) { benchmark::DoNotOptimize(batch.data()); }
  bool finished(const Job&) const { return false; }
};

void BM_Iteration(benchmark::State& state) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  const auto waiting = static_cast<std::size_t>(state.range(1));
  ForeverModel model;
  carousel::StepBatcher<ForeverModel, Job> batcher{model, {.max_batch_size = batch}};
  std::vector<carousel::Ticket<Job>> tickets;
  for (std::size_t i = 0; i < batch + waiting; ++i)
    tickets.push_back(batcher.submit(Job{-1}));
  batcher.step_once();  // admits the first `batch`
  for (auto _ : state)
    benchmark::DoNotOptimize(batcher.step_once());
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(batch));
  batcher.stop(carousel::StopMode::cancel);
}
BENCHMARK(BM_Iteration)->ArgNames({"batch", "waiting"})->ArgsProduct({{1, 8, 32, 64, 256}, {0, 1000}});

void BM_Churn(benchmark::State& state) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  const bool stage = state.range(1) != 0;
  RetiringNoOpModel model;
  carousel::StepBatcher<RetiringNoOpModel, Job> batcher{model, {.max_batch_size = batch, .concurrent_retire = stage}};
  for (auto _ : state) {
    state.PauseTiming();
    for (std::size_t i = 0; i < batch; ++i)
      batcher.submit(Job{1});
    state.ResumeTiming();
    batcher.step_once();  // admit B, step B, retire B (or hand them to the stage), complete B tickets
    if (stage) batcher.retire_once();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(batch));
}
BENCHMARK(BM_Churn)->ArgNames({"batch", "stage"})->ArgsProduct({{1, 8, 64, 256}, {0, 1}});

carousel::StepBatcher<NoOpModel, Job>* shared_batcher = nullptr;
NoOpModel shared_model;

void BM_Submit(benchmark::State& state) {
  if (state.thread_index() == 0) {
    shared_batcher = new carousel::StepBatcher<NoOpModel, Job>{shared_model, {.max_batch_size = 256}};
    shared_batcher->start();
  }
  for (auto _ : state)
    benchmark::DoNotOptimize(shared_batcher->submit(Job{1}));
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
  if (state.thread_index() == 0) {
    shared_batcher->stop();
    delete shared_batcher;
    shared_batcher = nullptr;
  }
}
BENCHMARK(BM_Submit)->ThreadRange(1, 8)->UseRealTime();

}  // namespace
