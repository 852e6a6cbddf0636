// carousel-bench-serving — the serving benchmark.
//
// Drives the real StepBatcher with a model whose step costs t(b) = a + c*b (or a measured table) and whose retire
// (VAE decode) costs d(b), and compares batching modes over cost regimes, loads and workloads.
//
//   carousel-bench-serving                       the simulation grid (virtual time, deterministic, well under a minute)
//   carousel-bench-serving --wallclock           simulation vs wall clock on scaled regimes (real sleeps, ~1 minute)
//   carousel-bench-serving --wallclock-pipeline DIR   the same with the real CPU Pipeline on a model folder (tiny)
//   carousel-bench-serving --routing             replicas behind round robin, least connections and drain-aware
//                                                routing (virtual time; replicas.hpp), mixed 20/30/50 steps at two
//                                                resolutions, on the balanced regime or --curve
//
// Options:
//   --csv PATH             where the grid's CSV goes (default: <build folder>/serving.csv, or serving-wallclock.csv)
//   --curve PATH           add a "measured" regime from a CSV with header batch_size,step_ms[,decode_ms] (the decode
//                          from its decode_ms column when it has one, else --decode-factor x step_ms)
//   --requests N           requests per open-loop run (default 2000)
//   --seed S               workload seed (default 1)
//   --decode-factor F      VAE decode of b requests costs F x t(b) (default 2)
//   --policy NAME          carousel's recommended mode for the summary line (default cost_aware)
//   --decode-off-loop      the decode runs in the batcher's retire stage (Options::concurrent_retire), not on the step
//                          loop: replayed on one decode worker in the simulation, a second thread in wall-clock runs
//   --carousel-max-batch N max_batch_size of the continuous modes (default 8, like static and dynamic batching)
//   --replicas N           --routing: replicas behind the router (default 4)
//   --agent-target S       --routing: the agents' --agent-target-seconds (default 10)
//   --agent-interval S     --routing: seconds between agent checks, HAProxy's agent-inter (default 1)
//   --routing-steps A,B,.. --routing: the step counts requests draw from (default 20,30,50)
//   --wall-requests N      --wallclock: requests per point (default 150)
//   --wall-reps N          --wallclock-pipeline: interleaved repetitions, reported as medians and ranges (default 1)
//   --wall-modes M@X,...   --wallclock: the modes compared, each on the balanced regime's costs (and static timeout)
//                          scaled by X (default static@0.05,continuous@0.05,cost_aware@0.05; a policy that reads
//                          the measured step times may need steps long against the OS's wake-up jitter)
//
// The last line printed is the summary: carousel's policy over static batching (ratios of mean and p99 latency) at 50%
// and 90% load of the balanced regime, the worst over every regime and load, and the throughput ratio at saturation.
#include "replicas.hpp"
#include "serving_sim.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef CAROUSEL_SERVING_WITH_PIPELINE
#include <carousel/cpu/backend.hpp>
#include <carousel/diffusion/pipeline.hpp>
#endif

#ifndef CAROUSEL_SERVING_OUT_DIR
#define CAROUSEL_SERVING_OUT_DIR "."
#endif

namespace {

using namespace carousel::bench;

struct Cli {
  std::string csv;
  std::string curve;
  std::size_t requests = 2000;
  std::uint64_t seed = 1;
  double decode_factor = 2.0;
  std::string policy = "cost_aware";
  std::size_t carousel_max_batch = 8;
  bool decode_off_loop = false;
  bool wallclock = false;
  bool routing = false;
  std::size_t replicas = 4;
  double agent_target = 10.0;
  double agent_interval = 1.0;
  std::vector<std::size_t> routing_steps = {20, 30, 50};
  std::size_t wall_requests = 150;
  std::size_t wall_reps = 1;  // --wall-reps: interleaved repetitions of --wallclock-pipeline's points
  std::string wall_modes = "static@0.05,continuous@0.05,cost_aware@0.05";
  std::string pipeline;  // --wallclock-pipeline: a diffusers model folder run by the real CPU Pipeline
};

Cli parse(int argc, char** argv) {
  Cli cli;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--csv") {
      cli.csv = value();
    } else if (arg == "--curve") {
      cli.curve = value();
    } else if (arg == "--requests") {
      cli.requests = std::stoul(value());
    } else if (arg == "--seed") {
      cli.seed = std::stoull(value());
    } else if (arg == "--decode-factor") {
      cli.decode_factor = std::stod(value());
    } else if (arg == "--policy") {
      cli.policy = value();
    } else if (arg == "--carousel-max-batch") {
      cli.carousel_max_batch = std::stoul(value());
    } else if (arg == "--wall-requests") {
      cli.wall_requests = std::stoul(value());
    } else if (arg == "--wall-reps") {
      cli.wall_reps = std::max<std::size_t>(1, std::stoul(value()));
    } else if (arg == "--wall-modes") {
      cli.wall_modes = value();
    } else if (arg == "--decode-off-loop") {
      cli.decode_off_loop = true;
    } else if (arg == "--wallclock") {
      cli.wallclock = true;
    } else if (arg == "--routing") {
      cli.routing = true;
    } else if (arg == "--replicas") {
      cli.replicas = std::stoul(value());
    } else if (arg == "--agent-target") {
      cli.agent_target = std::stod(value());
    } else if (arg == "--agent-interval") {
      cli.agent_interval = std::stod(value());
    } else if (arg == "--routing-steps") {
      cli.routing_steps.clear();
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');)
        cli.routing_steps.push_back(std::stoul(item));
    } else if (arg == "--wallclock-pipeline") {
      cli.pipeline = value();
      cli.wallclock = true;
    } else {
      throw std::invalid_argument("unknown argument " + arg + " (see the comment at the top of bench_serving.cpp)");
    }
  }
  if (cli.csv.empty())
    cli.csv = std::string(CAROUSEL_SERVING_OUT_DIR) + (cli.wallclock ? "/serving-wallclock.csv"
                                                       : cli.routing ? "/serving-routing.csv"
                                                                     : "/serving.csv");
  return cli;
}

