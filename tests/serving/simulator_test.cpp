// Tests of the serving simulator (benchmarks/serving/serving_sim.hpp) against hand-computed timelines: the expected
// values below are worked out from t(b) = a + c*b and d(b) = 2 t(b) by hand, not taken from the simulator.
#include <doctest/doctest.h>

#include "serving_sim.hpp"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

using namespace carousel::bench;
using namespace std::chrono_literals;

namespace {

// The balanced regime: t(b) = 20 ms + 15 ms * b, d(b) = 2 t(b).
Regime balanced(double decode_factor = 2.0) {
  return Regime::linear("balanced", 20, 15, decode_factor);
}

std::vector<Arrival> arrivals_at(const std::vector<double>& times, std::size_t steps) {
  std::vector<Arrival> trace;
  for (double t : times)
    trace.push_back(Arrival{.time = t, .steps = steps});
  return trace;
}

double latency(const Record& r) {
  return r.done - r.submitted;
}

const Mode& mode_named(const std::vector<Mode>& ms, const std::string& name) {
  for (const Mode& m : ms)
    if (m.name == name) return m;
  FAIL("no mode " << name);
  return ms.front();
}

}  // namespace

TEST_CASE("Serving.CostCurve.LinearAndTable") {
  const CostCurve lin = CostCurve::linear(0.020, 0.015);
  CHECK(lin(1) == doctest::Approx(0.035));
  CHECK(lin(8) == doctest::Approx(0.140));
  CHECK(lin(0) == 0.0);
  CHECK(lin.scaled(2)(8) == doctest::Approx(0.280));

  const CostCurve tab = CostCurve::table({{4, 0.020}, {1, 0.010}, {2, 0.014}});
  CHECK(tab(1) == doctest::Approx(0.010));
  CHECK(tab(3) == doctest::Approx(0.017));  // halfway between 14 and 20 ms
  CHECK(tab(8) == doctest::Approx(0.032));  // extrapolated: 20 + 4 * 3 ms
  CHECK_THROWS_AS(CostCurve::table({{1, 0.01}, {1, 0.02}}), std::invalid_argument);

  SUBCASE("from CSV") {
    const std::string tmp = "serving_curve_test.csv";  // in the test's working directory (the build folder)
    {
      std::ofstream out(tmp);
      out << "batch_size,step_ms,note\n1,10,a\n2,14,b\n4,20,c\n";
    }
    const CostCurve csv = CostCurve::from_csv(tmp);
    CHECK(csv(3) == doctest::Approx(0.017));
    CHECK_FALSE(CostCurve::csv_has_column(tmp, "decode_ms"));
    CHECK_THROWS_AS(CostCurve::from_csv(tmp, "decode_ms"), std::runtime_error);  // no such column
    {
      std::ofstream out(tmp);
      out << "batch_size,step_ms,decode_ms\r\n1,10,90\r\n2,14,180\r\n4,20,360\r\n";  // CRLF lines too
    }
    CHECK(CostCurve::csv_has_column(tmp, "decode_ms"));
    CHECK(CostCurve::from_csv(tmp)(3) == doctest::Approx(0.017));
    CHECK(CostCurve::from_csv(tmp, "decode_ms")(3) == doctest::Approx(0.270));  // halfway between 180 and 360 ms
    {
      std::ofstream out(tmp);
      out << "batch_size,step_ms,decode_ms\n1,10\n";
    }
    CHECK_THROWS_AS(CostCurve::from_csv(tmp, "decode_ms"), std::runtime_error);  // the line lacks the column
    {
      std::ofstream out(tmp);
      out << "size,ms\n1,10\n";
    }
    CHECK_THROWS_AS(CostCurve::from_csv(tmp), std::runtime_error);
    std::remove(tmp.c_str());
  }
}

TEST_CASE("Serving.Simulator.OneRequestAlone") {
  // Latency alone = n t(1) + d(1) = 30 * 35 ms + 70 ms = 1.12 s; static batching waits its timeout first.
  const Regime r = balanced();
  const auto trace = arrivals_at({0.25}, 30);
  const std::vector<Mode> ms = modes(8);
  for (const Mode& m : ms) {
    CAPTURE(m.name);
    const RunResult run = simulate(r, m.options, trace, Workload{});
    REQUIRE(run.records.size() == 1);
    double expected = 1.12;
    if (m.name == "static") expected += 0.3;
    if (m.name == "dynamic") expected += 0.02;
    CHECK(latency(run.records[0]) == doctest::Approx(expected).epsilon(1e-9));
    CHECK(r.alone_time(0, 30) == doctest::Approx(1.12));
  }
}

