#!/usr/bin/env python3
"""An open-loop HTTP client for carousel-sd-server with a fixed Poisson schedule (standard library only).

Open loop: each request is sent at its scheduled time whether or not earlier ones were answered, so a slow server
builds a queue instead of slowing the arrivals down (a closed-loop client hides exactly that). The schedule is a
function of (rate, requests, seed, steps mix) alone, so every mode and every repetition can be given the same one.
Latency is counted from the scheduled time, so a client that falls behind its schedule cannot flatter the server.

    benchmarks/serving/openloop.py --url http://127.0.0.1:8080 --rate 1.5 --requests 60 --seed 1
    benchmarks/serving/openloop.py --url http://127.0.0.1:8080 --saturation 40     # backlog throughput, req/s

Prints one JSON object: count, failures, mean/p50/p90/p99/max latency (s), throughput (req/s), the largest send lag
(s) and the schedule's parameters. Used by benchmarks/serving/protocol.py.
"""
import argparse
import json
import random
import threading
import time
import urllib.error
import urllib.request

PROMPTS = ["a red circle", "a green square", "a blue triangle", "two yellow circles"]


def schedule(rate, requests, seed, steps_mix):
    """[(time_s, steps, prompt, image_seed)] with exponential gaps of mean 1/rate; deterministic in its arguments."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(requests):
        out.append((t, rng.choice(steps_mix), rng.choice(PROMPTS), rng.randrange(2**31)))
        t += rng.expovariate(rate)
    return out


def quantile(values, q):
    """Linear interpolation between order statistics (as the C++ benchmark's `quantile`)."""
    if not values:
        return 0.0
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def run(url, plan, size="", guidance=None, timeout=600):
    """Sends every request of `plan` at its time; returns a list of records (scheduled, sent, done, status)."""
    records = [None] * len(plan)
    threads = []
    start = time.monotonic()

    def send(i, at, steps, prompt, image_seed):
        body = {"prompt": prompt, "steps": steps, "seed": image_seed}
        if size:
            body["size"] = size
        if guidance is not None:
            body["guidance_scale"] = guidance
        request = urllib.request.Request(url + "/v1/images/generations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        sent = time.monotonic() - start
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError:
            status = -1
        records[i] = {"scheduled": at, "sent": sent, "done": time.monotonic() - start, "status": status}

    for i, (at, steps, prompt, image_seed) in enumerate(plan):
        delay = at - (time.monotonic() - start)
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=send, args=(i, at, steps, prompt, image_seed), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return records


def summarize(records):
    ok = [r for r in records if r["status"] == 200]
    latency = [r["done"] - r["scheduled"] for r in ok]
    span = max((r["done"] for r in ok), default=0) - min((r["scheduled"] for r in records), default=0)
    return {
        "count": len(records),
        "failures": len(records) - len(ok),
        "mean": sum(latency) / len(latency) if latency else 0.0,
        "p50": quantile(latency, 0.5),
        "p90": quantile(latency, 0.9),
        "p99": quantile(latency, 0.99),
        "max": max(latency, default=0.0),
        "throughput": len(ok) / span if span > 0 else 0.0,
        "send_lag_max": max((r["sent"] - r["scheduled"] for r in records), default=0.0),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=1.0, help="arrivals per second")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", default="20", help="steps mix, e.g. 20 or 20,30,50")
    parser.add_argument("--size", default="", help="WIDTHxHEIGHT (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--saturation", type=int, default=0,
                        help="instead: N requests all at time 0 (a backlog); throughput = completion rate")
    args = parser.parse_args()
    steps_mix = [int(s) for s in args.steps.split(",")]
    if args.saturation:
        plan = [(0.0, steps, prompt, image_seed) for (_, steps, prompt, image_seed) in
                schedule(1.0, args.saturation, args.seed, steps_mix)]
    else:
        plan = schedule(args.rate, args.requests, args.seed, steps_mix)
    summary = summarize(run(args.url, plan, args.size, args.guidance))
    summary.update({"rate": 0 if args.saturation else args.rate, "requests": len(plan), "seed": args.seed,
                    "steps": steps_mix})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