// One workload family of the grid; `loads` are fractions of the static-batching saturation throughput.
struct Family {
  std::string name;
  Pattern pattern;
  std::vector<std::size_t> step_mix;
  int keys;
  std::vector<double> loads;  // empty: closed loop / backlog (no load axis)
  std::size_t burst_size = 12;
};

struct Row {
  std::string regime, workload;
  double load;  // fraction of static saturation; -1: none (closed loop, saturated)
  std::string mode, cls;
  Summary s;
  double mean_ratio = 0, p99_ratio = 0, throughput_ratio = 0;  // vs static, same regime/workload/load/class
};

std::string load_label(double load) {
  if (load < 0) return "-";
  char buf[16];
  std::snprintf(buf, sizeof buf, "%.0f%%", load * 100);
  return buf;
}

void add_rows(std::vector<Row>& rows, const std::string& regime_name, const std::string& family, double load,
              const std::string& mode, const RunResult& r, const Regime& regime) {
  rows.push_back({regime_name, family, load, mode, "all", summarize(r, regime)});
  rows.push_back({regime_name, family, load, mode, "high",
                  summarize(r, regime, [](const Record& x) { return x.arrival.priority > 0; })});
  rows.push_back({regime_name, family, load, mode, "low",
                  summarize(r, regime, [](const Record& x) { return x.arrival.priority == 0; })});
}

void fill_ratios(std::vector<Row>& rows) {
  std::map<std::string, const Row*> base;
  auto key = [](const Row& r) { return r.regime + "|" + r.workload + "|" + load_label(r.load) + "|" + r.cls; };
  for (const Row& r : rows)
    if (r.mode == "static") base[key(r)] = &r;
  for (Row& r : rows) {
    const auto it = base.find(key(r));
    if (it == base.end() || it->second->s.count == 0 || r.s.count == 0) continue;
    r.mean_ratio = r.s.mean / it->second->s.mean;
    r.p99_ratio = r.s.p99 / it->second->s.p99;
    r.throughput_ratio = r.s.throughput / it->second->s.throughput;
  }
}

void write_csv(const std::string& path, const std::vector<Row>& rows) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  out << "regime,workload,load,mode,class,count,mean_s,p50_s,p90_s,p99_s,max_s,slowdown_mean,slowdown_p99,"
         "wait_mean_s,wait_p99_s,throughput_rps,occupancy,busy,decode_share,decode_batch,mean_vs_static,p99_vs_static,"
         "throughput_vs_static\n";
  for (const Row& r : rows) {
    const Summary& s = r.s;
    out << r.regime << ',' << r.workload << ',' << (r.load < 0 ? std::string() : std::to_string(r.load)) << ','
        << r.mode << ',' << r.cls << ',' << s.count << ',' << s.mean << ',' << s.p50 << ',' << s.p90 << ',' << s.p99
        << ',' << s.max << ',' << s.slowdown_mean << ',' << s.slowdown_p99 << ',' << s.wait_mean << ',' << s.wait_p99
        << ',' << s.throughput << ',' << s.occupancy << ',' << s.busy << ',' << s.decode_share << ',' << s.decode_batch
        << ',' << r.mean_ratio << ',' << r.p99_ratio << ',' << r.throughput_ratio << '\n';
  }
}

