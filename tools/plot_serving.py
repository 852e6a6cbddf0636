"""Plots of the serving benchmark: latency vs load per batching mode, one panel per cost regime.

Run after the benchmark, from the repository root:

    build-serving/benchmarks/serving/carousel-bench-serving --csv build-serving/serving.csv
    python3 tools/plot_serving.py build-serving/serving.csv docs/img [--markdown > tables.md]

Reads the CSV that carousel-bench-serving writes and draws, for the main workload (Poisson arrivals, 30 steps, one
resolution; the "all" class), three PNGs into the output folder:

    serving-mean.png   mean latency vs load (fraction of static batching's saturation throughput)
    serving-p99.png    p99 latency vs load
    serving-ratio.png  mean latency relative to static batching vs load

With --markdown it also prints the Markdown tables of docs/benchmarks.md to stdout: per regime, mean and p99 latency
of every mode relative to static batching at every load, and the full table of the balanced regime.

Needs matplotlib (pip install matplotlib). Deterministic: same CSV, same images (no timestamps in the PNGs).
"""

import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODES = ["static", "dynamic", "continuous", "fewest_remaining", "preempt", "cost_aware"]
STYLE = {
    "static": dict(color="black", linestyle="-", marker="s"),
    "dynamic": dict(color="grey", linestyle="--", marker="s"),
    "continuous": dict(color="tab:blue", linestyle="-", marker="o"),
    "fewest_remaining": dict(color="tab:green", linestyle=":", marker="^"),
    "preempt": dict(color="tab:purple", linestyle="-.", marker="v"),
    "cost_aware": dict(color="tab:red", linestyle="-", marker="D"),
}


def load_rows(path):
    """Rows of the main workload, class 'all': {regime: {mode: [(load, row), ...]}}."""
    data = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["workload"] != "poisson" or row["class"] != "all" or not row["load"]:
                continue
            data[row["regime"]][row["mode"]].append((float(row["load"]), row))
    for modes in data.values():
        for points in modes.values():
            points.sort(key=lambda p: p[0])
    return data


def plot(data, column, ylabel, title, out, log=True, reference=None):
    regimes = list(data)
    fig, axes = plt.subplots(1, len(regimes), figsize=(5 * len(regimes), 4), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for mode in MODES:
            points = data[regime].get(mode)
            if not points:
                continue
            xs = [100 * load for load, _ in points]
            ys = [float(row[column]) for _, row in points]
            ax.plot(xs, ys, label=mode, markersize=4, **STYLE[mode])
        if reference is not None:
            ax.axhline(reference, color="black", linewidth=0.5)
        ax.set_title(regime)
        ax.set_xlabel("load (% of static batching's saturation throughput)")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(True, which="both", linewidth=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)


def print_markdown(path):
    """Markdown tables: ratios to static batching per regime, workload and load; the balanced regime in full."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]

    def label(r):
        return f"{100 * float(r['load']):.0f}%" if r["load"] else "-"

    for regime in regimes:
        print(f"\n#### {regime}: mean / p99 latency relative to static batching\n")
        print("| workload | load | " + " | ".join(modes[1:]) + " |")
        print("|---|---|" + "---|" * (len(modes) - 1))
        for workload in workloads:
            sel = [r for r in rows if r["regime"] == regime and r["workload"] == workload and r["class"] == "all"]
            for load in dict.fromkeys(label(r) for r in sel):
                cells = []
                for mode in modes[1:]:
                    hit = [r for r in sel if r["mode"] == mode and label(r) == load]
                    if not hit:
                        cells.append("")
                        continue
                    r = hit[0]
                    if workload.startswith("saturated"):
                        cells.append(f"thr {float(r['throughput_vs_static']):.2f}")
                    else:
                        cells.append(f"{float(r['mean_vs_static']):.2f} / {float(r['p99_vs_static']):.2f}")
                print(f"| {workload} | {load} | " + " | ".join(cells) + " |")

    print("\n#### balanced, Poisson, 30 steps, one resolution: every mode (seconds)\n")
    print("| load | mode | class | mean | p50 | p90 | p99 | slowdown | queue wait | throughput/s | occupancy | busy "
          "| decode share | requests/decode | mean/static | p99/static |")
    print("|---|---|---|" + "---|" * 13)
    for r in rows:
        if r["regime"] != "balanced" or r["workload"] != "poisson":
            continue
        if r["class"] != "all" and r["mode"] != "preempt":
            continue
        print(f"| {label(r)} | {r['mode']} | {r['class']} | {float(r['mean_s']):.3f} | {float(r['p50_s']):.3f} | "
              f"{float(r['p90_s']):.3f} | {float(r['p99_s']):.3f} | {float(r['slowdown_mean']):.2f} | "
              f"{float(r['wait_mean_s']):.3f} | {float(r['throughput_rps']):.3f} | {float(r['occupancy']):.2f} | "
              f"{float(r['busy']):.2f} | {float(r['decode_share']):.3f} | {float(r['decode_batch']):.2f} | "
              f"{float(r['mean_vs_static']):.2f} | "
              f"{float(r['p99_vs_static']):.2f} |")


def main():
    args = [a for a in sys.argv[1:] if a != "--markdown"]
    if len(args) != 2:
        sys.exit("usage: plot_serving.py SERVING_CSV OUT_DIR [--markdown]")
    sys.argv[1:3] = args
    data = load_rows(sys.argv[1])
    if not data:
        sys.exit(f"{sys.argv[1]}: no rows of the poisson workload")
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    plot(data, "mean_s", "mean latency (s)", "Mean latency vs load (Poisson, 30 steps, max batch 8)",
         out / "serving-mean.png")
    plot(data, "p99_s", "p99 latency (s)", "p99 latency vs load (Poisson, 30 steps, max batch 8)",
         out / "serving-p99.png")
    plot(data, "mean_vs_static", "mean latency / static batching's", "Mean latency relative to static batching",
         out / "serving-ratio.png", log=False, reference=1.0)
    if "--markdown" in sys.argv:
        print_markdown(sys.argv[1])
    else:
        print(f"wrote {out}/serving-mean.png, serving-p99.png, serving-ratio.png")


if __name__ == "__main__":
    main()
