#include <carousel/step_batcher.hpp>

#include <doctest/doctest.h>

#include <carousel/manual_clock.hpp>

#include <chrono>
#include <condition_variable>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "toy_models.hpp"

using namespace std::chrono_literals;
using carousel::Errc;
using carousel::ManualClock;
using carousel::Stats;
using carousel::test::Job;
using carousel::test::KeyedToyModel;
using carousel::test::ToyModel;

namespace {

using Batcher = carousel::StepBatcher<ToyModel, Job, ManualClock>;
using KeyedBatcher = carousel::StepBatcher<KeyedToyModel, Job, ManualClock>;

// Records every iteration's batch as "[a, b, c]" (steps done before the step), and events in between.
template <class B>
struct Log {
  std::vector<std::string> lines;
  explicit Log(B& batcher) {
    batcher.set_observer([this](const auto& it) {
      std::ostringstream s;
      s << '[';
      for (std::size_t i = 0; i < it.batch.size(); ++i)
        s << (i ? ", " : "") << it.batch[i]->steps_done();
      s << ']';
      lines.push_back(s.str());
    });
  }
  void event(const std::string& e) { lines.push_back(e); }
};

// The code a failed ticket carries.
template <class T>
Errc error_of(T& ticket) {
  try {
    ticket.get();
  } catch (const carousel::Error& e) {
    return e.code();
  }
  FAIL("the ticket did not fail");
  return Errc::model_error;
}

std::vector<std::string> expected_continuous_log() {
  std::vector<std::string> e;
  auto range = [&](int a0, int b0, int c0, int n, int width) {
    for (int i = 0; i < n; ++i) {
      std::ostringstream s;
      s << '[' << a0 + i;
      if (width > 1) s << ", " << b0 + i;
      if (width > 2) s << ", " << c0 + i;
      s << ']';
      e.push_back(s.str());
    }
  };
  e.push_back("A arrives");
  range(0, 0, 0, 24, 1);
  e.push_back("B arrives");
  range(24, 0, 0, 5, 2);
  e.push_back("C arrives");
  range(29, 5, 0, 1, 3);
  e.push_back("A responds");
  range(6, 1, 0, 1, 2);
  e.push_back("D arrives");
  range(7, 2, 0, 23, 3);  // [7, 2, 0] ... [29, 24, 22]
  e.push_back("B responds");
  range(25, 23, 0, 5, 2);  // [25, 23] ... [29, 27]
  e.push_back("C responds");
  range(28, 0, 0, 2, 1);  // [28], [29]
  e.push_back("D responds");
  return e;
}

}  // namespace

TEST_CASE("StepBatcher.ExampleLog.Continuous") {
  ToyModel model;
  Batcher batcher{model, {.max_batch_size = 4}};
  Log log(batcher);
  std::map<char, carousel::Ticket<Job>> t;
  auto arrive = [&](char name) {
    log.event(std::string(1, name) + " arrives");
    t[name] = batcher.submit(Job{.total = 30});
  };
  // Steps until `name` responds; checks it responds exactly in the iteration that took it to 30 steps.
  auto until_response = [&](char name) {
    while (!t[name].ready())
      REQUIRE(batcher.step_once());
    CHECK(t[name].get().done == 30);
    log.event(std::string(1, name) + " responds");
  };
  arrive('A');
  for (int i = 0; i < 24; ++i)
    batcher.step_once();
  arrive('B');
  for (int i = 0; i < 5; ++i)
    batcher.step_once();
  arrive('C');
  until_response('A');
  batcher.step_once();
  arrive('D');
  until_response('B');
  until_response('C');
  until_response('D');
  CHECK_FALSE(batcher.step_once());
  CHECK(log.lines == expected_continuous_log());
}

TEST_CASE("StepBatcher.ExampleLog.Static") {
  ToyModel model;
  Batcher batcher{model, {.max_batch_size = 4, .admission = carousel::Admission::static_batch}};
  Log log(batcher);
  std::vector<carousel::Ticket<Job>> t;
  for (int i = 0; i < 4; ++i)
    t.push_back(batcher.submit(Job{.total = 30}));
  for (int i = 0; i < 30; ++i) {
    for (auto& ticket : t)
      REQUIRE_FALSE(ticket.ready());
    REQUIRE(batcher.step_once());
  }
  for (auto& ticket : t)
    CHECK(ticket.get().done == 30);
  std::vector<std::string> expected;
  for (int i = 0; i < 30; ++i) {
    const auto n = std::to_string(i);
    expected.push_back("[" + n + ", " + n + ", " + n + ", " + n + "]");
  }
  CHECK(log.lines == expected);
}

TEST_CASE("StepBatcher.Static.TimeoutAndNoJoins") {
  ManualClock clock;
  ToyModel model;
  Batcher batcher{
      model, {.max_batch_size = 4, .admission = carousel::Admission::static_batch, .batch_timeout = 300ms}, clock};
  auto a = batcher.submit(Job{.total = 3});
  clock.advance(100ms);
  auto b = batcher.submit(Job{.total = 5});
  SUBCASE("a partial batch waits for the timeout of its oldest member") {
    CHECK_FALSE(batcher.step_once());
    clock.advance(199ms);
    CHECK_FALSE(batcher.step_once());
    clock.advance(1ms);
    CHECK(batcher.step_once());
    CHECK(model.step_sizes.back() == 2);
    SUBCASE("no joins while the batch runs; members leave as they finish") {
      auto c = batcher.submit(Job{.total = 1});
      clock.advance(1s);
      batcher.step_once();
      batcher.step_once();
      CHECK(a.ready());
      CHECK(model.step_sizes == std::vector<std::size_t>{2, 2, 2});
      batcher.step_once();
      batcher.step_once();
      CHECK(model.step_sizes.back() == 1);
      CHECK_FALSE(c.ready());
      CHECK(b.ready());
      batcher.step_once();  // c's batch forms now: its timeout has long passed
      CHECK(c.ready());
      CHECK(model.step_sizes.back() == 1);
    }
  }
  SUBCASE("a full batch starts at once") {
    auto c = batcher.submit(Job{.total = 1});
    auto d = batcher.submit(Job{.total = 1});
    CHECK(batcher.step_once());
    CHECK(model.step_sizes.back() == 4);
  }
  SUBCASE("stop(drain) runs a partial batch without waiting") {
    batcher.stop();
    CHECK(a.get().done == 3);
    CHECK(b.get().done == 5);
  }
}

