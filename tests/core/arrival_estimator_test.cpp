// The arrival-rate and step-count estimator on its own, against hand-computed running means.
#include <carousel/detail/arrival_estimator.hpp>

#include <doctest/doctest.h>

#include <carousel/manual_clock.hpp>

#include <chrono>
#include <cstddef>
#include <vector>

using namespace std::chrono_literals;

namespace {

using Estimator = carousel::detail::ArrivalEstimator<carousel::ManualClock::time_point>;

struct Submit {
  std::chrono::milliseconds gap;  // since the previous submit
  std::size_t steps;
};

Estimator replay(const std::vector<Submit>& submits) {
  Estimator e;
  carousel::ManualClock::time_point t{};
  for (const Submit& s : submits) {
    t += s.gap;
    e.record(t, s.steps);
  }
  return e;
}

}  // namespace

TEST_CASE("ArrivalEstimator.Empty") {
  const Estimator e;
  CHECK(e.mean_gap() < 0);
  CHECK(e.mean_steps() < 0);
  const Estimator one = replay({{0ms, 30}});
  CHECK(one.mean_gap() < 0);  // one submit: no gap yet
  CHECK(one.mean_steps() == 30.0);
}

TEST_CASE("ArrivalEstimator.PlainAverageFirst") {
  // (submits, mean gap in seconds, mean steps): plain averages while there are at most 1 / 0.05 = 20 samples.
  struct Row {
    std::vector<Submit> submits;
    double gap;
    double steps;
  };
  const Row table[] = {
      {{{0ms, 10}, {1000ms, 20}}, 1.0, 15.0},
      {{{0ms, 10}, {1000ms, 20}, {2000ms, 30}, {3000ms, 40}}, 2.0, 25.0},  // gaps 1, 2, 3 s
      {{{0ms, 0}, {500ms, 3}}, 0.5, 2.0},                                  // unknown steps count as 1
  };
  for (const Row& row : table) {
    const Estimator e = replay(row.submits);
    CHECK(e.mean_gap() == doctest::Approx(row.gap));
    CHECK(e.mean_steps() == doctest::Approx(row.steps));
  }
}

TEST_CASE("ArrivalEstimator.ExponentialAfterwards") {
  // 21 submits 1 s apart with 10 steps (20 gaps: the plain mean is exactly 1 s, 10 steps), then one 3 s later with
  // 50 steps: the 21st gap and the 22nd step count get weight 0.05: 1 + 0.05 * (3 - 1) = 1.1 s, 10 + 0.05 * 40 = 12.
  std::vector<Submit> s{{0ms, 10}};
  for (int i = 0; i < 20; ++i)
    s.push_back({1000ms, 10});
  const Estimator before = replay(s);
  CHECK(before.mean_gap() == doctest::Approx(1.0));
  CHECK(before.mean_steps() == doctest::Approx(10.0));
  s.push_back({3000ms, 50});
  const Estimator after = replay(s);
  CHECK(after.mean_gap() == doctest::Approx(1.1));
  CHECK(after.mean_steps() == doctest::Approx(12.0));
}