void print_table(const std::vector<Row>& rows, const std::string& regime, const std::string& workload) {
  std::printf(
      "\n## %s / %s   (times in seconds; dec = decode share of model time, d/cl = requests per decode call, "
      "x/st = ratio to static batching)\n",
      regime.c_str(), workload.c_str());
  std::printf("%-5s %-19s %8s %8s %8s %8s %6s %7s %7s %5s %5s %5s %5s %6s %6s\n", "load", "mode", "mean", "p50", "p90",
              "p99", "slow", "wait", "thr/s", "occ", "busy", "dec", "d/cl", "mn/st", "p99/st");
  for (const Row& r : rows) {
    if (r.regime != regime || r.workload != workload) continue;
    if (r.cls != "all" && r.mode != "preempt") continue;
    const std::string mode = r.cls == "all" ? r.mode : r.mode + ":" + r.cls;
    const Summary& s = r.s;
    std::printf("%-5s %-19s %8.3f %8.3f %8.3f %8.3f %6.2f %7.3f %7.2f %5.2f %5.2f %5.2f %5.2f %6.2f %6.2f\n",
                load_label(r.load).c_str(), mode.c_str(), s.mean, s.p50, s.p90, s.p99, s.slowdown_mean, s.wait_mean,
                s.throughput, s.occupancy, s.busy, s.decode_share, s.decode_batch, r.mean_ratio, r.p99_ratio);
  }
}

const Row& find_row(const std::vector<Row>& rows, const std::string& regime, const std::string& workload, double load,
                    const std::string& mode) {
  for (const Row& r : rows) {
    if (r.regime == regime && r.workload == workload && r.mode == mode && r.cls == "all" &&
        load_label(r.load) == load_label(load))
      return r;
  }
  throw std::runtime_error("no row " + regime + "/" + workload + "/" + load_label(load) + "/" + mode);
}

Workload workload_of(const Family& f, const Cli& cli, double rate) {
  Workload w;
  w.pattern = f.pattern;
  w.rate = rate;
  w.requests = f.pattern == Pattern::closed_loop ? cli.requests / 4 : cli.requests;
  w.step_mix = f.step_mix;
  w.keys = f.keys;
  w.burst_size = f.burst_size;
  w.seed = cli.seed;
  return w;
}

// Static batching's saturation throughput for a workload family: full batches back to back (a backlog).
double static_saturation(const Regime& regime, const Family& f, const Cli& cli, const carousel::Options& static_mode) {
  Family backlog = f;
  backlog.pattern = Pattern::backlog;
  Workload w = workload_of(backlog, cli, 1.0);
  w.requests = 800;
  return summarize(simulate(regime, static_mode, w), regime).throughput;
}

