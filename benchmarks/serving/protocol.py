#!/usr/bin/env python3
"""The wall-clock serving protocol on a real carousel-sd-server: numbers that hold on a noisy machine.

1. Saturation on the wall clock: static batching's throughput on a backlog (N requests at time 0), measured
   `--saturation-runs` times on a fresh server; the median defines 100% load for everything after.
2. Repetitions interleaved across modes: repetition r runs every mode (in an order rotated by r, so no mode always
   goes first or last), each on a fresh server, each load with the same open-loop Poisson schedule (seed r): the modes
   of one repetition are compared on identical arrivals.
3. Medians over repetitions, with the spread (min..max); ratios to static are taken per repetition (paired) and then
   their median. The machine's load average is recorded before every run.

    benchmarks/serving/protocol.py --build-dir build --reps 5 --requests 60 --out build/protocol.json

Prints a markdown table last. Needs the carousel-sd-server binary in the build folder; uses the bundled model unless
--model names another.
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import openloop  # noqa: E402

MODES = ["static", "continuous", "cost-aware"]


class Server:
    """carousel-sd-server on a free loopback port, stopped with SIGTERM."""

    def __init__(self, binary, args, log):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([binary, "--port", "0", *args], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            m = re.search(r"listening on (http://[\d.]+:\d+)", pathlib.Path(log).read_text())
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {pathlib.Path(log).read_text()}")
            time.sleep(0.1)
        raise RuntimeError("server did not start within 120 s")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=300)
        self.log.close()


def loadavg():
    return os.getloadavg()[0]


def spread(values):
    return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default="build")
    parser.add_argument("--model", default="", help="model folder (default: the bundled model)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--loads", default="0.5,0.9", help="fractions of static's measured saturation")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--requests", type=int, default=60, help="requests per open-loop run")
    parser.add_argument("--steps", default="20", help="steps mix, e.g. 20 or 20,30,50")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--saturation-requests", type=int, default=40)
    parser.add_argument("--saturation-runs", type=int, default=3)
    parser.add_argument("--out", default="", help="JSON with every run (default: BUILD_DIR/protocol.json)")
    args = parser.parse_args()

    build = pathlib.Path(args.build_dir).resolve()
    binary = str(build / "examples/sd_server/carousel-sd-server")
    common = ["--max-batch", str(args.max_batch), "--max-queue", "1000"]
    if args.model:
        common += ["--model", args.model]
    steps_mix = [int(s) for s in args.steps.split(",")]
    modes = args.modes.split(",")
    loads = [float(x) for x in args.loads.split(",")]
    log = build / "protocol-server.log"
    runs = []

    saturations = []
    for k in range(args.saturation_runs):
        before = loadavg()
        server = Server(binary, common + ["--admission", "static"], log)
        plan = [(0.0, s, p, seed) for (_, s, p, seed) in
                openloop.schedule(1.0, args.saturation_requests, 1000 + k, steps_mix)]
        summary = openloop.summarize(openloop.run(server.url, plan))
        server.stop()
        saturations.append(summary["throughput"])
        runs.append({"kind": "saturation", "mode": "static", "loadavg": before, **summary})
        print(f"saturation run {k + 1}: {summary['throughput']:.3f} req/s (load average {before:.2f})", flush=True)
    saturation = statistics.median(saturations)

    for rep in range(args.reps):
        order = modes[rep % len(modes):] + modes[:rep % len(modes)]
        for mode in order:
            server = Server(binary, common + ["--admission", mode], log)
            for load in loads:
                before = loadavg()
                plan = openloop.schedule(load * saturation, args.requests, rep, steps_mix)
                summary = openloop.summarize(openloop.run(server.url, plan))
                runs.append({"kind": "open_loop", "rep": rep, "mode": mode, "load": load, "loadavg": before, **summary})
                print(f"rep {rep} {mode:10s} load {load:.0%}: mean {summary['mean']:.3f} p50 {summary['p50']:.3f} "
                      f"p99 {summary['p99']:.3f} failures {summary['failures']} (load average {before:.2f})",
                      flush=True)
            server.stop()

    out = pathlib.Path(args.out) if args.out else build / "protocol.json"
    out.write_text(json.dumps({"saturation": saturation, "saturations": saturations, "runs": runs}, indent=1))

    print(f"\nstatic saturation on the wall clock: {spread(saturations)} req/s; {args.reps} repetitions of "
          f"{args.requests} requests per point, steps {args.steps}; median (min..max); x/static paired per repetition")
    print("| load | mode | mean s | p50 s | p99 s | mean x/static | p99 x/static | failures |")
    print("|---|---|---|---|---|---|---|---|")
    for load in loads:
        def of(mode):
            return sorted((r for r in runs if r["kind"] == "open_loop" and r["mode"] == mode and r["load"] == load),
                          key=lambda r: r["rep"])
        base = of("static")
        for mode in modes:
            rs = of(mode)
            ratio_mean = [r["mean"] / b["mean"] for r, b in zip(rs, base) if b["mean"] > 0]
            ratio_p99 = [r["p99"] / b["p99"] for r, b in zip(rs, base) if b["p99"] > 0]
            print(f"| {load:.0%} | {mode} | {spread([r['mean'] for r in rs])} | {spread([r['p50'] for r in rs])} | "
                  f"{spread([r['p99'] for r in rs])} | "
                  f"{spread(ratio_mean) if ratio_mean and base else '-'} | "
                  f"{spread(ratio_p99) if ratio_p99 and base else '-'} | {sum(r['failures'] for r in rs)} |")


if __name__ == "__main__":
    main()
