// The admission policy's pure functions, on plain values. Curves are lambdas with exact binary values, and every
// expected answer is worked out by hand in the comments.
#include <carousel/detail/admission_policy.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <optional>
#include <vector>

namespace policy = carousel::detail::policy;

namespace {

// t(b) = a + c*b.
auto line(double a, double c) {
  return [=](std::size_t b) -> std::optional<double> { return a + c * static_cast<double>(b); };
}
auto unknown() {
  return [](std::size_t) -> std::optional<double> { return std::nullopt; };
}

}  // namespace

TEST_CASE("AdmissionPolicy.Fits") {
  struct Row {
    std::size_t max_batch_size, max_batch_cost, running, running_cost, cost;
    bool fits;
  };
  const Row table[] = {
      {2, 0, 0, 0, 1, true},   // room, no budget
      {2, 0, 1, 5, 9, true},   // no budget: costs do not matter
      {2, 0, 2, 0, 1, false},  // full
      {8, 4, 1, 3, 2, false},  // 3 + 2 > 4
      {8, 4, 1, 3, 1, true},   // 3 + 1 = 4
      {8, 4, 0, 0, 10, true},  // over the whole budget, but alone: runs (nothing starves)
      {8, 4, 8, 0, 0, false},  // the batch size limit still holds
  };
  for (const Row& r : table) {
    CAPTURE(r.running);
    CAPTURE(r.cost);
    const carousel::Options o{.max_batch_size = r.max_batch_size, .max_batch_cost = r.max_batch_cost};
    CHECK(policy::fits(o, r.running, r.running_cost, r.cost) == r.fits);
  }
}

TEST_CASE("AdmissionPolicy.PreemptionVictim") {
  using R = policy::RunningRequest;
  struct Row {
    std::vector<R> running;
    int waiting_priority;
    std::optional<std::size_t> victim;
  };
  const Row table[] = {
      {{}, 5, std::nullopt},
      {{{0, 1}, {0, 2}, {1, 3}}, 1, 1},             // lowest priority 0; of those, admitted last (seq 2)
      {{{0, 1}, {0, 2}, {1, 3}}, 0, std::nullopt},  // equal priority never preempts
      {{{2, 7}, {1, 9}, {1, 4}}, 3, 1},
      {{{2, 5}}, 3, 0},
      {{{3, 5}}, 3, std::nullopt},
  };
  for (const Row& r : table) {
    CAPTURE(r.waiting_priority);
    CHECK(policy::preemption_victim(r.running, r.waiting_priority) == r.victim);
  }
}

TEST_CASE("AdmissionPolicy.DeadlineReachable") {
  CHECK(policy::deadline_reachable(0.5, 4, 2.0));              // 4 x 0.5 = 2 s: just in time
  CHECK_FALSE(policy::deadline_reachable(0.5, 4, 1.9));        // 2 s > 1.9 s
  CHECK(policy::deadline_reachable(std::nullopt, 1000, 0.0));  // nothing measured: admitted
  CHECK_FALSE(policy::deadline_reachable(0.25, 1, -1.0));      // already past
}

TEST_CASE("AdmissionPolicy.WorthJoining") {
  // t(b) = 1 + 2b: at any b the local fit is c = 2, a = t(b+1) - (b+1) c = 1. The rule:
  //   a * min(r, max r_j) * (1 + behind)  >=  c * sum_j min(r_j, r).
  const auto t = line(1, 2);
  struct Row {
    std::size_t remaining;
    std::vector<std::size_t> running;
    std::size_t behind;
    bool joins;
  };
  const Row table[] = {
      {10, {}, 0, true},       // nothing runs
      {10, {9}, 0, false},     // 1 * 9 * 1 = 9 < 2 * 9 = 18
      {10, {9}, 1, true},      // 9 * 2 = 18 >= 18
      {3, {9, 9}, 2, false},   // 1 * 3 * 3 = 9 < 2 * (3 + 3) = 12
      {3, {9, 9}, 3, true},    // 3 * 4 = 12 >= 12
      {9, {3, 20}, 0, false},  // 1 * 9 * 1 = 9 < 2 * (3 + 9) = 24
      {9, {3, 20}, 2, true},   // 27 >= 24
  };
  for (const Row& r : table) {
    CAPTURE(r.remaining);
    CAPTURE(r.behind);
    CHECK(policy::worth_joining(r.remaining, r.running, r.behind, t) == r.joins);
  }
  SUBCASE("batch-friendly (a > c): joins without a queue") {
    // t(b) = 6 + 1b: a = 6, c = 1: 6 * 9 >= 1 * 9.
    CHECK(policy::worth_joining(10, std::vector<std::size_t>{9}, 0, line(6, 1)));
  }
  SUBCASE("explores while the curve is unknown, and when adding a request costs nothing") {
    const std::vector<std::size_t> running{9};
    CHECK(policy::worth_joining(10, running, 0, unknown()));
    CHECK(policy::worth_joining(10, running, 0, line(5, 0)));
    const auto only_one = [](std::size_t b) -> std::optional<double> {
      return b == 1 ? std::optional<double>(1.0) : std::nullopt;
    };
    CHECK(policy::worth_joining(10, running, 0, only_one));
  }
}

