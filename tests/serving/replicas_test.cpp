// Tests of the routing simulation (benchmarks/serving/replicas.hpp): one replica reproduces the single-batcher
// simulation, each router sends requests where its rule says, and hand-computed timelines on t(b) = a + c*b.
#include <doctest/doctest.h>

#include "replicas.hpp"

#include <cstddef>
#include <vector>

using namespace carousel::bench;

namespace {

// t(b) = 20 ms + 15 ms * b, d(b) = 2 t(b).
Regime balanced() {
  return Regime::linear("balanced", 20, 15, 2.0);
}

ClusterSpec cluster(std::size_t replicas) {
  ClusterSpec spec;
  spec.replicas = replicas;
  spec.options.max_batch_size = 8;
  return spec;
}

}  // namespace

TEST_CASE("Serving.Replicas.OneReplicaIsTheSingleBatcherSimulation") {
  Workload w;
  w.rate = 0.8;
  w.requests = 300;
  w.step_mix = {20, 30, 50};
  w.keys = 2;
  w.high_priority_fraction = 0;
  const std::vector<Arrival> trace = generate_trace(w);
  const RunResult single = simulate(balanced(), cluster(1).options, trace, w);
  for (Router router : {Router::round_robin, Router::least_connections, Router::drain_aware}) {
    CAPTURE(router_name(router));
    const ClusterResult c = simulate_cluster(balanced(), cluster(1), router, trace);
    REQUIRE(c.run.records.size() == single.records.size());
    for (std::size_t i = 0; i < trace.size(); ++i) {
      CAPTURE(i);
      CHECK(c.replica[i] == 0);
      CHECK(c.run.records[i].admitted == doctest::Approx(single.records[i].admitted).epsilon(1e-9));
      CHECK(c.run.records[i].done == doctest::Approx(single.records[i].done).epsilon(1e-9));
    }
  }
}

TEST_CASE("Serving.Replicas.RoundRobinTakesTurns") {
  std::vector<Arrival> trace;
  for (int i = 0; i < 9; ++i)
    trace.push_back(Arrival{.time = 0.5 * i, .steps = 10});
  const ClusterResult c = simulate_cluster(balanced(), cluster(3), Router::round_robin, trace);
  for (std::size_t i = 0; i < trace.size(); ++i)
    CHECK(c.replica[i] == i % 3);
}

TEST_CASE("Serving.Replicas.LeastConnectionsAvoidsTheBusyReplica") {
  // Two replicas, t(1) = 35 ms. At t = 0: two 100-step requests (replica 0, replica 1: in turn) and a 2-step one
  // (a 1:1 tie, broken in turn: replica 0), which is done by 0.2 s. At t = 1 s: 1:1 again, in turn: replica 1.
  // At t = 1.01 s: replica 0 holds 1 request, replica 1 holds 2: replica 0.
  const std::vector<Arrival> trace = {{.time = 0, .steps = 100},
                                      {.time = 0, .steps = 100},
                                      {.time = 0, .steps = 2},
                                      {.time = 1.0, .steps = 100},
                                      {.time = 1.01, .steps = 100}};
  const ClusterResult c = simulate_cluster(balanced(), cluster(2), Router::least_connections, trace);
  CHECK(c.replica == std::vector<std::size_t>{0, 1, 0, 1, 0});
}

TEST_CASE("Serving.Replicas.DrainAwareWeighsRemainingWork") {
  // Two replicas, one request each at t = 0: 400 steps on replica 0, 40 steps (1.4 s) on replica 1. At t = 0.1 s
  // both still hold one request, but replica 0 has ten times the steps left. With agent checks every 50 ms and a
  // 1 s target, replica 0's weight is far below replica 1's, so the third request goes to replica 1; least
  // connections sees a 1:1 tie and breaks it in turn, to replica 0.
  const std::vector<Arrival> trace = {{.time = 0, .steps = 400}, {.time = 0, .steps = 40}, {.time = 0.1, .steps = 20}};
  ClusterSpec spec = cluster(2);
  spec.agent_target = 1.0;
  spec.agent_interval = 0.05;
  const ClusterResult aware = simulate_cluster(balanced(), spec, Router::drain_aware, trace);
  CHECK(aware.replica == std::vector<std::size_t>{0, 1, 1});
  const ClusterResult lc = simulate_cluster(balanced(), spec, Router::least_connections, trace);
  CHECK(lc.replica == std::vector<std::size_t>{0, 1, 0});
}

TEST_CASE("Serving.Replicas.HandComputedTimeline") {
  // Two replicas, round robin, a 10-step request each at t = 0 and t = 0.1 s: each runs alone at b = 1, 35 ms a
  // step, then decodes in 70 ms: done at 0.42 s and 0.52 s.
  const std::vector<Arrival> trace = {{.time = 0, .steps = 10}, {.time = 0.1, .steps = 10}};
  const ClusterResult c = simulate_cluster(balanced(), cluster(2), Router::round_robin, trace);
  CHECK(c.run.records[0].done == doctest::Approx(0.42));
  CHECK(c.run.records[1].done == doctest::Approx(0.52));
}
