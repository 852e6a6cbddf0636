// Many submitting threads, random cancels, deadlines and a model that throws, against the scheduler thread.
// Checks that every ticket completes exactly once and that the counters add up. Run under TSan in CI.
#include <carousel/step_batcher.hpp>

#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Work {
  int total;
  int done = 0;
  bool poison = false;
  std::atomic<int>* retired = nullptr;  // incremented by retire(): must end at most 1
};

struct StressModel {
  void step(std::span<Work* const> batch) {
    for (Work* w : batch) {
      if (w->poison) throw std::runtime_error("poison");
    }
    for (Work* w : batch)
      ++w->done;
  }
  bool finished(const Work& w) const { return w.done >= w.total; }
  void retire(std::span<Work* const> leaving) {
    for (Work* w : leaving)
      w->retired->fetch_add(1);
  }
  void validate(Work& w) const {  // runs on the submitting threads
    if (w.total <= 0) throw std::invalid_argument("total must be positive");
  }
  int batch_key(const Work& w) const { return w.total % 2; }
  std::size_t total_steps(const Work& w) const { return static_cast<std::size_t>(w.total); }
};

void stress(int threads, carousel::Options options) {
  StressModel model;
  carousel::StepBatcher<StressModel, Work> batcher{model, options};
  batcher.start();
  constexpr int per_thread = 150;
  std::vector<std::array<std::atomic<int>, per_thread>> retired(static_cast<std::size_t>(threads));
  std::mutex tally_mutex;
  std::map<std::string, int> tally;
  std::atomic<int> progress_calls{0};
  std::atomic<int> complete_calls{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t) * 7919u + 1u);
      std::vector<carousel::Ticket<Work>> mine;
      for (int i = 0; i < per_thread; ++i) {
        Work w{static_cast<int>(rng() % 12) + 1};
        w.poison = rng() % 17 == 0;
        if (rng() % 23 == 0) w.total = -w.total;  // refused by validate
        w.retired = &retired[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)];
        carousel::SubmitOptions<> so{
            .priority = static_cast<int>(rng() % 3),
            .on_progress = [&](const carousel::Progress&) { progress_calls.fetch_add(1); },
            .on_complete = [&](carousel::RequestId, std::optional<carousel::Errc>) { complete_calls.fetch_add(1); }};
        if (rng() % 5 == 0) so.deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(rng() % 2000);
        mine.push_back(batcher.submit(std::move(w), std::move(so)));
        if (rng() % 6 == 0) mine[rng() % mine.size()].cancel();
        if (rng() % 10 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
      }
      std::map<std::string, int> local;
      for (auto& ticket : mine) {
        try {
          const Work w = ticket.get();
          CHECK(w.done == w.total);
          ++local["completed"];
        } catch (const carousel::Error& e) {
          ++local[std::string(carousel::to_string(e.code()))];
        }
      }
      std::lock_guard lock(tally_mutex);
      for (auto& [k, v] : local)
        tally[k] += v;
    });
  }
  // A monitor reads the load signal while the scheduler steps the requests it reads (TSan: no race).
  std::atomic<bool> submitters_done{false};
  std::thread monitor([&] {
    while (!submitters_done.load()) {
      const carousel::Stats s = batcher.stats();
      CHECK(s.drain_seconds >= 0.0);
      CHECK(s.remaining_steps <= 12 * (s.queue_depth + s.active));  // at most 12 steps per request
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  });
  for (auto& th : pool)
    th.join();
  submitters_done.store(true);
  monitor.join();
  batcher.stop();
  const carousel::Stats s = batcher.stats();
  const auto total = static_cast<std::uint64_t>(threads * per_thread);
  CHECK(s.submitted == total);
  CHECK(complete_calls.load() == threads * per_thread);  // exactly once per request, whatever its outcome
  CHECK(s.queue_depth == 0);
  CHECK(s.active == 0);
  CHECK(s.retiring == 0);
  CHECK(s.completed + s.failed + s.cancelled + s.expired + s.rejected == total);
  CHECK(static_cast<std::uint64_t>(tally["completed"]) == s.completed);
  CHECK(static_cast<std::uint64_t>(tally["model_error"]) == s.failed);
  CHECK(static_cast<std::uint64_t>(tally["cancelled"]) == s.cancelled);
  CHECK(static_cast<std::uint64_t>(tally["deadline_exceeded"]) == s.expired);
  CHECK(static_cast<std::uint64_t>(tally["queue_full"] + tally["deadline_unreachable"] + tally["invalid_request"]) ==
        s.rejected);
  CHECK(tally["invalid_request"] > 0);
  CHECK(s.request_steps >= static_cast<std::uint64_t>(progress_calls.load()));  // a failing step() gives no progress
  int retired_total = 0;
  for (auto& row : retired) {
    for (auto& r : row) {
      CHECK(r.load() <= 1);
      retired_total += r.load();
    }
  }
  CHECK(static_cast<std::uint64_t>(retired_total) == s.completed);
}

}  // namespace

TEST_CASE("StepBatcher.Concurrency.Stress") {
  const carousel::Options configs[] = {
      {.max_batch_size = 8},
      {.max_batch_size = 4, .max_queue_size = 64, .order = carousel::Order::priority, .preempt = true},
      {.max_batch_size = 8, .admission = carousel::Admission::static_batch, .batch_timeout = 1ms},
      {.max_batch_size = 8, .concurrent_retire = true},
      {.max_batch_size = 4, .admission = carousel::Admission::cost_aware, .concurrent_retire = true},
  };
  for (int threads : {1, 2, 4, 8}) {
    for (std::size_t c = 0; c < std::size(configs); ++c) {
      CAPTURE(threads);
      CAPTURE(c);
      stress(threads, configs[c]);
    }
  }
}
