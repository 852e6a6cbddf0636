// The drain estimate on its own, against drains worked out by hand.
#include <carousel/detail/drain_estimate.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <optional>
#include <vector>

namespace {

// t(b) = a + c*b.
auto line(double a, double c) {
  return [=](std::size_t b) -> std::optional<double> { return a + c * static_cast<double>(b); };
}
auto unknown() {
  return [](std::size_t) -> std::optional<double> { return std::nullopt; };
}

}  // namespace

TEST_CASE("DrainEstimate.Table") {
  // t(b) = 1 + b, and (where used) d(k) = 0.5 + 0.25 k. Requests are listed in the order the batcher takes them;
  // [s, f) is the iterations each one runs.
  const auto t = line(1, 1);
  const auto d = line(0.5, 0.25);
  struct Row {
    std::vector<std::size_t> remaining;
    std::size_t max_batch_size;
    bool with_retire;
    bool retire_on_loop;
    double seconds;
  };
  const Row table[] = {
      {{}, 8, true, true, 0.0},  // idle
      // One batch: [0,5) and [0,2): 2 iterations of t(2) = 3, then 3 of t(1) = 2.
      {{5, 2}, 8, false, true, 12.0},
      // ... plus d(1) at iteration 2 and d(1) at 5.
      {{5, 2}, 8, true, true, 13.5},
      // Under a retire stage only the last retire is waited for.
      {{5, 2}, 8, true, false, 12.75},
      // Finishing in the same iteration retires together: 3 iterations of t(3) = 4, one d(3) = 1.25.
      {{3, 3, 3}, 8, true, true, 13.25},
      // Held requests (0 left) only retire: d(2) = 1.
      {{0, 0}, 8, true, true, 1.0},
      // Two places: [0,1) [0,1) [1,2) [1,2): 2 iterations of t(2) = 3.
      {{1, 1, 1, 1}, 2, false, true, 6.0},
      // [0,1) [0,1) [1,2): t(2) + t(1).
      {{1, 1, 1}, 2, false, true, 5.0},
      // a [0,3), b [0,1), c takes b's place [1,3): 3 iterations of t(2) = 9; d(1) at 1, d(2) at 3.
      {{3, 1, 2}, 2, true, true, 10.75},
      // The order matters: a [0,1), b [0,2), c [1,4): t(2) x 2 + t(1) x 2 = 10; d(1) at 1, 2 and 4.
      {{1, 2, 3}, 2, true, true, 12.25},
      // a [0,4), b [0,4), c [4,5), d [4,5): 5 iterations of t(2).
      {{4, 4, 1, 1}, 2, false, true, 15.0},
  };
  for (const Row& r : table) {
    CAPTURE(r.remaining.size());
    CAPTURE(r.max_batch_size);
    CAPTURE(r.with_retire);
    const double got = r.with_retire
                           ? carousel::detail::drain_seconds(r.remaining, r.max_batch_size, t, d, r.retire_on_loop)
                           : carousel::detail::drain_seconds(r.remaining, r.max_batch_size, t, unknown(), true);
    CHECK(got == doctest::Approx(r.seconds));
  }
}

TEST_CASE("DrainEstimate.BeforeAnyMeasurement") {
  const std::vector<std::size_t> v{30, 30};
  CHECK(carousel::detail::drain_seconds(v, 8, unknown(), unknown(), true) == 0.0);
}
