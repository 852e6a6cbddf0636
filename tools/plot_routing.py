"""Plot of the routing simulation: p99 latency vs load per router, one panel per cost regime.

Run from the repository root after the benchmark (one CSV per regime):

    build/benchmarks/serving/carousel-bench-serving --routing --requests 2000 --csv build/routing-balanced.csv
    build/benchmarks/serving/carousel-bench-serving --routing --requests 2000 \
        --curve docs/data/h100-sd15-step-and-decode.csv --csv build/routing-h100.csv
    python3 tools/plot_routing.py docs/img/routing-p99.png build/routing-balanced.csv build/routing-h100.csv

Reads the CSVs `carousel-bench-serving --routing` writes (one row per load, router and seed) and draws the median
over seeds of p99 latency against load, a line per router. Needs matplotlib. Deterministic for the same CSVs.
"""

import csv
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROUTERS = ["round_robin", "least_connections", "drain_aware"]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, paths = sys.argv[1], sys.argv[2:]
    fig, axes = plt.subplots(1, len(paths), figsize=(5.5 * len(paths), 4), squeeze=False)
    for ax, path in zip(axes[0], paths):
        p99 = defaultdict(list)
        regime = replicas = "?"
        with open(path) as f:
            for row in csv.DictReader(f):
                regime, replicas = row["regime"], row["replicas"]
                p99[(row["router"], float(row["load"]))].append(float(row["p99_s"]))
        for router in ROUTERS:
            loads = sorted(load for (r, load) in p99 if r == router)
            ax.plot([100 * x for x in loads], [statistics.median(p99[(router, x)]) for x in loads], marker="o",
                    label=router.replace("_", " "))
        ax.set_title(f"{regime} regime, {replicas} replicas")
        ax.set_xlabel("load, % of the cluster's saturation")
        ax.set_ylabel("p99 latency, s (median of seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100, metadata={"Software": None})


if __name__ == "__main__":
    main()