TEST_CASE("StepBatcher.Options.Validation") {
  ToyModel model;
  CHECK_THROWS_AS(Batcher(model, {.max_batch_size = 0}), std::invalid_argument);
  CHECK_THROWS_AS(Batcher(model, {.order = carousel::Order::fifo, .preempt = true}), std::invalid_argument);
  CHECK_THROWS_AS(
      Batcher(model,
              {.admission = carousel::Admission::static_batch, .order = carousel::Order::priority, .preempt = true}),
      std::invalid_argument);
  carousel::test::MinimalModel minimal;
  using MinimalBatcher = carousel::StepBatcher<carousel::test::MinimalModel, Job>;
  CHECK_THROWS_AS(MinimalBatcher(minimal, {.order = carousel::Order::fewest_remaining}), std::invalid_argument);
  CHECK_NOTHROW(Batcher(model, {.order = carousel::Order::priority, .preempt = true}));
}

TEST_CASE("StepBatcher.Options.MaxBatchSize") {
  ToyModel model;
  Batcher batcher{model, {.max_batch_size = 3}};
  std::vector<carousel::Ticket<Job>> t;
  for (int i = 0; i < 7; ++i)
    t.push_back(batcher.submit(Job{.total = 2 + i}));
  while (batcher.step_once()) {
  }
  for (auto& ticket : t)
    CHECK(ticket.get().done >= 2);
  for (std::size_t n : model.step_sizes)
    CHECK(n <= 3);
  CHECK(model.step_sizes.front() == 3);
}

TEST_CASE("StepBatcher.Options.MaxBatchCost") {
  ToyModel model;
  Batcher batcher{model, {.max_batch_size = 8, .max_batch_cost = 4}};
  auto a = batcher.submit(Job{.total = 2, .cost = 3});
  auto b = batcher.submit(Job{.total = 2, .cost = 2});  // 3 + 2 > 4: waits, and blocks those behind it (FIFO)
  auto c = batcher.submit(Job{.total = 2, .cost = 1});
  batcher.step_once();
  CHECK(model.step_sizes.back() == 1);
  batcher.step_once();  // a leaves after this step
  CHECK(a.ready());
  batcher.step_once();
  CHECK(model.step_sizes.back() == 2);  // b and c together: 3 units
  SUBCASE("a request over the whole budget still runs alone") {
    auto big = batcher.submit(Job{.total = 1, .cost = 10});
    while (batcher.step_once()) {
    }
    CHECK(big.get().done == 1);
    CHECK(model.step_sizes.back() == 1);
  }
}

TEST_CASE("StepBatcher.Options.MaxQueueSize") {
  ToyModel model;
  Batcher batcher{model, {.max_batch_size = 1, .max_queue_size = 2}};
  auto a = batcher.submit(Job{.total = 1});
  auto b = batcher.submit(Job{.total = 1});
  auto c = batcher.submit(Job{.total = 1});
  CHECK(c.ready());
  CHECK(c.status() == carousel::RequestStatus::failed);
  CHECK(c.error_code() == Errc::queue_full);
  CHECK(error_of(c) == Errc::queue_full);
  batcher.step_once();  // a admitted: the queue has room again
  auto d = batcher.submit(Job{.total = 1});
  CHECK_FALSE(d.ready());
  while (batcher.step_once()) {
  }
  CHECK(a.get().done == 1);
  CHECK(b.get().done == 1);
  CHECK(d.get().done == 1);
  CHECK(batcher.stats().rejected == 1);
}

TEST_CASE("StepBatcher.Validate") {
  using ValidatingBatcher = carousel::StepBatcher<carousel::test::ValidatingToyModel, Job, ManualClock>;
  carousel::test::ValidatingToyModel model;
  ValidatingBatcher batcher{model, {.max_batch_size = 2, .max_queue_size = 1}};
  std::vector<std::optional<Errc>> completions;
  const auto caller = std::this_thread::get_id();
  auto record = [&](carousel::RequestId, std::optional<Errc> e) {
    CHECK(std::this_thread::get_id() == caller);
    completions.push_back(e);
  };
  SUBCASE("an invalid request fails at once with invalid_request, the model's exception nested") {
    auto bad = batcher.submit(Job{.total = -1}, {.on_complete = record});
    REQUIRE(bad.ready());
    CHECK(bad.status() == carousel::RequestStatus::failed);
    CHECK(bad.error_code() == Errc::invalid_request);
    CHECK(completions == std::vector<std::optional<Errc>>{Errc::invalid_request});
    try {
      bad.get();
      FAIL("no error");
    } catch (const carousel::Error& e) {
      CHECK(e.code() == Errc::invalid_request);
      CHECK(std::string(e.what()).find("total: must not be negative") != std::string::npos);
      try {
        std::rethrow_if_nested(e);
        FAIL("no nested cause");
      } catch (const std::invalid_argument& cause) {
        CHECK(std::string(cause.what()) == "total: must not be negative");
      }
    }
    CHECK_FALSE(batcher.step_once());  // the model never saw it
    CHECK(model.admit_sizes.empty());
    const carousel::Stats s = batcher.stats();
    CHECK(s.submitted == 1);
    CHECK(s.rejected == 1);
    CHECK(s.queue_depth == 0);
  }
  SUBCASE("validate runs first and may normalise the state: total_steps sees what it left") {
    std::vector<carousel::Progress> progress;
    auto t =
        batcher.submit(Job{.total = 0}, {.on_progress = [&](const carousel::Progress& p) { progress.push_back(p); }});
    while (batcher.step_once()) {
    }
    CHECK(t.get().done == 3);
    REQUIRE(progress.size() == 3);
    CHECK(progress.back().total_steps == 3);
  }
  SUBCASE("an invalid request is refused as invalid even when the queue is full") {
    auto queued = batcher.submit(Job{.total = 1});
    auto full = batcher.submit(Job{.total = 1});
    auto bad = batcher.submit(Job{.total = -5});
    CHECK(full.error_code() == Errc::queue_full);
    CHECK(bad.error_code() == Errc::invalid_request);
    CHECK(batcher.stats().rejected == 2);
    while (batcher.step_once()) {
    }
    CHECK(queued.get().done == 1);
  }
}