int run_grid(const Cli& cli) {
  std::vector<Regime> regimes = {Regime::linear("linear", 10, 60, cli.decode_factor),
                                 Regime::linear("balanced", 20, 15, cli.decode_factor),
                                 Regime::linear("batch_friendly", 50, 10, cli.decode_factor)};
  if (!cli.curve.empty()) {
    const carousel::bench::CostCurve measured = CostCurve::from_csv(cli.curve);
    const bool decode_measured = CostCurve::csv_has_column(cli.curve, "decode_ms");
    regimes.push_back(
        Regime{"measured", measured,
               decode_measured ? CostCurve::from_csv(cli.curve, "decode_ms") : measured.scaled(cli.decode_factor)});
  }
  for (Regime& r : regimes)
    r.decode_off_loop = cli.decode_off_loop;
  const std::vector<double> all_loads = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0};
  const std::vector<Family> families = {
      {"poisson", Pattern::poisson, {30}, 1, all_loads},
      {"poisson_mixed_steps", Pattern::poisson, {20, 30, 50}, 1, {0.5, 0.9}},
      {"poisson_two_res", Pattern::poisson, {30}, 2, {0.5, 0.9}},
      {"poisson_mixed_two_res", Pattern::poisson, {20, 30, 50}, 2, {0.5, 0.9}},
      {"burst12_mixed_steps", Pattern::burst, {20, 30, 50}, 1, {0.5, 0.9}},
      {"closed_loop_8_users", Pattern::closed_loop, {30}, 1, {}},
      {"saturated", Pattern::backlog, {30}, 1, {}},
      {"saturated_mixed_two_res", Pattern::backlog, {20, 30, 50}, 2, {}},
  };
  std::vector<Mode> mode_list = modes(8);
  for (Mode& m : mode_list) {
    if (m.options.admission != carousel::Admission::static_batch) m.options.max_batch_size = cli.carousel_max_batch;
  }

  std::vector<Row> rows;
  std::map<std::string, double> saturation;  // regime|family -> requests/s
  for (const Regime& regime : regimes) {
    for (const Family& f : families) {
      const double sat = static_saturation(regime, f, cli, mode_list.front().options);
      saturation[regime.name + "|" + f.name] = sat;
      const std::vector<double> loads = f.loads.empty() ? std::vector<double>{-1.0} : f.loads;
      for (double load : loads) {
        Workload w = workload_of(f, cli, load > 0 ? load * sat : 1.0);
        if (f.pattern == Pattern::backlog) w.requests = 800;
        for (const Mode& m : mode_list) {
          add_rows(rows, regime.name, f.name, load, m.name, simulate(regime, m.options, w), regime);
        }
      }
    }
  }
  fill_ratios(rows);
  write_csv(cli.csv, rows);

  std::printf(
      "carousel-bench-serving: simulation grid, max_batch_size 8 (static, dynamic) and %zu (continuous modes), %zu "
      "requests per open-loop run, seed %llu, decode d(b) = %.2f x t(b) %s\n",
      cli.carousel_max_batch, cli.requests, static_cast<unsigned long long>(cli.seed), cli.decode_factor,
      cli.decode_off_loop ? "on its own worker" : "on the step loop");
  std::printf("static saturation throughput (req/s):");
  for (const auto& [k, v] : saturation)
    std::printf(" %s=%.3f", k.c_str(), v);
  std::printf("\n");
  for (const Regime& regime : regimes)
    for (const Family& f : families)
      print_table(rows, regime.name, f.name);
  std::printf("\nCSV: %s\n", cli.csv.c_str());

  // Worst over every regime and load of the main grid (Poisson, 30 steps, one resolution), and over every workload.
  double worst_mean = 0, worst_p99 = 0, worst_all_mean = 0, worst_all_p99 = 0;
  std::string worst_mean_at, worst_p99_at;
  for (const Row& r : rows) {
    if (r.mode != cli.policy || r.cls != "all" || r.load < 0) continue;
    worst_all_mean = std::max(worst_all_mean, r.mean_ratio);
    worst_all_p99 = std::max(worst_all_p99, r.p99_ratio);
    if (r.workload != "poisson") continue;
    if (r.mean_ratio > worst_mean) {
      worst_mean = r.mean_ratio;
      worst_mean_at = r.regime + " " + load_label(r.load);
    }
    if (r.p99_ratio > worst_p99) {
      worst_p99 = r.p99_ratio;
      worst_p99_at = r.regime + " " + load_label(r.load);
    }
  }
  std::printf(
      "worst (poisson grid): mean %.2f at %s, p99 %.2f at %s; worst over all open-loop workloads: mean %.2f "
      "p99 %.2f\n",
      worst_mean, worst_mean_at.c_str(), worst_p99, worst_p99_at.c_str(), worst_all_mean, worst_all_p99);
  const Row& b50 = find_row(rows, "balanced", "poisson", 0.5, cli.policy);
  const Row& b90 = find_row(rows, "balanced", "poisson", 0.9, cli.policy);
  const Row& sat = find_row(rows, "balanced", "saturated", -1, cli.policy);
  std::printf(
      "summary: balanced 50%% mean=%.2f p99=%.2f; balanced 90%% mean=%.2f p99=%.2f; worst mean=%.2f p99=%.2f; "
      "saturated throughput=%.2f\n",
      b50.mean_ratio, b50.p99_ratio, b90.mean_ratio, b90.p99_ratio, worst_mean, worst_p99, sat.throughput_ratio);
  return 0;
}