TEST_CASE("AdmissionPolicy.TargetBatchSize") {
  // t(b) = 1 + 0.1 b, 1 step per request, arrivals every 0.5 s (lambda = 2/s): service rate mu(b) = b / t(b).
  // b = 1, 2 cannot keep up (mu = 0.91, 1.67). Latency t(b) + rho / (mu - lambda):
  //   b=3: 1.3 + 2.817 = 4.117   b=4: 1.4 + 0.817 = 2.217   b=5: 1.5 + 0.45 = 1.95
  //   b=6: 1.6 + 0.305 = 1.905   b=7: 1.7 + 0.229 = 1.929   b=8: 1.8 + 0.184 = 1.984   -> 6
  // With a retire time d(b) = 0.5 the service rate is b / (t(b) + 0.5):
  //   b=5: 1.5 + 1.6 = 3.1   b=6: 1.6 + 0.817 = 2.417   b=7: 1.7 + 0.532 = 2.232   b=8: 1.8 + 0.389 = 2.189 -> 8
  const auto t = line(1, 0.1);
  const auto half = [](std::size_t) -> std::optional<double> { return 0.5; };
  struct Row {
    double gap, steps;
    std::size_t max;
    bool with_retire;
    std::size_t target;
  };
  const Row table[] = {
      {0.5, 1, 8, false, 6},
      {0.5, 1, 5, false, 5},  // the best size within the limit
      {0.5, 1, 2, false, 2},  // no size keeps up: the fastest, here the largest (mu(2) = 1.67 > mu(1) = 0.91)
      {0.5, 1, 8, true, 8},
      {0.5, 2, 8, false, 8},  // twice the steps: mu halves; only b >= 7 keeps up (b=7: mu = 2.06), b=8 is best
  };
  for (const Row& r : table) {
    CAPTURE(r.max);
    CAPTURE(r.with_retire);
    const std::size_t got = r.with_retire ? policy::target_batch_size(r.gap, r.steps, r.max, t, half)
                                          : policy::target_batch_size(r.gap, r.steps, r.max, t, unknown());
    CHECK(got == r.target);
  }
  SUBCASE("overloaded: the size with the highest service rate, not a larger one that buys nothing") {
    // t(b) = b (no gain from batching): mu(b) = 1 for every b; at lambda = 2 none keeps up: 1, not 8.
    CHECK(policy::target_batch_size(0.5, 1, 8, line(0, 1), unknown()) == 1);
    // t(b) = 0.1 b^2: mu(b) = 10 / b falls with b: 1.
    const auto superlinear = [](std::size_t b) -> std::optional<double> { return 0.1 * static_cast<double>(b * b); };
    CHECK(policy::target_batch_size(0.01, 1, 8, superlinear, unknown()) == 1);
    // t(b) = 1 + 0.1 b: mu(b) = b / t(b) rises with b (mu(8) = 4.44 is 7.9% over mu(7) = 4.12): 8.
    CHECK(policy::target_batch_size(0.01, 1, 8, t, unknown()) == 8);
    // t(b) = b + 0.001: mu(b) = b / (b + 0.001) gains under 0.1% past b = 1 (less than min_rate_gain): 1.
    CHECK(policy::target_batch_size(0.001, 1, 8, line(0.001, 1), unknown()) == 1);
  }
  SUBCASE("overloaded: full batches where the largest size serves more than one alone") {
    const auto table_curve = [](std::vector<double> ms) {
      return [ms](std::size_t b) -> std::optional<double> { return ms[b - 1]; };
    };
    // Service rates b / t(b): 1, 1.33, 1.5, 1.82, 1, 0.75, 0.64, 0.57: the largest size serves less than one alone:
    // the best size, 4.
    CHECK(policy::target_batch_size(0.001, 1, 8, table_curve({1, 1.5, 2, 2.2, 5, 8, 11, 14}), unknown()) == 4);
    // Measured by total size over two batch keys (t(2) on one key, larger sizes on both): rates 0.0167, 0.0286,
    // 0.0158, 0.0194, 0.022, 0.0205, 0.0206, 0.0207 (per ms): 8 serves more than 1, so 8 — not 2, which the key mix of
    // a long queue cannot form.
    CHECK(policy::target_batch_size(0.001, 1, 8, table_curve({60, 70, 190, 206, 227, 292, 339, 386}), unknown()) == 8);
  }
  SUBCASE("unknown arrival rate or curve: 0") {
    CHECK(policy::target_batch_size(-1, 1, 8, t, unknown()) == 0);
    CHECK(policy::target_batch_size(0.5, -1, 8, t, unknown()) == 0);
    CHECK(policy::target_batch_size(0.5, 1, 8, unknown(), unknown()) == 0);
  }
}