TEST_CASE("StepBatcher.Order") {
  ToyModel model;
  auto admitted_order = [&](carousel::Order order, auto submit_all) {
    ManualClock clock;
    Batcher batcher{model, {.max_batch_size = 1, .order = order}, clock};
    std::vector<carousel::RequestId> seen;
    batcher.set_observer([&](const auto& it) {
      if (seen.empty() || seen.back() != it.batch[0]->id()) seen.push_back(it.batch[0]->id());
    });
    submit_all(batcher, clock);
    while (batcher.step_once()) {
    }
    return seen;
  };
  SUBCASE("fifo") {
    auto seen = admitted_order(carousel::Order::fifo, [](Batcher& b, ManualClock&) {
      for (int i = 0; i < 4; ++i)
        b.submit(Job{.total = 1}, {.priority = i});
    });
    CHECK(seen == std::vector<carousel::RequestId>{1, 2, 3, 4});
  }
  SUBCASE("priority: larger first, ties in submission order") {
    auto seen = admitted_order(carousel::Order::priority, [](Batcher& b, ManualClock&) {
      b.submit(Job{.total = 1}, {.priority = 1});
      b.submit(Job{.total = 1}, {.priority = 5});
      b.submit(Job{.total = 1}, {.priority = 1});
      b.submit(Job{.total = 1}, {.priority = 9});
    });
    CHECK(seen == std::vector<carousel::RequestId>{4, 2, 1, 3});
  }
  SUBCASE("earliest deadline: no deadline last") {
    auto seen = admitted_order(carousel::Order::earliest_deadline, [](Batcher& b, ManualClock& c) {
      b.submit(Job{.total = 1});
      b.submit(Job{.total = 1}, {.deadline = c.now() + 30s});
      b.submit(Job{.total = 1}, {.deadline = c.now() + 10s});
      b.submit(Job{.total = 1}, {.deadline = c.now() + 20s});
    });
    CHECK(seen == std::vector<carousel::RequestId>{3, 4, 2, 1});
  }
  SUBCASE("fewest remaining steps") {
    auto seen = admitted_order(carousel::Order::fewest_remaining, [](Batcher& b, ManualClock&) {
      b.submit(Job{.total = 5});
      b.submit(Job{.total = 2});
      b.submit(Job{.total = 9});
      b.submit(Job{.total = 2});
    });
    CHECK(seen == std::vector<carousel::RequestId>{2, 4, 1, 3});
  }
}

TEST_CASE("StepBatcher.Preemption") {
  ToyModel model;
  Batcher batcher{model, {.max_batch_size = 2, .order = carousel::Order::priority, .preempt = true}};
  Log log(batcher);
  auto low = batcher.submit(Job{.total = 10}, {.priority = 0});
  auto mid = batcher.submit(Job{.total = 10}, {.priority = 1});
  for (int i = 0; i < 3; ++i)
    batcher.step_once();
  auto high = batcher.submit(Job{.total = 2}, {.priority = 5});
  batcher.step_once();
  CHECK(low.status() == carousel::RequestStatus::suspended);
  CHECK(mid.status() == carousel::RequestStatus::running);
  batcher.step_once();
  CHECK(high.ready());
  batcher.step_once();  // low resumes where it stopped
  CHECK(low.status() == carousel::RequestStatus::running);
  while (batcher.step_once()) {
  }
  const Job l = low.get();
  CHECK(l.done == 10);
  CHECK(l.admits == 1);  // resumed without a second admit
  CHECK(l.retires == 1);
  CHECK(high.get().done == 2);
  CHECK(mid.get().done == 10);
  // Admission order is kept: mid (admitted first, by priority) still comes before low after low resumes.
  const std::vector<std::string> head{"[0, 0]", "[1, 1]", "[2, 2]", "[3, 0]", "[4, 1]", "[5, 3]"};
  const std::vector<std::string> got(log.lines.begin(), log.lines.begin() + 6);
  INFO(got[0], got[1], got[2], got[3], got[4], got[5]);
  CHECK(got == head);
  CHECK(batcher.stats().preempted == 1);
  SUBCASE("equal priority never preempts") {
    auto same = batcher.submit(Job{.total = 1}, {.priority = 0});
    auto other = batcher.submit(Job{.total = 5}, {.priority = 0});
    auto third = batcher.submit(Job{.total = 5}, {.priority = 0});
    batcher.step_once();
    CHECK(third.status() == carousel::RequestStatus::queued);
    while (batcher.step_once()) {
    }
    CHECK(batcher.stats().preempted == 1);
  }
}

TEST_CASE("StepBatcher.Deadline.ExpiresWhileQueued") {
  ManualClock clock;
  ToyModel model;
  Batcher batcher{model, {.max_batch_size = 1}, clock};
  auto running = batcher.submit(Job{.total = 5});
  auto late = batcher.submit(Job{.total = 1}, {.deadline = clock.now() + 10ms});
  batcher.step_once();
  CHECK_FALSE(late.ready());
  clock.advance(10ms);
  batcher.step_once();
  REQUIRE(late.ready());
  CHECK(error_of(late) == Errc::deadline_exceeded);
  while (batcher.step_once()) {
  }
  CHECK(running.get().done == 5);
  CHECK(batcher.stats().expired == 1);
}

TEST_CASE("StepBatcher.Deadline.SuspendedExpiresWhileQueued") {
  // A request suspended by preemption is queued again with its deadline: the deadline expires it while it waits, and
  // it is not re-admitted for one more step first.
  ManualClock clock;
  ToyModel model;
  model.clock = &clock;
  model.step_cost = 10ms;
  Batcher batcher{model, {.max_batch_size = 1, .order = carousel::Order::priority, .preempt = true}, clock};
  int low_steps = 0;
  auto low = batcher.submit(
      Job{.total = 10},
      {.priority = 1, .deadline = clock.now() + 25ms, .on_progress = [&](const carousel::Progress&) { ++low_steps; }});
  auto early = batcher.submit(Job{.total = 1}, {.priority = 0, .deadline = clock.now() + 5ms});
  batcher.step_once();  // 0 ms: low runs; early waits
  batcher.step_once();  // 10 ms: early expires while queued (the queue's deadline bound is spent); low runs
  CHECK(error_of(early) == Errc::deadline_exceeded);
  auto high = batcher.submit(Job{.total = 2}, {.priority = 5});
  batcher.step_once();  // 20 ms: high suspends low
  CHECK(low.status() == carousel::RequestStatus::suspended);
  batcher.step_once();  // 30 ms: low's deadline (25 ms) has passed while it was queued
  REQUIRE(low.ready());
  try {
    low.get();
    FAIL("low did not fail");
  } catch (const carousel::Error& e) {
    CHECK(e.code() == Errc::deadline_exceeded);
    CHECK(std::string(e.what()).find("queued") != std::string::npos);
  }
  CHECK(low_steps == 2);
  CHECK(high.get().done == 2);
  CHECK(batcher.stats().expired == 2);
}

