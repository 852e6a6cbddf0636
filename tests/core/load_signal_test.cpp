#include <carousel/load_signal.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>

TEST_CASE("LoadSignal.AgentWeight.Table") {
  using carousel::agent_weight_percent;
  CHECK(agent_weight_percent(0.0, 10.0) == 100);
  CHECK(agent_weight_percent(10.0, 10.0) == 50);
  CHECK(agent_weight_percent(30.0, 10.0) == 25);
  CHECK(agent_weight_percent(90.0, 10.0) == 10);
  CHECK(agent_weight_percent(1e9, 10.0) == 1);  // never 0: a weight of 0 would take the replica out of rotation
  CHECK(agent_weight_percent(-5.0, 10.0) == 100);
  CHECK(agent_weight_percent(std::numeric_limits<double>::quiet_NaN(), 10.0) == 100);
  CHECK(agent_weight_percent(std::numeric_limits<double>::infinity(), 10.0) == 1);
  CHECK(agent_weight_percent(1.0, 0.0) == 50);  // a non-positive target counts as 1 s
}

TEST_CASE("LoadSignal.AgentWeight.FallsWithDrain") {
  int previous = 101;
  for (double d = 0; d < 200; d += 0.5) {
    const int w = carousel::agent_weight_percent(d, 5.0);
    CHECK(w <= previous);
    CHECK(w >= 1);
    previous = w;
  }
}
