#pragma once
/// \file replicas.hpp
/// Routing across replicas, simulated: N replicas, each a real `carousel::StepBatcher` over the cost model on its own
/// virtual clock, behind a router that sees what a load balancer sees. Three routers:
///  - round robin;
///  - least connections (HAProxy's `balance leastconn`): the replica with the fewest requests in flight;
///  - drain-aware: least connections scaled by weights that each replica's agent reports,
///    `carousel::agent_weight_percent(Stats::drain_seconds, target)`, refreshed every `agent_interval` seconds, as
///    HAProxy's agent-check does with the shipped deploy/haproxy/haproxy.cfg.
///
/// Benchmark code, not library API (namespace `carousel::bench`), shared by `carousel-bench-serving --routing` and
/// tests/serving.

#include <carousel/load_signal.hpp>

#include <cstddef>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "serving_sim.hpp"

namespace carousel::bench {

/// How a request is routed to a replica.
enum class Router {
  round_robin,        ///< in turn
  least_connections,  ///< fewest requests in flight (ties: the next in turn)
  drain_aware,        ///< fewest in flight per unit of agent weight (HAProxy leastconn with agent-check weights)
};

/// The router's name as in the tables: "round_robin", "least_connections", "drain_aware".
inline std::string_view router_name(Router r) {
  switch (r) {
    case Router::round_robin:
      return "round_robin";
    case Router::least_connections:
      return "least_connections";
    case Router::drain_aware:
      return "drain_aware";
  }
  return "?";
}

/// A cluster to simulate.
struct ClusterSpec {
  std::size_t replicas = 4;     ///< identical replicas
  Options options;              ///< every replica's batcher configuration
  double agent_target = 10.0;   ///< `--agent-target-seconds` of each replica's agent
  double agent_interval = 1.0;  ///< seconds between agent checks (HAProxy's `agent-inter`)
};

/// The result of a cluster run: every request's record (in arrival order) and where it went.
struct ClusterResult {
  RunResult run;                     ///< records of all replicas, in arrival order; stats of replica 0
  std::vector<std::size_t> replica;  ///< per request, the replica that served it
};

/// Runs `trace` (open loop, sorted by time) through `spec.replicas` replicas behind `router`, on virtual time.
/// Events are processed in time order: a replica's step is atomic (it runs from its start to its end on the replica's
/// own clock), and the router sees each replica as of its last step boundary, as a balancer sees a replica between
/// two of its answers. Deterministic. Checks every request's invariants (`check_invariants`).
inline ClusterResult simulate_cluster(const Regime& regime, const ClusterSpec& spec, Router router,
                                      const std::vector<Arrival>& trace) {
  using Ns = std::chrono::nanoseconds;
  auto to_ns = [](double s) { return std::chrono::round<Ns>(std::chrono::duration<double>(s)); };
  auto to_s = [](ManualClock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); };
  if (spec.replicas == 0) throw std::invalid_argument("simulate_cluster: at least one replica");
  if (regime.decode_off_loop) throw std::invalid_argument("simulate_cluster: the decode runs on each replica's loop");

  ClusterResult result;
  std::vector<Record>& records = result.run.records;
  records.reserve(trace.size());
  result.replica.reserve(trace.size());

  using Spend = std::function<void(double)>;
  using Batcher = StepBatcher<TracedModel<CostModel<Spend>, SimJob, ManualClock>, Traced<SimJob>, ManualClock>;
  struct Replica {
    ManualClock clock;
    std::unique_ptr<CostModel<Spend>> model;
    std::unique_ptr<TracedModel<CostModel<Spend>, SimJob, ManualClock>> traced;
    std::unique_ptr<Batcher> batcher;
    std::size_t in_flight = 0;
    int weight = 100;  // as last reported by the agent
    double step_seconds = 0, decode_seconds = 0;
  };
  std::vector<Replica> replicas(spec.replicas);
  for (Replica& r : replicas) {
    ManualClock clock = r.clock;
    r.model = std::make_unique<CostModel<Spend>>(
        regime, [clock](double s) mutable { clock.advance(std::chrono::round<Ns>(std::chrono::duration<double>(s))); });
    Replica* self = &r;
    r.traced = std::make_unique<TracedModel<CostModel<Spend>, SimJob, ManualClock>>(
        *r.model, r.clock, ManualClock::time_point{}, records, [self](std::size_t) { --self->in_flight; });
    r.batcher = std::make_unique<Batcher>(*r.traced, spec.options, r.clock);
  }
  auto busy = [](const Replica& r) {
    const Stats s = r.batcher->stats();
    return s.queue_depth + s.active + s.retiring > 0;
  };

  std::size_t turn = 0;  // round robin, and the tie-break of the other two
  auto pick = [&]() -> std::size_t {
    const std::size_t n = replicas.size();
    if (router == Router::round_robin) return turn++ % n;
    std::size_t best = n;
    double best_score = std::numeric_limits<double>::infinity();
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t i = (turn + k) % n;
      const Replica& r = replicas[i];
      // HAProxy's leastconn orders servers by (connections + 1) / effective weight.
      const double weight = router == Router::drain_aware ? static_cast<double>(r.weight) : 100.0;
      const double score = static_cast<double>(r.in_flight + 1) / weight;
      if (score < best_score) {
        best_score = score;
        best = i;
      }
    }
    ++turn;
    return best;
  };

  double next_agent_check = 0;
  std::size_t next = 0;
  for (;;) {
    // The busy replica whose clock is earliest runs its next iteration, unless an arrival or an agent check comes
    // first.
    Replica* earliest = nullptr;
    for (Replica& r : replicas)
      if (busy(r) && (!earliest || r.clock.now() < earliest->clock.now())) earliest = &r;
    const double t_arrival = next < trace.size() ? trace[next].time : std::numeric_limits<double>::infinity();
    const double t_replica = earliest ? to_s(earliest->clock.now()) : std::numeric_limits<double>::infinity();
    if (next >= trace.size() && !earliest) break;
    if (router == Router::drain_aware && next_agent_check <= std::min(t_arrival, t_replica)) {
      for (Replica& r : replicas)
        r.weight = agent_weight_percent(r.batcher->stats().drain_seconds, spec.agent_target);
      next_agent_check += spec.agent_interval;
      continue;
    }
    if (earliest && t_replica <= t_arrival) {
      const bool stepped = earliest->batcher->step_once();
      const bool retired = earliest->batcher->retire_once();
      if (!stepped && !retired) {
        throw std::logic_error("simulate_cluster: a replica with work did nothing (use continuous admission)");
      }
      continue;
    }
    const Arrival& a = trace[next];
    for (Replica& r : replicas)  // an idle replica's clock waits at the arrival
      if (!busy(r) && to_s(r.clock.now()) < a.time) r.clock.set(ManualClock::time_point(to_ns(a.time)));
    const std::size_t i = pick();
    Replica& r = replicas[i];
    Record rec;
    rec.arrival = a;
    rec.submitted = a.time;
    records.push_back(rec);
    result.replica.push_back(i);
    ++r.in_flight;
    r.batcher->submit(Traced<SimJob>{SimJob{a.steps, 0, a.key}, records.size() - 1});
    ++next;
  }
  for (Replica& r : replicas) {
    result.run.step_seconds += r.traced->step_seconds();
    result.run.decode_seconds += r.traced->decode_seconds();
    result.run.decode_calls += r.traced->retire_calls();
  }
  result.run.stats = replicas.front().batcher->stats();
  check_invariants(result.run);
  return result;
}

}  // namespace carousel::bench