TEST_CASE("StepBatcher.Deadline.StopsAtStepBoundary") {
  ManualClock clock;
  ToyModel model;
  model.clock = &clock;
  model.step_cost = 10ms;
  Batcher batcher{model, {}, clock};
  int progress = 0;
  auto t =
      batcher.submit(Job{.total = 30}, {.deadline = clock.now() + 55ms, .on_progress = [&](auto&) { ++progress; }});
  while (batcher.step_once()) {
  }
  CHECK(error_of(t) == Errc::deadline_exceeded);
  CHECK(progress == 6);  // steps end at 10, 20, ..., 60 ms; the boundary at 60 ms is past the deadline
}

TEST_CASE("StepBatcher.Deadline.Unreachable") {
  ManualClock clock;
  ToyModel model;
  model.clock = &clock;
  model.step_cost = 10ms;
  Batcher batcher{model, {}, clock};
  SUBCASE("no measurement yet: admitted") {
    auto t = batcher.submit(Job{.total = 30}, {.deadline = clock.now() + 100ms});
    batcher.step_once();
    CHECK(t.status() == carousel::RequestStatus::running);
  }
  SUBCASE("30 steps x 10 ms cannot meet 100 ms; can meet 1 s") {
    auto warm = batcher.submit(Job{.total = 3});
    while (batcher.step_once()) {
    }
    REQUIRE(batcher.predicted_step_time(1).has_value());
    CHECK(*batcher.predicted_step_time(1) == 10ms);
    auto hopeless = batcher.submit(Job{.total = 30}, {.deadline = clock.now() + 100ms});
    auto fine = batcher.submit(Job{.total = 30}, {.deadline = clock.now() + 1s});
    batcher.step_once();
    REQUIRE(hopeless.ready());
    CHECK(error_of(hopeless) == Errc::deadline_unreachable);
    while (batcher.step_once()) {
    }
    CHECK(fine.get().done == 30);
    CHECK(batcher.stats().rejected == 1);
  }
}

TEST_CASE("StepBatcher.Cancel") {
  ToyModel model;
  Batcher batcher{model, {.max_batch_size = 1}};
  auto running = batcher.submit(Job{.total = 10});
  auto queued = batcher.submit(Job{.total = 10});
  batcher.step_once();
  SUBCASE("while queued: at once") {
    CHECK(queued.cancel());
    CHECK(queued.ready());
    CHECK(error_of(queued) == Errc::cancelled);
    CHECK(batcher.stats().queue_depth == 0);
  }
  SUBCASE("while running: at the next step boundary, without retire") {
    CHECK(running.cancel());
    CHECK_FALSE(running.cancel());  // only once
    CHECK_FALSE(running.ready());
    const auto steps = model.step_sizes.size();
    batcher.step_once();
    CHECK(running.ready());
    CHECK(error_of(running) == Errc::cancelled);
    CHECK(model.retire_sizes.empty());
    CHECK(model.step_sizes.size() == steps + 1);  // the next request ran in that iteration
    CHECK(queued.status() == carousel::RequestStatus::running);
  }
  SUBCASE("after completion: no effect") {
    while (batcher.step_once()) {
    }
    CHECK_FALSE(running.cancel());
    CHECK(running.get().done == 10);
  }
}

TEST_CASE("StepBatcher.BatchKeys") {
  KeyedToyModel model;
  KeyedBatcher batcher{model, {.max_batch_size = 6}};
  Log log(batcher);
  std::vector<carousel::Ticket<Job>> t;
  for (int i = 0; i < 6; ++i)
    t.push_back(batcher.submit(Job{.total = 4 + i, .key = i % 3}));
  while (batcher.step_once()) {
  }
  for (std::size_t i = 0; i < t.size(); ++i)
    CHECK(t[i].get().done == static_cast<int>(4 + i));
  SUBCASE("different keys never share a step() call") {
    for (const auto& keys : model.step_keys) {
      for (int k : keys)
        CHECK(k == keys.front());
    }
  }
  SUBCASE("every request advances once per iteration: each iteration steps every group") {
    // 9 iterations (the longest request). Totals by key: 0 -> {4, 7}, 1 -> {5, 8}, 2 -> {6, 9}: all three keys are
    // present for 7 iterations, two for the 8th, one for the 9th: 24 step() calls.
    CHECK(log.lines.size() == 9);
    CHECK(model.step_keys.size() == 24);
    CHECK(log.lines.front() == "[0, 0, 0, 0, 0, 0]");
  }
}

TEST_CASE("StepBatcher.Faults") {
  KeyedToyModel model;
  KeyedBatcher batcher{model, {.max_batch_size = 8}};
  auto model_error = [](carousel::Ticket<Job>& t) -> std::string {
    try {
      t.get();
    } catch (const carousel::Error& e) {
      CHECK(e.code() == Errc::model_error);
      try {
        std::rethrow_if_nested(e);
      } catch (const std::exception& cause) {
        return cause.what();
      }
      FAIL("no nested cause");
    }
    FAIL("no error");
    return {};
  };
  SUBCASE("step throws: only that key group fails, the loop goes on") {
    auto bad = batcher.submit(Job{.total = 3, .key = 1, .poison_step = true});
    auto same_group = batcher.submit(Job{.total = 3, .key = 1});
    auto other_group = batcher.submit(Job{.total = 3, .key = 2});
    while (batcher.step_once()) {
    }
    CHECK(model_error(bad) == "poisoned step");
    CHECK(model_error(same_group) == "poisoned step");
    CHECK(other_group.get().done == 3);
    auto later = batcher.submit(Job{.total = 2, .key = 1});
    while (batcher.step_once()) {
    }
    CHECK(later.get().done == 2);
    CHECK(batcher.stats().failed == 2);
  }
  SUBCASE("admit throws") {
    auto bad = batcher.submit(Job{.total = 3, .poison_admit = true});
    auto other = batcher.submit(Job{.total = 3, .key = 5});
    while (batcher.step_once()) {
    }
    CHECK(model_error(bad) == "poisoned admit");
    CHECK(other.get().done == 3);
  }
  SUBCASE("retire throws") {
    auto bad = batcher.submit(Job{.total = 3, .poison_retire = true});
    auto other = batcher.submit(Job{.total = 4});
    while (batcher.step_once()) {
    }
    CHECK(model_error(bad) == "poisoned retire");
    CHECK(other.get().retires == 1);
  }
  SUBCASE("finished throws: only that request") {
    auto bad = batcher.submit(Job{.total = 3, .poison_finished = true});
    auto neighbour = batcher.submit(Job{.total = 3});
    while (batcher.step_once()) {
    }
    CHECK(model_error(bad) == "poisoned finished");
    CHECK(neighbour.get().done == 3);
  }
  SUBCASE("on_progress throws: only that request") {
    auto bad = batcher.submit(Job{.total = 3}, {.on_progress = [](auto&) { throw std::runtime_error("callback"); }});
    auto neighbour = batcher.submit(Job{.total = 3});
    while (batcher.step_once()) {
    }
    CHECK(model_error(bad) == "callback");
    CHECK(neighbour.get().done == 3);
  }
  SUBCASE("an observer that throws changes nothing") {
    batcher.set_observer([](const auto&) { throw std::runtime_error("observer"); });
    auto t = batcher.submit(Job{.total = 3});
    while (batcher.step_once()) {
    }
    CHECK(t.get().done == 3);
  }
}