TEST_CASE("Serving.Simulator.StaticBatchOfFour") {
  // Four simultaneous arrivals, max batch 4: one batch of 4 for all 30 steps, then one decode of 4.
  const auto trace = arrivals_at({0, 0, 0, 0}, 30);
  carousel::Options o{.max_batch_size = 4, .admission = carousel::Admission::static_batch, .batch_timeout = 300ms};
  SUBCASE("without decode: n t(4) = 30 * 80 ms") {
    const RunResult run = simulate(balanced(0.0), o, trace, Workload{});
    for (const Record& rec : run.records)
      CHECK(rec.done == doctest::Approx(2.4).epsilon(1e-9));
    CHECK(run.stats.mean_batch_size == doctest::Approx(4.0));
  }
  SUBCASE("with decode: n t(4) + d(4) = 2.4 + 0.16 s") {
    const RunResult run = simulate(balanced(), o, trace, Workload{});
    for (const Record& rec : run.records)
      CHECK(rec.done == doctest::Approx(2.56).epsilon(1e-9));
  }
}

TEST_CASE("Serving.Simulator.AdmissionCost") {
  // admit(b) = 10 ms + 5 ms * b, spent on the step loop when requests join, before their first step.
  Regime r = balanced();
  r.admit = CostCurve::linear(0.010, 0.005);
  SUBCASE("alone: 0.25 + admit(1) 15 ms + 30 * 35 ms + 70 ms") {
    const RunResult run = simulate(r, carousel::Options{.max_batch_size = 8}, arrivals_at({0.25}, 30), Workload{});
    CHECK(run.records[0].admitted == doctest::Approx(0.265).epsilon(1e-9));
    CHECK(run.records[0].done == doctest::Approx(1.385).epsilon(1e-9));
  }
  SUBCASE("a static batch of four: admit(4) 30 ms + 30 * 80 ms + d(4) 160 ms") {
    carousel::Options o{.max_batch_size = 4, .admission = carousel::Admission::static_batch, .batch_timeout = 300ms};
    const RunResult run = simulate(r, o, arrivals_at({0, 0, 0, 0}, 30), Workload{});
    for (const Record& rec : run.records)
      CHECK(rec.done == doctest::Approx(2.59).epsilon(1e-9));
  }
}

TEST_CASE("Serving.Simulator.LoopOverheadAndLedger") {
  // A loop overhead of 2 ms per step call: alone, 0.25 + 30 * (35 + 2) ms + d(1) 70 ms.
  Regime r = balanced();
  r.loop_overhead = 0.002;
  const RunResult alone = simulate(r, carousel::Options{.max_batch_size = 8}, arrivals_at({0.25}, 30), Workload{});
  CHECK(alone.records[0].done == doctest::Approx(1.43).epsilon(1e-9));
  // The ledger of two requests (A at 0, B joining at 35 ms, as in ContinuousJoinMidStep): steps by batch size, one
  // admission and one decode each, and a loop gap counted for every step of already-running requests (none on the
  // virtual clock, where the loop takes no time of its own).
  const RunResult two =
      simulate(balanced(), carousel::Options{.max_batch_size = 8}, arrivals_at({0.0, 0.010}, 30), Workload{});
  const CostLedger& led = two.ledger;
  REQUIRE(led.step.size() == 2);
  CHECK(led.step.at(1).calls == 2);  // A's first step, B's last
  CHECK(led.step.at(2).calls == 29);
  CHECK(led.step.at(1).seconds == doctest::Approx(0.070));
  CHECK(led.step.at(2).seconds == doctest::Approx(29 * 0.050));
  CHECK(led.admit.at(1).calls == 2);
  CHECK(led.decode.at(1).calls == 2);
  CHECK(led.decode.at(1).seconds == doctest::Approx(0.140));
  CHECK(led.loop_gap.calls == 30);  // every step but A's first
  CHECK(led.mean_loop_gap() == doctest::Approx(0.0));
  // The ledger's curves are the per-size means.
  const CostCurve step = CostLedger::curve(led.step, CostCurve::linear(1, 1));
  CHECK(step(1) == doctest::Approx(0.035));
  CHECK(step(2) == doctest::Approx(0.050));
  CHECK(CostLedger::curve({}, CostCurve::linear(0.5, 0))(3) == doctest::Approx(0.5));
}