// Simulation vs wall clock on scaled copies of the balanced regime (a = 20x ms, c = 15x ms, decode 2 x t(b), static
// timeout 0.3x s), one scale x per mode (`--wall-modes mode@x,...`).
int run_wallclock_check(const Cli& cli) {
  std::vector<std::pair<Mode, double>> checked;
  std::istringstream list(cli.wall_modes);
  for (std::string item; std::getline(list, item, ',');) {
    const auto at = item.find('@');
    const std::string name = item.substr(0, at);
    const double x = at == std::string::npos ? 0.05 : std::stod(item.substr(at + 1));
    bool found = false;
    for (Mode m : modes(8)) {
      if (m.name != name) continue;
      m.options.batch_timeout = std::chrono::round<std::chrono::nanoseconds>(m.options.batch_timeout * x);
      checked.emplace_back(m, x);
      found = true;
    }
    if (!found || !(x > 0)) throw std::invalid_argument("--wall-modes: bad entry " + item);
  }

  const Family f{"poisson", Pattern::poisson, {30}, 1, {0.5, 0.9}};
  std::vector<Row> rows;
  double worst = 0;
  std::printf("carousel-bench-serving --wallclock: balanced regime scaled by x, %zu requests per point, decode %s\n",
              cli.wall_requests, cli.decode_off_loop ? "in the retire stage (concurrent_retire)" : "on the step loop");
  std::printf("%-5s %-11s %-5s %-5s %8s %8s %8s %8s %8s %7s\n", "load", "mode", "x", "run", "mean", "p50", "p90", "p99",
              "thr/s", "occ");
  for (const auto& [m, x] : checked) {
    Regime regime = Regime::linear("balanced", 20 * x, 15 * x, cli.decode_factor);
    regime.decode_off_loop = cli.decode_off_loop;
    carousel::Options wall_options = m.options;
    wall_options.concurrent_retire = cli.decode_off_loop;
    carousel::Options static_mode = modes(8).front().options;
    static_mode.batch_timeout = std::chrono::round<std::chrono::nanoseconds>(static_mode.batch_timeout * x);
    const double sat = static_saturation(regime, f, cli, static_mode);
    for (double load : f.loads) {
      Workload w = workload_of(f, cli, load * sat);
      w.requests = cli.wall_requests;
      const std::vector<Arrival> trace = generate_trace(w);
      const Summary sim = summarize(simulate(regime, m.options, w), regime);
      CostModel<WallSpend> model(regime, WallSpend{}, WallSpend{});
      const Summary wall = summarize(run_wallclock(model, wall_options, trace,
                                                   [](const Arrival& a) {
                                                     return SimJob{a.steps, 0, a.key};
                                                   }),
                                     regime);
      char scale[16];
      std::snprintf(scale, sizeof scale, "%.2f", x);
      for (const auto& [run, s] : {std::pair<const char*, const Summary&>{"sim", sim}, {"wall", wall}}) {
        std::printf("%-5s %-11s %-5s %-5s %8.4f %8.4f %8.4f %8.4f %8.2f %7.2f\n", load_label(load).c_str(),
                    m.name.c_str(), scale, run, s.mean, s.p50, s.p90, s.p99, s.throughput, s.occupancy);
        rows.push_back({std::string("balanced_x") + scale, std::string("poisson_") + run, load, m.name, "all", s});
      }
      // Judged on the mean and the median; the tails of a few hundred requests are printed, not judged.
      const double dev = std::max(std::abs(wall.mean / sim.mean - 1), std::abs(wall.p50 / sim.p50 - 1));
      worst = std::max(worst, dev);
      std::printf("%-5s %-11s %-5s wall/sim: mean %.3f p50 %.3f p90 %.3f p99 %.3f throughput %.3f\n",
                  load_label(load).c_str(), m.name.c_str(), scale, wall.mean / sim.mean, wall.p50 / sim.p50,
                  wall.p90 / sim.p90, wall.p99 / sim.p99, wall.throughput / sim.throughput);
    }
  }
  write_csv(cli.csv, rows);
  std::printf("CSV: %s\n", cli.csv.c_str());
  std::printf("wallclock: largest |wall/sim - 1| of mean and p50 = %.3f (goal <= 0.10): %s\n", worst,
              worst <= 0.10 ? "agree" : "DISAGREE");
  return worst <= 0.10 ? 0 : 1;
}