TEST_CASE("StepBatcher.Hooks") {
  ToyModel model;
  Batcher batcher{model, {.max_batch_size = 4}};
  std::vector<carousel::Progress> progress;
  auto a =
      batcher.submit(Job{.total = 2}, {.on_progress = [&](const carousel::Progress& p) { progress.push_back(p); }});
  auto b = batcher.submit(Job{.total = 2});
  auto c = batcher.submit(Job{.total = 3});
  while (batcher.step_once()) {
  }
  SUBCASE("admit once for the joiners together; retire the leavers together") {
    CHECK(model.admit_sizes == std::vector<std::size_t>{3});
    CHECK(model.retire_sizes == std::vector<std::size_t>{2, 1});
  }
  SUBCASE("progress after every step, with the total") {
    REQUIRE(progress.size() == 2);
    CHECK(progress[0].id == a.id());
    CHECK(progress[0].steps_done == 1);
    CHECK(progress[1].steps_done == 2);
    CHECK(progress[1].total_steps == 2);
  }
  SUBCASE("a request that is finished on arrival leaves without a step") {
    auto zero = batcher.submit(Job{.total = 0});
    CHECK(batcher.step_once());
    CHECK(zero.get().done == 0);
    CHECK(model.retire_sizes.back() == 1);
  }
}

TEST_CASE("StepBatcher.Stop") {
  ToyModel model;
  SUBCASE("drain (manual driving) finishes everything, then refuses") {
    Batcher batcher{model, {.max_batch_size = 2}};
    auto a = batcher.submit(Job{.total = 5});
    auto b = batcher.submit(Job{.total = 5});
    auto c = batcher.submit(Job{.total = 5});
    batcher.stop();
    CHECK(a.get().done == 5);
    CHECK(c.get().done == 5);
    auto late = batcher.submit(Job{.total = 1});
    CHECK(error_of(late) == Errc::shut_down);
    CHECK_THROWS_AS(batcher.start(), std::logic_error);
  }
  SUBCASE("cancel fails what is queued and running") {
    Batcher batcher{model, {.max_batch_size = 1}};
    auto a = batcher.submit(Job{.total = 5});
    auto b = batcher.submit(Job{.total = 5});
    batcher.step_once();
    batcher.stop(carousel::StopMode::cancel);
    CHECK(error_of(a) == Errc::cancelled);
    CHECK(error_of(b) == Errc::cancelled);
    CHECK(batcher.stats().cancelled == 2);
  }
  SUBCASE("the destructor cancels; tickets outlive the batcher") {
    carousel::Ticket<Job> t;
    {
      Batcher batcher{model};
      t = batcher.submit(Job{.total = 5});
    }
    CHECK(error_of(t) == Errc::cancelled);
  }
}

TEST_CASE("StepBatcher.Stats") {
  ManualClock clock;
  ToyModel model;
  model.clock = &clock;
  model.step_cost = 4ms;
  model.per_item_cost = 1ms;
  Batcher batcher{model, {.max_batch_size = 2, .max_queue_size = 3}, clock};
  auto a = batcher.submit(Job{.total = 2});
  auto b = batcher.submit(Job{.total = 4});
  auto c = batcher.submit(Job{.total = 1});
  auto rejected1 = batcher.submit(Job{.total = 1});
  auto rejected2 = batcher.submit(Job{.total = 1});
  CHECK(rejected1.error_code() == Errc::queue_full);
  CHECK(rejected2.error_code() == Errc::queue_full);
  batcher.step_once();
  auto d = batcher.submit(Job{.total = 9});
  d.cancel();
  while (batcher.step_once()) {
  }
  const carousel::Stats s = batcher.stats();
  CHECK(s.submitted == 6);
  CHECK(s.completed == 3);
  CHECK(s.rejected == 2);
  CHECK(s.cancelled == 1);
  CHECK(s.admitted == 3);
  CHECK(s.submitted == s.completed + s.failed + s.cancelled + s.expired + s.rejected + s.queue_depth + s.active);
  // Iterations: [a, b] x2, then [b, c], then [b] -> 4 iterations, 7 request-steps.
  CHECK(s.iterations == 4);
  CHECK(s.request_steps == 7);
  CHECK(s.mean_batch_size == doctest::Approx(7.0 / 4));
  CHECK(s.mean_occupancy == doctest::Approx(7.0 / 8));
  CHECK(s.step_time.count() == 4);
  CHECK(s.step_time.sum() == doctest::Approx(0.006 * 3 + 0.005));
  CHECK(s.queue_wait.count() == 3);
  CHECK(s.latency.count() == 3);
  CHECK(s.latency.max() == doctest::Approx(0.023));  // b: 6 + 6 + 6 + 5 ms
  CHECK(*batcher.predicted_step_time(2) == 6ms);
  CHECK(*batcher.predicted_step_time(1) == 5ms);
  CHECK(*batcher.predicted_step_time(3) == 7ms);  // the line through the measured sizes
}