TEST_CASE("Serving.Simulator.ContinuousJoinMidStep") {
  // A at 0; B at 10 ms, inside A's first step (0..35 ms). B joins at 35 ms; A's 29 remaining steps run at
  // t(2) = 50 ms -> 35 + 1450 = 1485 ms, A decodes alone (70 ms) -> 1555 ms. B has one step left, alone:
  // 1555 + 35 = 1590 ms, then its decode -> 1660 ms; B's latency 1.65 s.
  const auto trace = arrivals_at({0.0, 0.010}, 30);
  const RunResult run = simulate(balanced(), carousel::Options{.max_batch_size = 8}, trace, Workload{});
  REQUIRE(run.records.size() == 2);
  CHECK(run.records[0].done == doctest::Approx(1.555).epsilon(1e-9));
  CHECK(run.records[1].admitted == doctest::Approx(0.035).epsilon(1e-9));
  CHECK(run.records[1].done == doctest::Approx(1.660).epsilon(1e-9));
  CHECK(latency(run.records[1]) == doctest::Approx(1.650).epsilon(1e-9));
  // Model time: 35 + 1450 + 35 ms of steps, two decodes of 70 ms.
  CHECK(run.step_seconds == doctest::Approx(1.520));
  CHECK(run.decode_seconds == doctest::Approx(0.140));
}

TEST_CASE("Serving.Simulator.DecodeOffTheLoop") {
  // The same two requests with the decode on its own worker: A's steps end at 35 + 1450 = 1485 ms, its decode runs
  // 1485..1555 ms on the worker while B takes its last step alone (1485..1520 ms); B's decode waits for the worker:
  // 1555..1625 ms.
  Regime r = balanced();
  r.decode_off_loop = true;
  const auto trace = arrivals_at({0.0, 0.010}, 30);
  const RunResult run = simulate(r, carousel::Options{.max_batch_size = 8}, trace, Workload{});
  CHECK(run.records[0].done == doctest::Approx(1.555).epsilon(1e-9));
  CHECK(run.records[1].done == doctest::Approx(1.625).epsilon(1e-9));
  CHECK(run.step_seconds == doctest::Approx(1.520));
  CHECK(run.decode_seconds == doctest::Approx(0.140));
  SUBCASE("what finished while the worker was busy is decoded in one call") {
    // d(b) = 4 t(b). A (30 steps) at 0, B (30) and C (31) at 10 ms join at 35 ms. A's steps end at 35 + 29 t(3) =
    // 1920 ms, its decode d(1) = 140 ms runs 1920..2060. B leaves at 1920 + t(2) = 1970, C at 1970 + t(1) = 2005 ms;
    // both wait for the worker and are decoded together, d(2) = 200 ms: 2060..2260.
    Regime slow = balanced(4.0);
    slow.decode_off_loop = true;
    std::vector<Arrival> abc = {{.time = 0, .steps = 30}, {.time = 0.010, .steps = 30}, {.time = 0.010, .steps = 31}};
    const RunResult three = simulate(slow, carousel::Options{.max_batch_size = 8}, abc, Workload{});
    CHECK(three.records[0].done == doctest::Approx(2.060).epsilon(1e-9));
    CHECK(three.records[1].done == doctest::Approx(2.260).epsilon(1e-9));
    CHECK(three.records[2].done == doctest::Approx(2.260).epsilon(1e-9));
    CHECK(three.decode_seconds == doctest::Approx(0.340));
  }
}

TEST_CASE("Serving.Simulator.StaticSaturation") {
  // A backlog under static batching runs full batches back to back: 8 / (30 t(8) + d(8)) = 8 / 4.48 s.
  Workload w{.pattern = Pattern::backlog, .requests = 800};
  const Regime r = balanced();
  const RunResult run = simulate(r, mode_named(modes(8), "static").options, w);
  CHECK(summarize(run, r).throughput == doctest::Approx(8.0 / 4.48).epsilon(1e-9));
  CHECK(run.stats.mean_occupancy == doctest::Approx(1.0));
}

TEST_CASE("Serving.Simulator.ClosedLoopSeedSetup") {
  // users = batch size, each posts again as soon as it gets its answer: every request rides a full batch of 8, so every
  // latency is 30 t(8) + d(8) = 4.48 s, in static and continuous modes alike.
  Workload w{.pattern = Pattern::closed_loop, .requests = 80, .users = 8};
  const Regime r = balanced();
  for (const char* name : {"static", "continuous"}) {
    CAPTURE(name);
    const RunResult run = simulate(r, mode_named(modes(8), name).options, w);
    REQUIRE(run.records.size() == 80);
    // The first batch of static batching forms at once (8 waiting = a full batch), so no timeout is paid either.
    for (const Record& rec : run.records)
      CHECK(latency(rec) == doctest::Approx(4.48).epsilon(1e-9));
  }
}