#ifdef CAROUSEL_SERVING_WITH_PIPELINE
// Simulation vs wall clock with the real CPU diffusion Pipeline: measures its step and decode times per batch size,
// simulates the Poisson trace on that measured curve, then runs the same trace through the Pipeline in real time.
int run_pipeline_check(const Cli& cli) {
  namespace cd = carousel::diffusion;
  using Pipeline = cd::Pipeline<carousel::cpu::Backend>;
  const auto folder = carousel::checkpoint::DiffusersFolder::open(cli.pipeline);
  const carousel::cpu::Backend backend(folder);
  Pipeline pipeline(backend, cd::pipeline_scheduler_config(folder),
                    cd::pipeline_options(folder, backend.vae_scale_factor()));
  auto job = [&](std::size_t steps, std::uint64_t seed) {
    cd::Job j;
    j.prompt = "a red circle on a blue background";
    j.steps = static_cast<int>(steps);
    j.seed = seed;
    pipeline.validate(j);
    return j;
  };
  // The measured curves: the median of several timed steps (after one warm-up step) and of several decodes, per
  // batch size (medians, because one slow sample on a shared machine would bend the curve). The rounds are
  // interleaved over the batch sizes, so a spell of load from elsewhere stretches every size alike instead of
  // bending the curve at one of them.
  std::vector<std::pair<std::size_t, double>> step_points, decode_points, admit_points;
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  using Clock = std::chrono::steady_clock;
  const std::vector<std::size_t> sizes = {1, 2, 4, 8};
  std::vector<std::vector<double>> step_times(sizes.size()), decode_times(sizes.size()), admit_times(sizes.size());
  for (int round = 0; round < 7; ++round) {
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      std::vector<cd::Job> jobs;
      for (std::size_t i = 0; i < sizes[k]; ++i)
        jobs.push_back(job(50, i));
      std::vector<cd::Job*> ptrs;
      for (auto& j : jobs)
        ptrs.push_back(&j);
      const auto admit_start = Clock::now();
      pipeline.admit(ptrs);
      admit_times[k].push_back(std::chrono::duration<double>(Clock::now() - admit_start).count());
      pipeline.step(ptrs);
      for (int r = 0; r < 4; ++r) {
        const auto t0 = Clock::now();
        pipeline.step(ptrs);
        step_times[k].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
      const auto t0 = Clock::now();
      pipeline.retire(ptrs);
      decode_times[k].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
  }
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    step_points.emplace_back(sizes[k], median(step_times[k]));
    decode_points.emplace_back(sizes[k], median(decode_times[k]));
    admit_points.emplace_back(sizes[k], median(admit_times[k]));
  }
  Regime regime{"pipeline", CostCurve::table(step_points), CostCurve::table(decode_points)};
  regime.decode_off_loop = cli.decode_off_loop;
  regime.admit = CostCurve::table(admit_points);
  Regime without_admit = regime;  // the simulator without the admission cost, to show what that cost explains
  without_admit.admit = CostCurve{};
  std::printf("carousel-bench-serving --wallclock-pipeline %s: measured t(b) / d(b) / admit(b) in ms:",
              cli.pipeline.c_str());
  for (std::size_t k = 0; k < step_points.size(); ++k) {
    std::printf(" b=%zu %.2f/%.2f/%.2f", step_points[k].first, step_points[k].second * 1e3,
                decode_points[k].second * 1e3, admit_points[k].second * 1e3);
  }
  std::printf("\n");
  const Family f{"poisson", Pattern::poisson, {20}, 1, {0.5, 0.9}};
  const std::vector<Mode> all = modes(8);
  // 100% load is static batching's saturation measured on the wall clock (a backlog of 40 requests through the real
  // loop), as the server protocol (benchmarks/serving/protocol.py) measures it; the simulated one is printed beside.
  Family backlog_family = f;
  backlog_family.pattern = Pattern::backlog;
  Workload backlog = workload_of(backlog_family, cli, 1.0);
  backlog.requests = 40;
  carousel::Options static_wall = all.front().options;
  static_wall.concurrent_retire = cli.decode_off_loop;
  const double sat = summarize(run_wallclock(pipeline, static_wall, generate_trace(backlog),
                                             [&](const Arrival& a) { return job(a.steps, 7); }),
                               regime)
                         .throughput;
  std::printf("static saturation: wall clock %.3f req/s, simulated %.3f (with admission), %.3f (without)\n", sat,
              static_saturation(regime, f, cli, all.front().options),
              static_saturation(without_admit, f, cli, all.front().options));
  // Repetitions, interleaved: repetition r runs every (mode, load) point in an order rotated by r, on the trace of
  // seed + r, the same for every mode, so that ratios to static are paired within a repetition.
  struct Point {
    std::vector<double> mean, p50, p99, sim_mean, sim_p50, own_mean, own_p50, vs_static_mean, vs_static_p99;
  };
  std::vector<std::pair<const Mode*, double>> order;
  for (const Mode& m : all) {
    if (m.name != "static" && m.name != "continuous" && m.name != "cost_aware") continue;
    for (double load : f.loads)
      order.emplace_back(&m, load);
  }
  std::map<std::pair<std::string, double>, Point> points;
  std::vector<std::string> ledger_lines;
  std::printf("%-3s %-5s %-11s %-5s %8s %8s %8s %8s %8s %7s\n", "rep", "load", "mode", "run", "mean", "p50", "p90",
              "p99", "thr/s", "occ");
  for (std::size_t rep = 0; rep < cli.wall_reps; ++rep) {
    std::map<std::pair<std::string, double>, Summary> walls;
    for (std::size_t i = 0; i < order.size(); ++i) {
      const auto& [mode, load] = order[(i + rep) % order.size()];
      const Mode& m = *mode;
      Workload w = workload_of(f, cli, load * sat);
      w.requests = cli.wall_requests;
      w.seed = cli.seed + rep;
      const std::vector<Arrival> trace = generate_trace(w);
      const Summary sim = summarize(simulate(regime, m.options, w), regime);
      carousel::Options wall_options = m.options;
      wall_options.concurrent_retire = cli.decode_off_loop;
      const RunResult wall_run =
          run_wallclock(pipeline, wall_options, trace, [&](const Arrival& a) { return job(a.steps, 7); });
      const Summary wall = summarize(wall_run, regime);
      // What each cost explains: the same trace simulated again with the run's own measured costs, one added at a
      // time (its step times, then its admission and decode times, then the loop's own time per step).
      const CostLedger& led = wall_run.ledger;
      Regime own_step = regime;
      own_step.step = CostLedger::curve(led.step, regime.step);
      Regime own_calls = own_step;
      own_calls.admit = CostLedger::curve(led.admit, regime.admit);
      own_calls.decode = CostLedger::curve(led.decode, regime.decode);
      Regime own_all = own_calls;
      own_all.loop_overhead = led.mean_loop_gap();
      const Summary s1 = summarize(simulate(own_step, m.options, w), own_step);
      const Summary s2 = summarize(simulate(own_calls, m.options, w), own_calls);
      const Summary s3 = summarize(simulate(own_all, m.options, w), own_all);
      for (const auto& [run, sm] : {std::pair<const char*, const Summary&>{"sim", sim}, {"wall", wall}}) {
        std::printf("%-3zu %-5s %-11s %-5s %8.4f %8.4f %8.4f %8.4f %8.2f %7.2f\n", rep, load_label(load).c_str(),
                    m.name.c_str(), run, sm.mean, sm.p50, sm.p90, sm.p99, sm.throughput, sm.occupancy);
      }
      Point& pt = points[{m.name, load}];
      pt.mean.push_back(wall.mean);
      pt.p50.push_back(wall.p50);
      pt.p99.push_back(wall.p99);
      pt.sim_mean.push_back(wall.mean / sim.mean);
      pt.sim_p50.push_back(wall.p50 / sim.p50);
      pt.own_mean.push_back(wall.mean / s3.mean);
      pt.own_p50.push_back(wall.p50 / s3.p50);
      walls[{m.name, load}] = wall;
      char line[512];
      std::snprintf(line, sizeof line,
                    "%-3zu %-5s %-11s wall/sim mean (p50): curve %.3f (%.3f), + run's steps %.3f (%.3f), "
                    "+ admit/decode %.3f (%.3f), + loop %.2f ms/step %.3f (%.3f)",
                    rep, load_label(load).c_str(), m.name.c_str(), wall.mean / sim.mean, wall.p50 / sim.p50,
                    wall.mean / s1.mean, wall.p50 / s1.p50, wall.mean / s2.mean, wall.p50 / s2.p50,
                    led.mean_loop_gap() * 1e3, wall.mean / s3.mean, wall.p50 / s3.p50);
      std::string text = line;
      text += "\n          run's step / curve:";
      for (const auto& [b, sum] : led.step) {
        std::snprintf(line, sizeof line, " b=%zu %.2f", b,
                      sum.seconds / static_cast<double>(sum.calls) / regime.step(b));
        text += line;
      }
      text += "; batcher's estimate / run's mean:";
      for (const auto& [b, sum] : led.step) {
        if (b == 0 || b > wall_run.predicted_step.size()) continue;
        std::snprintf(line, sizeof line, " b=%zu %.2f", b,
                      wall_run.predicted_step[b - 1] / (sum.seconds / static_cast<double>(sum.calls)));
        text += line;
      }
      ledger_lines.push_back(text);
    }
    for (auto& [key, pt] : points) {
      const Summary& st = walls.at({"static", key.second});
      pt.vs_static_mean.push_back(walls.at(key).mean / st.mean);
      pt.vs_static_p99.push_back(walls.at(key).p99 / st.p99);
    }
  }
  std::printf("what each measured cost explains (the same trace simulated on the run's own costs):\n");
  for (const auto& l : ledger_lines)
    std::printf("%s\n", l.c_str());
  auto med = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  auto spread = [&](const std::vector<double>& v) {
    char b[96];
    std::snprintf(b, sizeof b, "%.3f [%.3f-%.3f]", med(v), *std::min_element(v.begin(), v.end()),
                  *std::max_element(v.begin(), v.end()));
    return std::string(b);
  };
  std::printf("medians [range] over %zu interleaved repetitions (%zu requests per point):\n", cli.wall_reps,
              cli.wall_requests);
  std::printf("%-5s %-11s %-26s %-26s %-26s %-26s %-26s %-26s\n", "load", "mode", "wall mean (s)", "wall p99 (s)",
              "wall/sim mean", "wall/sim p50", "wall/sim(own) mean", "wall/sim(own) p50");
  double worst = 0, worst_own = 0;
  for (const auto& [mode, load] : order) {
    const Point& pt = points.at({mode->name, load});
    std::printf("%-5s %-11s %-26s %-26s %-26s %-26s %-26s %-26s\n", load_label(load).c_str(), mode->name.c_str(),
                spread(pt.mean).c_str(), spread(pt.p99).c_str(), spread(pt.sim_mean).c_str(),
                spread(pt.sim_p50).c_str(), spread(pt.own_mean).c_str(), spread(pt.own_p50).c_str());
    worst = std::max({worst, std::abs(med(pt.sim_mean) - 1), std::abs(med(pt.sim_p50) - 1)});
    worst_own = std::max({worst_own, std::abs(med(pt.own_mean) - 1), std::abs(med(pt.own_p50) - 1)});
  }
  for (const auto& [mode, load] : order) {
    if (mode->name == "static") continue;
    const Point& pt = points.at({mode->name, load});
    std::printf("%-5s %-11s / static (paired): mean %s p99 %s\n", load_label(load).c_str(), mode->name.c_str(),
                spread(pt.vs_static_mean).c_str(), spread(pt.vs_static_p99).c_str());
  }
  std::printf(
      "wallclock-pipeline: largest |median wall/sim - 1| of mean and p50 = %.3f on the curve measured before "
      "the runs (goal <= 0.15): %s; %.3f on each run's own measured costs\n",
      worst, worst <= 0.15 ? "agree" : "DISAGREE", worst_own);
  return worst <= 0.15 ? 0 : 1;
}
#endif