TEST_CASE("StepBatcher.Stats.RemainingStepsAndDrain") {
  // t(b) = 4 ms + 1 ms * b and a retire() of 2 ms on the virtual clock; at most 2 requests per iteration.
  ManualClock clock;
  ToyModel model;
  model.clock = &clock;
  model.step_cost = 4ms;
  model.per_item_cost = 1ms;
  model.retire_cost = 2ms;
  Batcher batcher{model, {.max_batch_size = 2}, clock};
  CHECK(batcher.stats().remaining_steps == 0);
  CHECK(batcher.stats().drain_seconds == 0.0);
  SUBCASE("before any measurement: the steps are known, the time is not") {
    auto a = batcher.submit(Job{.total = 30});
    auto b = batcher.submit(Job{.total = 20});
    CHECK(batcher.stats().remaining_steps == 50);
    CHECK(batcher.stats().drain_seconds == 0.0);
  }
  SUBCASE("with t(1), t(2), d(1), d(2) measured, the estimate is the drain the batcher then takes") {
    auto w1 = batcher.submit(Job{.total = 1});
    auto w2 = batcher.submit(Job{.total = 1});
    batcher.step_once();  // t(2) = 6 ms, d(2) = 2 ms
    auto w3 = batcher.submit(Job{.total = 1});
    batcher.step_once();  // t(1) = 5 ms, d(1) = 2 ms
    REQUIRE(w3.ready());
    CHECK(batcher.stats().drain_seconds == 0.0);  // idle
    auto a = batcher.submit(Job{.total = 3});
    auto b = batcher.submit(Job{.total = 1});
    auto c = batcher.submit(Job{.total = 2});
    // a runs [0,3), b [0,1), c takes b's place [1,3): 3 iterations of t(2) = 18 ms, d(1) after the first and d(2)
    // after the third: 22 ms.
    Stats s = batcher.stats();
    CHECK(s.remaining_steps == 6);
    CHECK(s.drain_seconds == doctest::Approx(0.022));
    const auto start = clock.now();
    batcher.step_once();  // a 2 left, b done, c queued (2)
    s = batcher.stats();
    CHECK(s.remaining_steps == 4);
    CHECK(s.drain_seconds == doctest::Approx(0.014));  // a and c together: 2 x t(2) + d(2)
    while (batcher.step_once()) {
    }
    CHECK(clock.now() - start == 22ms);  // what the first estimate said
    CHECK(batcher.stats().remaining_steps == 0);
    CHECK(batcher.stats().drain_seconds == 0.0);
  }
  SUBCASE("a model without total_steps: every queued or running request counts one step") {
    carousel::test::MinimalModel minimal;
    carousel::StepBatcher<carousel::test::MinimalModel, Job> plain{minimal, {.max_batch_size = 2}};
    auto a = plain.submit(Job{.total = 30});
    auto b = plain.submit(Job{.total = 30});
    auto c = plain.submit(Job{.total = 30});
    plain.step_once();
    CHECK(plain.stats().remaining_steps == 3);
    plain.stop(carousel::StopMode::cancel);
  }
}

TEST_CASE("StepBatcher.Thread") {
  ToyModel model;
  carousel::StepBatcher<ToyModel, Job> batcher{model, {.max_batch_size = 4}};
  batcher.start();
  CHECK_THROWS_AS(batcher.start(), std::logic_error);
  CHECK_THROWS_AS(batcher.step_once(), std::logic_error);
  SUBCASE("submit wakes the scheduler; tickets complete") {
    std::vector<carousel::Ticket<Job>> t;
    for (int i = 0; i < 10; ++i)
      t.push_back(batcher.submit(Job{.total = 5 + i}));
    for (std::size_t i = 0; i < t.size(); ++i)
      CHECK(t[i].get().done == static_cast<int>(5 + i));
  }
  SUBCASE("an idle scheduler uses no CPU and does no iterations") {
    auto warm = batcher.submit(Job{.total = 3});
    warm.get();
    const auto iterations = batcher.stats().iterations;
    const std::clock_t cpu0 = std::clock();
    std::this_thread::sleep_for(300ms);
    const double cpu_seconds = static_cast<double>(std::clock() - cpu0) / CLOCKS_PER_SEC;
    CHECK(cpu_seconds < 0.05);  // a polling loop would burn ~0.3 s of one core here
    CHECK(batcher.stats().iterations == iterations);
    auto t = batcher.submit(Job{.total = 1});
    CHECK(t.wait_for(10s) == std::future_status::ready);
  }
  SUBCASE("stop(drain) finishes what was submitted") {
    auto t = batcher.submit(Job{.total = 50});
    batcher.stop();
    CHECK(t.get().done == 50);
  }
  batcher.stop();
}

TEST_CASE("StepBatcher.CostAware") {
  // t(b) = a + c*b on the virtual clock. Warm-up measures b = 1 and b = 2; then one request runs and others wait.
  // `gap` is the virtual time between submits: it sets the arrival rate the batcher measures.
  auto run = [](std::chrono::milliseconds a, std::chrono::milliseconds c, int waiting, std::chrono::milliseconds gap) {
    ManualClock clock;
    ToyModel model;
    model.clock = &clock;
    model.step_cost = a;
    model.per_item_cost = c;
    Batcher batcher{model, {.max_batch_size = 8, .admission = carousel::Admission::cost_aware}, clock};
    auto w1 = batcher.submit(Job{.total = 3});
    batcher.step_once();  // measures t(1); with one size known, t(2) is predicted equal: the next request joins
    clock.advance(gap);
    auto w2 = batcher.submit(Job{.total = 2});
    while (batcher.step_once()) {
    }
    REQUIRE(batcher.predicted_step_time(1) == a + c);
    REQUIRE(batcher.predicted_step_time(2) == a + 2 * c);
    clock.advance(gap);
    auto running = batcher.submit(Job{.total = 10});
    batcher.step_once();
    std::vector<carousel::Ticket<Job>> t;
    for (int i = 0; i < waiting; ++i) {
      clock.advance(gap);
      t.push_back(batcher.submit(Job{.total = 10}));
    }
    batcher.step_once();
    const std::size_t joined = model.step_sizes.back() - 1;
    while (batcher.step_once()) {
    }
    for (auto& ticket : t)
      CHECK(ticket.get().done == 10);
    CHECK(running.get().done == 10);
    return joined;
  };
  // Rare arrivals (one per 1000 s): the marginal rule alone decides. The running request has 9 steps left, each
  // waiter 10: the k-th joiner (b running) needs a * 9 * (1 + behind) >= c * 9 * b, i.e. 1 + behind >= b * c / a.
  const auto rare = std::chrono::milliseconds(1000000);
  SUBCASE("linear regime (a < c): one waiter does not join; a long enough queue does, for throughput") {
    CHECK(run(10ms, 60ms, 1, rare) == 0);
    CHECK(run(10ms, 60ms, 5, rare) == 0);   // the first of 5 has 4 behind it: 5 < 6
    CHECK(run(10ms, 60ms, 6, rare) == 1);   // 6 >= 6; the second would need 1 + 4 >= 12
    CHECK(run(10ms, 60ms, 17, rare) == 2);  // 17 >= 6, 16 >= 12, but not 15 >= 18
  }
  SUBCASE("batch-friendly regime (a > c): joins at once, up to 1 + a/c = 6 without a queue") {
    CHECK(run(50ms, 10ms, 1, rare) == 1);
    CHECK(run(50ms, 10ms, 7, rare) == 6);
  }
  SUBCASE("balanced regime: pairs, but does not grow the batch without a queue") {
    CHECK(run(20ms, 15ms, 1, rare) == 1);
  }
  SUBCASE("heavy load: the measured arrival rate raises the batch size to keep up") {
    // One arrival per 0.6 s, ~7.5 steps per request on average: batch 1 serves 1.9 requests/s (rho 0.88, M/M/1 wait
    // 3.8 s, latency 4.3 s), batch 2 serves 2.05/s (rho 0.81, wait 2.1 s, latency 3.1 s): the target is 2.
    const std::size_t joined = run(10ms, 60ms, 3, 600ms);
    CHECK(joined >= 1);
    CHECK(run(10ms, 60ms, 3, rare) == 0);
  }
}

