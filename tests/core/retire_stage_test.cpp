// The retire stage on its own: one retire() call per batch-key group in admission order, a throwing group failing
// alone, measurements, and the hand-off list.
#include <carousel/detail/retire_stage.hpp>

#include <doctest/doctest.h>

#include <carousel/manual_clock.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <stdexcept>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Job {
  int key = 0;
  bool poison = false;
  char name = '?';
};

// Records each retire() call's names; a call takes 1 ms + 1 ms per request on the manual clock.
struct Model {
  carousel::ManualClock clock;
  std::vector<std::string> calls;
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  int batch_key(const Job& j) const { return j.key; }
  void retire(std::span<Job* const> leaving) {
    clock.advance(1ms + 1ms * static_cast<long>(leaving.size()));
    std::string names;
    for (const Job* j : leaving)
      names += j->name;
    calls.push_back(names);
    for (const Job* j : leaving)
      if (j->poison) throw std::runtime_error("poisoned retire");
  }
};

using Stage = carousel::detail::RetireStage<Model, Job, carousel::ManualClock>;
using Request = Stage::request_type;

// A finished request: admitted `admit_seq`-th, in group `group`.
Request* make(char name, std::uint64_t admit_seq, std::size_t group, bool poison = false) {
  auto* r = new Request(static_cast<carousel::RequestId>(admit_seq + 1), Job{static_cast<int>(group), poison, name}, 0,
                        std::nullopt, carousel::ManualClock::time_point{});
  r->admit_seq_ = admit_seq;
  r->group_ = group;
  return r;
}

}  // namespace

TEST_CASE("RetireStage.Retire") {
  Model model;
  Stage stage(model, model.clock);
  std::vector<Job*> scratch;
  std::vector<Stage::outcome_type> out;
  Stage::Measurements measured;
  SUBCASE("oldest first, one call per group in order of first appearance") {
    // Handed over out of order: c (admitted 2, group 1), a (0, group 0), d (3, group 0), b (1, group 1).
    std::vector<Request*> retiring{make('c', 2, 1), make('a', 0, 0), make('d', 3, 0), make('b', 1, 1)};
    stage.retire(retiring, scratch, out, measured);
    CHECK(model.calls == std::vector<std::string>{"ad", "bc"});
    REQUIRE(out.size() == 4);
    for (const auto& o : out)
      CHECK_FALSE(o.code);
    // Each call's size and time: 1 ms + 2 x 1 ms.
    REQUIRE(measured.size() == 2);
    CHECK(measured[0].first == 2);
    CHECK(measured[0].second == doctest::Approx(0.003));
    CHECK(measured[1].first == 2);
  }
  SUBCASE("a throwing group fails with model_error; the others complete and are measured") {
    std::vector<Request*> retiring{make('a', 0, 0), make('b', 1, 1, true), make('c', 2, 1)};
    stage.retire(retiring, scratch, out, measured);
    CHECK(model.calls == std::vector<std::string>{"a", "bc"});
    REQUIRE(out.size() == 3);
    std::string failed, completed;
    for (const auto& o : out) {
      if (o.code) {
        CHECK(*o.code == carousel::Errc::model_error);
        failed += o.request->state().name;
      } else {
        completed += o.request->state().name;
      }
    }
    CHECK(failed == "bc");
    CHECK(completed == "a");
    REQUIRE(measured.size() == 1);
    CHECK(measured[0].first == 1);
  }
}

TEST_CASE("RetireStage.HandOff") {
  Model model;
  Stage stage(model, model.clock);
  CHECK_FALSE(stage.has_waiting());
  CHECK(stage.size() == 0);
  stage.hand_off({make('a', 0, 0), make('b', 1, 0)});
  stage.hand_off({make('c', 2, 0)});
  CHECK(stage.has_waiting());
  CHECK(stage.size() == 3);
  std::vector<Request*> taken = stage.take();
  CHECK(taken.size() == 3);
  CHECK_FALSE(stage.has_waiting());
  CHECK(stage.size() == 3);  // in progress still counts
  stage.hand_off({make('d', 3, 0)});
  CHECK(stage.size() == 4);
  std::vector<Stage::outcome_type> out;
  Stage::Measurements measured;
  stage.retire(taken, stage.scratch(), out, measured);
  stage.done();
  CHECK(stage.size() == 1);  // d waits; the stage's destructor frees it
  CHECK(model.calls == std::vector<std::string>{"abc"});
}
