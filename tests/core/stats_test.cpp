#include <carousel/stats.hpp>

#include <doctest/doctest.h>

#include <carousel/manual_clock.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

TEST_CASE("Histogram.Buckets") {
  carousel::Histogram h;
  CHECK(h.count() == 0);
  CHECK(h.quantile(0.5) == 0.0);
  CHECK(carousel::Histogram::upper_bound(0) == doctest::Approx(1e-6));
  CHECK(carousel::Histogram::upper_bound(10) == doctest::Approx(1.024e-3));
  h.record(1e-6);    // bucket 0 (upper bound inclusive)
  h.record(1.5e-6);  // bucket 1
  h.record(1e-3);    // (5.12e-4, 1.024e-3] -> bucket 10
  h.record(1e6);     // beyond the last bound
  h.record(-1.0);    // counts as 0
  CHECK(h.bucket(0) == 2);
  CHECK(h.bucket(1) == 1);
  CHECK(h.bucket(10) == 1);
  CHECK(h.bucket(carousel::Histogram::bucket_count) == 1);
  CHECK(h.count() == 5);
  CHECK(h.min() == 0.0);
  CHECK(h.max() == 1e6);
  CHECK(h.sum() == doctest::Approx(1e6 + 1e-3 + 2.5e-6));
}

TEST_CASE("Histogram.QuantilesWithinABucketOfExact") {
  std::mt19937 rng(7);
  std::lognormal_distribution<double> dist(std::log(0.05), 0.7);
  std::vector<double> v(20000);
  carousel::Histogram h;
  for (double& x : v) {
    x = dist(rng);
    h.record(x);
  }
  std::sort(v.begin(), v.end());
  for (double q : {0.5, 0.9, 0.99}) {
    const double exact = v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
    // Buckets are a factor 2 wide: the estimate is within a factor 2 of the exact quantile.
    CHECK(h.quantile(q) > exact / 2);
    CHECK(h.quantile(q) < exact * 2);
  }
  CHECK(h.mean() == doctest::Approx(std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size())));
  CHECK(h.quantile(1.0) == h.max());
  CHECK(h.quantile(0.0) >= h.min());
}

TEST_CASE("ManualClock.SharedTimeLine") {
  using namespace std::chrono_literals;
  carousel::ManualClock a;
  carousel::ManualClock b = a;
  CHECK(a.now().time_since_epoch() == 0ns);
  b.advance(5ms);
  CHECK(a.now().time_since_epoch() == 5ms);
  a.set(carousel::ManualClock::time_point(1s));
  CHECK(b.now().time_since_epoch() == 1s);
  carousel::ManualClock other;
  CHECK(other.now().time_since_epoch() == 0ns);
}