TEST_CASE("Serving.Workload.PoissonDeterminism") {
  Workload w{
      .pattern = Pattern::poisson, .rate = 2.0, .requests = 20000, .step_mix = {20, 30, 50}, .keys = 2, .seed = 7};
  const auto a = generate_trace(w);
  const auto b = generate_trace(w);
  REQUIRE(a.size() == 20000);
  bool same = true;
  for (std::size_t i = 0; i < a.size(); ++i)
    same = same && a[i].time == b[i].time && a[i].steps == b[i].steps && a[i].key == b[i].key &&
           a[i].priority == b[i].priority;
  CHECK(same);

  w.seed = 8;
  const auto c = generate_trace(w);
  CHECK(c[0].time != a[0].time);

  // Statistics of the draw: mean inter-arrival 1/rate (standard error 0.7% at n = 20000; 3% tolerance), each step
  // count and key about equally often, 10% high priority (standard error 0.2%; 1% tolerance).
  CHECK(a.back().time / 20000.0 == doctest::Approx(0.5).epsilon(0.03));
  std::size_t high = 0, key1 = 0, fifty = 0;
  for (const Arrival& x : a) {
    high += x.priority == 1;
    key1 += x.key == 1;
    fifty += x.steps == 50;
    CHECK((x.steps == 20 || x.steps == 30 || x.steps == 50));
  }
  CHECK(static_cast<double>(high) / 20000.0 == doctest::Approx(0.1).epsilon(0.1));
  CHECK(static_cast<double>(key1) / 20000.0 == doctest::Approx(0.5).epsilon(0.03));
  CHECK(static_cast<double>(fifty) / 20000.0 == doctest::Approx(1.0 / 3).epsilon(0.05));
  for (std::size_t i = 1; i < a.size(); ++i)
    REQUIRE(a[i].time >= a[i - 1].time);
}

TEST_CASE("Serving.Simulator.EqualUnetEvaluationsInEveryMode") {
  // A request with n steps gets exactly n step() calls, whatever the mode (no off-by-one, no extra step for joiners,
  // none lost to preemption). Mixed steps, two resolutions, 90% load of static batching's saturation.
  const Regime r = balanced();
  Workload w{.pattern = Pattern::poisson, .rate = 0.75, .requests = 400, .step_mix = {20, 30, 50}, .keys = 2};
  for (const Mode& m : modes(8)) {
    CAPTURE(m.name);
    const RunResult run = simulate(r, m.options, w);
    REQUIRE(run.records.size() == 400);
    std::size_t calls = 0, steps = 0;
    bool each = true;
    for (const Record& rec : run.records) {
      calls += rec.step_calls;
      steps += rec.arrival.steps;
      each = each && rec.step_calls == rec.arrival.steps;
    }
    CHECK(each);
    CHECK(calls == steps);
    CHECK(run.stats.request_steps == steps);
    CHECK(run.stats.completed == 400);
  }
  SUBCASE("the checker catches a miscount") {
    RunResult run = simulate(r, modes(8).front().options, arrivals_at({0}, 30), Workload{});
    ++run.records[0].step_calls;
    CHECK_THROWS_AS(check_invariants(run), std::logic_error);
  }
}

TEST_CASE("Serving.Simulator.Deterministic") {
  Workload w{.pattern = Pattern::poisson, .rate = 1.5, .requests = 300, .step_mix = {20, 30, 50}};
  for (const Mode& m : modes(8)) {
    CAPTURE(m.name);
    const RunResult x = simulate(balanced(), m.options, w);
    const RunResult y = simulate(balanced(), m.options, w);
    bool same = true;
    for (std::size_t i = 0; i < x.records.size(); ++i)
      same = same && x.records[i].done == y.records[i].done && x.records[i].admitted == y.records[i].admitted;
    CHECK(same);
  }
}

TEST_CASE("Serving.WallClock.RunsTheTrace") {
  // A short real-time run (sleeping model, scheduler thread): every request completes with exactly its step calls, and
  // the first one no faster than it could alone: the model's time line starts at zero overrun and never runs ahead of
  // the cost model, so everything up to its decode took at least n t(1) + d(1).
  const Regime fast = Regime::linear("fast", 0.5, 0.25, 2.0);
  const auto trace = arrivals_at({0.0, 0.002, 0.004}, 10);
  CostModel<WallSpend> model(fast, WallSpend{});
  const RunResult run = run_wallclock(model, carousel::Options{.max_batch_size = 8}, trace, [](const Arrival& a) {
    return SimJob{a.steps, 0, a.key};
  });
  REQUIRE(run.records.size() == 3);
  for (const Record& rec : run.records)
    CHECK(rec.step_calls == 10);
  CHECK(latency(run.records[0]) >= fast.alone_time(0, 10));
}