TEST_CASE("StepBatcher.CostAware.Retirement") {
  ManualClock clock;
  ToyModel model;
  model.clock = &clock;
  model.step_cost = 10ms;
  model.per_item_cost = 10ms;
  model.retire_cost = 100ms;  // a decode with a large fixed part
  Batcher batcher{model, {.max_batch_size = 8, .admission = carousel::Admission::cost_aware}, clock};
  // Warm-up: retire() of 2 and of 1 measured (nothing else runs, so nothing is held).
  auto w1 = batcher.submit(Job{.total = 2});
  auto w2 = batcher.submit(Job{.total = 2});
  while (batcher.step_once()) {
  }
  auto w3 = batcher.submit(Job{.total = 1});
  while (batcher.step_once()) {
  }
  REQUIRE(model.retire_sizes == std::vector<std::size_t>{2, 1});
  SUBCASE("a request finishing one step before another is held so both retire in one call") {
    auto a = batcher.submit(Job{.total = 5});
    auto b = batcher.submit(Job{.total = 6});
    for (int i = 0; i < 5; ++i)
      batcher.step_once();
    CHECK_FALSE(a.ready());  // held: retiring now would cost b a 100 ms fixed decode, holding costs a one 30 ms step
    CHECK(batcher.stats().active == 2);
    batcher.step_once();
    CHECK(a.ready());
    CHECK(b.ready());
    CHECK(model.retire_sizes.back() == 2);
    CHECK(a.get().done == 5);
  }
  SUBCASE("held across several iterations while the next finisher is near enough") {
    auto a = batcher.submit(Job{.total = 5});
    auto b = batcher.submit(Job{.total = 7});  // 2 iterations after a: 100 ms saved > 2 x 30 ms waited
    for (int i = 0; i < 6; ++i)
      batcher.step_once();
    CHECK_FALSE(a.ready());
    batcher.step_once();
    CHECK(a.ready());
    CHECK(model.retire_sizes.back() == 2);
  }
  SUBCASE("the next finisher too far away: retire at once") {
    auto a = batcher.submit(Job{.total = 5});
    auto b = batcher.submit(Job{.total = 20});  // 15 iterations: 100 ms saved < 15 x 20 ms waited
    for (int i = 0; i < 5; ++i)
      batcher.step_once();
    CHECK(a.ready());
    while (batcher.step_once()) {
    }
    CHECK(model.retire_sizes == std::vector<std::size_t>{2, 1, 1, 1});
  }
}

TEST_CASE("StepBatcher.ConcurrentRetire.Manual") {
  ManualClock clock;
  KeyedToyModel model;
  KeyedBatcher batcher{model, {.max_batch_size = 2, .concurrent_retire = true}, clock};
  Log log(batcher);
  SUBCASE("a finished request frees its room at once; the stage retires everything waiting in one call") {
    auto a = batcher.submit(Job{.total = 2});
    auto b = batcher.submit(Job{.total = 3});
    auto c = batcher.submit(Job{.total = 2});
    CHECK_FALSE(batcher.retire_once());
    batcher.step_once();
    batcher.step_once();  // a finishes: it leaves the batch and waits for the retire stage
    CHECK_FALSE(a.ready());
    CHECK(batcher.stats().retiring == 1);
    CHECK(batcher.stats().active == 1);
    batcher.step_once();  // c joins in a's place; b finishes
    CHECK(log.lines == std::vector<std::string>{"[0, 0]", "[1, 1]", "[2, 0]"});
    CHECK(batcher.stats().retiring == 2);
    CHECK(model.retire_sizes.empty());
    CHECK(batcher.retire_once());
    CHECK(model.retire_sizes == std::vector<std::size_t>{2});
    CHECK(a.get().retires == 1);
    CHECK(b.get().done == 3);
    CHECK_FALSE(c.ready());
    while (batcher.step_once()) {
    }
    CHECK(batcher.retire_once());
    CHECK(c.get().retires == 1);
    CHECK(model.retire_sizes == std::vector<std::size_t>{2, 1});
    const carousel::Stats s = batcher.stats();
    CHECK(s.completed == 3);
    CHECK(s.retiring == 0);
    CHECK(s.submitted ==
          s.completed + s.failed + s.cancelled + s.expired + s.rejected + s.queue_depth + s.active + s.retiring);
  }
  SUBCASE("one retire call per batch key, oldest first; a throwing group fails alone and the loop goes on") {
    auto bad = batcher.submit(Job{.total = 1, .key = 1, .poison_retire = true});
    auto good = batcher.submit(Job{.total = 1, .key = 2});
    batcher.step_once();
    CHECK(batcher.retire_once());
    CHECK(model.retire_sizes == std::vector<std::size_t>{1, 1});
    CHECK(error_of(bad) == Errc::model_error);
    CHECK(good.get().retires == 1);
    auto later = batcher.submit(Job{.total = 1, .key = 1});
    batcher.step_once();
    batcher.retire_once();
    CHECK(later.get().retires == 1);
    CHECK(batcher.stats().failed == 1);
  }
  SUBCASE("stop(cancel): a request already finished still completes; running ones are cancelled") {
    auto a = batcher.submit(Job{.total = 1});
    auto b = batcher.submit(Job{.total = 5});
    batcher.step_once();
    batcher.stop(carousel::StopMode::cancel);
    CHECK(a.get().retires == 1);
    CHECK(error_of(b) == Errc::cancelled);
  }
  SUBCASE("stop(drain) without threads drives both stages") {
    auto a = batcher.submit(Job{.total = 3});
    auto b = batcher.submit(Job{.total = 4, .key = 1});
    batcher.stop();
    CHECK(a.get().retires == 1);
    CHECK(b.get().retires == 1);
    CHECK(batcher.stats().retiring == 0);
  }
}