TEST_CASE("AdmissionPolicy.HoldRetirement") {
  // t(b) = b, d(k) = 4 + k: merging k finished with the m next finishers of their batch-key group saves
  // d(k) + d(m) - d(k+m) = 4 for each of the (running + waiting) others; it costs each of the k held r iterations of
  // t(running). In the first rows the whole batch is the group.
  const auto t = line(0, 1);
  const auto d = line(4, 1);
  struct Row {
    std::size_t finished;
    std::vector<std::size_t> running;
    std::size_t waiting;
    bool hold;
  };
  const Row table[] = {
      {1, {2}, 0, true},        // 4 * 1 = 4 > 1 * 2 * t(1) = 2
      {1, {5}, 0, false},       // 4 < 5
      {1, {5}, 1, true},        // 4 * 2 = 8 > 5
      {2, {3}, 1, true},        // 4 * 2 = 8 > 2 * 3 * t(1) = 6
      {2, {3}, 0, false},       // 4 < 6: two held requests cost twice
      {1, {3, 3, 0}, 0, true},  // r = 3, m = 2 (0 = unknown, never waited for): 4 * 3 = 12 > 1 * 3 * t(3) = 9
      {1, {0, 0}, 5, false},    // no running request with known steps left
      {0, {1}, 5, false},       // nothing finished
      {1, {}, 5, false},        // nothing running
  };
  for (const Row& r : table) {
    CAPTURE(r.finished);
    CAPTURE(r.waiting);
    CAPTURE(r.running.size());
    CHECK(policy::hold_retirement(r.finished, r.running, r.running.size(), r.waiting, t, d) == r.hold);
  }
  SUBCASE("only the group's own running requests can merge with it") {
    // Nothing of the group runs: never held, however many of other groups run.
    CHECK_FALSE(policy::hold_retirement(1, std::vector<std::size_t>{}, 3, 5, t, d));
    // One of 3 running is of the group, 2 steps left: 4 * 3 = 12 > 1 * 2 * t(3) = 6.
    CHECK(policy::hold_retirement(1, std::vector<std::size_t>{2}, 3, 0, t, d));
    // ... 5 steps left: 12 < 15.
    CHECK_FALSE(policy::hold_retirement(1, std::vector<std::size_t>{5}, 3, 0, t, d));
  }
  SUBCASE("an unknown point of either curve: no hold") {
    CHECK_FALSE(policy::hold_retirement(1, std::vector<std::size_t>{2}, 1, 0, unknown(), d));
    CHECK_FALSE(policy::hold_retirement(1, std::vector<std::size_t>{2}, 1, 0, t, unknown()));
  }
}