// Replicas behind each router at loads relative to the cluster's saturation (replicas x one replica's throughput on a
// backlog of the same mix), several seeds per point; the last line compares drain-aware with least connections at 80%.
int run_routing(const Cli& cli) {
  Regime regime = Regime::linear("balanced", 20, 15, cli.decode_factor);
  if (!cli.curve.empty()) {
    const bool decode_measured = CostCurve::csv_has_column(cli.curve, "decode_ms");
    const CostCurve step = CostCurve::from_csv(cli.curve);
    regime = Regime{"measured", step,
                    decode_measured ? CostCurve::from_csv(cli.curve, "decode_ms") : step.scaled(cli.decode_factor)};
  }
  ClusterSpec spec;
  spec.replicas = cli.replicas;
  spec.options.max_batch_size = cli.carousel_max_batch;
  spec.agent_target = cli.agent_target;
  spec.agent_interval = cli.agent_interval;
  Workload mix;
  mix.step_mix = cli.routing_steps;
  mix.keys = 2;
  mix.high_priority_fraction = 0;
  Workload backlog = mix;
  backlog.pattern = Pattern::backlog;
  backlog.requests = 800;
  backlog.seed = cli.seed;
  const double per_replica = summarize(simulate(regime, spec.options, backlog), regime).throughput;
  const double saturation = per_replica * static_cast<double>(spec.replicas);
  std::string steps;
  for (std::size_t n : mix.step_mix)
    steps += (steps.empty() ? "" : "/") + std::to_string(n);
  std::printf(
      "# routing: %zu replicas, max batch %zu, regime %s, steps %s, 2 resolutions, "
      "saturation %.2f req/s (%.2f per replica)\n",
      spec.replicas, spec.options.max_batch_size, regime.name.c_str(), steps.c_str(), saturation, per_replica);

  const std::vector<double> loads = {0.5, 0.8, 0.9};
  const std::vector<Router> routers = {Router::round_robin, Router::least_connections, Router::drain_aware};
  constexpr int kSeeds = 5;
  std::ofstream csv(cli.csv);
  if (!csv) throw std::runtime_error("cannot write " + cli.csv);
  csv << "regime,replicas,load,router,seed,count,mean_s,p50_s,p90_s,p99_s,max_s\n";
  std::map<std::pair<std::string, std::string>, std::vector<Summary>> runs;  // (load, router) -> one per seed
  for (double load : loads) {
    for (int seed = 0; seed < kSeeds; ++seed) {
      Workload w = mix;
      w.rate = load * saturation;
      w.requests = cli.requests;
      w.seed = cli.seed + static_cast<std::uint64_t>(seed);
      const std::vector<Arrival> trace = generate_trace(w);
      for (Router router : routers) {
        const Summary s = summarize(simulate_cluster(regime, spec, router, trace).run, regime);
        runs[{load_label(load), std::string(router_name(router))}].push_back(s);
        csv << regime.name << ',' << spec.replicas << ',' << load << ',' << router_name(router) << ',' << w.seed << ','
            << s.count << ',' << s.mean << ',' << s.p50 << ',' << s.p90 << ',' << s.p99 << ',' << s.max << '\n';
      }
    }
  }
  auto median = [](std::vector<double> v) { return quantile(v, 0.5); };
  auto field = [&](const std::string& load, Router router, double Summary::*f) {
    std::vector<double> v;
    for (const Summary& s : runs[{load, std::string(router_name(router))}])
      v.push_back(s.*f);
    return median(v);
  };
  std::printf("%-5s %-18s %8s %8s %8s %8s %9s\n", "load", "router", "mean", "p50", "p90", "p99", "p99/lc");
  for (double load : loads) {
    const std::string l = load_label(load);
    const double lc = field(l, Router::least_connections, &Summary::p99);
    for (Router router : routers) {
      const double p99 = field(l, router, &Summary::p99);
      std::printf("%-5s %-18s %8.3f %8.3f %8.3f %8.3f %9.2f\n", l.c_str(), std::string(router_name(router)).c_str(),
                  field(l, router, &Summary::mean), field(l, router, &Summary::p50), field(l, router, &Summary::p90),
                  p99, p99 / lc);
    }
  }
  const double ratio =
      field("80%", Router::drain_aware, &Summary::p99) / field("80%", Router::least_connections, &Summary::p99);
  std::printf("(medians of %d seeds, %zu requests each; CSV: %s)\n", kSeeds, cli.requests, cli.csv.c_str());
  std::printf("routing: drain_aware p99 / least_connections p99 at 80%% load = %.2f (goal <= 0.90)\n", ratio);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Cli cli = parse(argc, argv);
#ifdef CAROUSEL_SERVING_WITH_PIPELINE
    if (!cli.pipeline.empty()) return run_pipeline_check(cli);
#else
    if (!cli.pipeline.empty()) throw std::invalid_argument("--wallclock-pipeline: built without the CPU backend");
#endif
    if (cli.routing) return run_routing(cli);
    return cli.wallclock ? run_wallclock_check(cli) : run_grid(cli);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "carousel-bench-serving: %s\n", e.what());
    return 2;
  }
}