TEST_CASE("StepBatcher.ConcurrentRetire.WithoutRetireHook") {
  carousel::test::MinimalModel model;
  carousel::StepBatcher<carousel::test::MinimalModel, Job> batcher{model, {.concurrent_retire = true}};
  auto t = batcher.submit(Job{.total = 1});
  batcher.step_once();
  CHECK(t.ready());  // nothing to overlap: completed by the iteration itself
  CHECK_FALSE(batcher.retire_once());
}

namespace {

// A ToyModel whose retire() waits until the test opens the gate.
struct GatedModel : ToyModel {
  std::mutex mutex;
  std::condition_variable changed;
  bool open = false;
  int entered = 0;

  void retire(std::span<Job* const> leaving) {
    {
      std::unique_lock lock(mutex);
      ++entered;
      changed.notify_all();
      changed.wait(lock, [&] { return open; });
    }
    ToyModel::retire(leaving);
  }
  template <class Pred>
  bool wait(Pred pred) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, 10s, pred);
  }
};

}  // namespace

TEST_CASE("StepBatcher.ConcurrentRetire.Thread") {
  GatedModel model;
  carousel::StepBatcher<GatedModel, Job> batcher{model, {.max_batch_size = 4, .concurrent_retire = true}};
  batcher.start();
  CHECK_THROWS_AS(batcher.retire_once(), std::logic_error);
  auto a = batcher.submit(Job{.total = 1});
  REQUIRE(model.wait([&] { return model.entered == 1; }));  // a's retire() runs, and blocks
  // b runs all its steps while a's retire() is still blocked: the loop does not wait for the retire stage.
  auto b = batcher.submit(Job{.total = 20}, {.on_progress = [&](const carousel::Progress& p) {
                            if (p.steps_done == p.total_steps) {
                              std::lock_guard lock(model.mutex);
                              model.changed.notify_all();
                            }
                          }});
  REQUIRE(model.wait([&] { return batcher.stats().retiring == 2; }));
  CHECK(batcher.stats().request_steps == 21);
  CHECK_FALSE(a.ready());
  {
    std::lock_guard lock(model.mutex);
    model.open = true;
  }
  model.changed.notify_all();
  CHECK(a.get().retires == 1);
  CHECK(b.get().done == 20);
  SUBCASE("stop(drain) waits for the retire stage") {
    std::vector<carousel::Ticket<Job>> t;
    for (int i = 0; i < 6; ++i)
      t.push_back(batcher.submit(Job{.total = 1 + i}));
    batcher.stop();
    for (auto& ticket : t)
      CHECK(ticket.ready());
    CHECK(batcher.stats().retiring == 0);
    CHECK(batcher.stats().completed == 8);
  }
  batcher.stop();
  CHECK(model.retire_sizes.front() == 1);
}

TEST_CASE("StepBatcher.OnComplete") {
  ManualClock clock;
  KeyedToyModel model;
  // What each on_complete call saw: the id, the error, and whether the ticket was ready at that moment.
  struct Call {
    carousel::RequestId id;
    std::optional<Errc> error;
    bool ready;
  };
  std::vector<Call> calls;
  std::map<carousel::RequestId, carousel::Ticket<Job>*> tickets;
  auto recorder = [&](carousel::RequestId id, std::optional<Errc> error) {
    const auto it = tickets.find(id);
    calls.push_back({id, error, it != tickets.end() && it->second->ready()});
  };
  SUBCASE("once per request, after its ticket is ready, with its outcome") {
    KeyedBatcher batcher{model, {.max_batch_size = 4, .max_queue_size = 4}, clock};
    auto ok = batcher.submit(Job{.total = 2}, {.on_complete = recorder});
    auto bad = batcher.submit(Job{.total = 2, .key = 1, .poison_step = true}, {.on_complete = recorder});
    auto queued = batcher.submit(Job{.total = 2, .key = 2}, {.on_complete = recorder});
    tickets = {{ok.id(), &ok}, {bad.id(), &bad}, {queued.id(), &queued}};
    queued.cancel();  // while queued: completed at once, on this thread
    REQUIRE(calls.size() == 1);
    CHECK(calls[0].id == queued.id());
    CHECK(calls[0].error == Errc::cancelled);
    CHECK(calls[0].ready);
    while (batcher.step_once()) {
    }
    REQUIRE(calls.size() == 3);
    CHECK(calls[1].id == bad.id());
    CHECK(calls[1].error == Errc::model_error);
    CHECK(calls[2].id == ok.id());
    CHECK_FALSE(calls[2].error);
    for (const Call& c : calls)
      CHECK(c.ready);
    CHECK(ok.get().done == 2);
    batcher.stop();
    auto late = batcher.submit(Job{.total = 1}, {.on_complete = recorder});  // refused inside submit
    REQUIRE(calls.size() == 4);
    CHECK(calls[3].id == late.id());
    CHECK(calls[3].error == Errc::shut_down);
  }
  SUBCASE("refused when the queue is full; cancelled by stop; a throwing continuation changes nothing") {
    KeyedBatcher batcher{model, {.max_batch_size = 1, .max_queue_size = 1}, clock};
    auto running = batcher.submit(Job{.total = 5}, {.on_complete = [](auto, auto) { throw std::runtime_error("x"); }});
    batcher.step_once();
    auto waiting = batcher.submit(Job{.total = 5}, {.on_complete = recorder});
    auto refused = batcher.submit(Job{.total = 5}, {.on_complete = recorder});
    REQUIRE(calls.size() == 1);
    CHECK(calls[0].id == refused.id());
    CHECK(calls[0].error == Errc::queue_full);
    batcher.stop(carousel::StopMode::cancel);
    REQUIRE(calls.size() == 2);
    CHECK(calls[1].id == waiting.id());
    CHECK(calls[1].error == Errc::cancelled);
    CHECK(error_of(running) == Errc::cancelled);
  }
  SUBCASE("under concurrent_retire, after the retire stage") {
    KeyedBatcher batcher{model, {.max_batch_size = 4, .concurrent_retire = true}, clock};
    auto t = batcher.submit(Job{.total = 1}, {.on_complete = recorder});
    tickets = {{t.id(), &t}};
    batcher.step_once();
    CHECK(calls.empty());
    batcher.retire_once();
    REQUIRE(calls.size() == 1);
    CHECK(calls[0].ready);
    CHECK(t.get().retires == 1);
  }
}
