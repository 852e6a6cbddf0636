#!/usr/bin/env python3
"""The local cluster end to end, on 127.0.0.1: scripts/cluster.sh starts 3 replicas of the bundled model behind the
shipped HAProxy config, with Prometheus. Under about a minute of load through the front:
  - Prometheus scrapes every replica and HAProxy;
  - kill -9 of one replica mid-load costs no client a failure (HAProxy retries elsewhere);
  - SIGTERM of another turns its /health/ready to 503, it finishes its admitted work and exits 0; no failures;
  - the desired-replica rule (job:carousel_desired_replicas:hpa) rises under load and falls after it.
Then scripts/cluster.sh --stop ends the rest.

Usage: tests/cluster/cluster_test.py BUILD_DIR [--port P] [--load-seconds S] [--workers W]
"""
import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]

parser = argparse.ArgumentParser()
parser.add_argument("build_dir")
parser.add_argument("--port", type=int, default=18080)
parser.add_argument("--load-seconds", type=float, default=50)
parser.add_argument("--workers", type=int, default=48)
args = parser.parse_args()
build = pathlib.Path(args.build_dir).resolve()
run_dir = build / "cluster-test"
front = f"http://127.0.0.1:{args.port}"
prometheus = f"http://127.0.0.1:{args.port + 2}"
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def get(url, timeout=5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def query(expr):
    status, body = get(prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if status != 200:
        return []
    return json.loads(body)["data"]["result"]


def scalar(expr):
    result = query(expr)
    return float(result[0]["value"][1]) if result else None


def replica_pid(i):
    return int((run_dir / f"replica{i}.pid").read_text())


started = subprocess.run([str(ROOT / "scripts/cluster.sh"), "--replicas", "3", "--port", str(args.port),
                          "--build-dir", str(build), "--run-dir", str(run_dir), "--", "--max-batch", "8"],
                         capture_output=True, text=True)
print(started.stdout[-2000:] + started.stderr[-2000:])
if started.returncode != 0:
    sys.exit("FAIL: scripts/cluster.sh did not start the cluster")
last = started.stdout.strip().splitlines()[-2:]
check(last == [f"front: {front}", f"prometheus: {prometheus}"], "cluster.sh ends with the front and Prometheus lines")

try:
    # Every target scraped: 3 replicas and HAProxy.
    deadline = time.time() + 30
    while time.time() < deadline:
        up = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in query("up")}
        if len(up) == 4 and all(v == "1" for v in up.values()):
            break
        time.sleep(1)
    check(len(up) == 4 and all(v == "1" for v in up.values()), f"Prometheus scrapes every target: {up}")

    # Closed-loop load through the front: each worker sends a generation as soon as its previous one is answered.
    stop = threading.Event()
    lock = threading.Lock()
    outcomes = {"ok": 0, "failed": 0}
    errors = []

    def worker(w):
        n = 0
        while not stop.is_set():
            body = json.dumps({"prompt": "a red circle", "size": "32x32", "steps": 20, "seed": w * 100000 + n})
            request = urllib.request.Request(front + "/v1/images/generations", data=body.encode(),
                                             headers={"Content-Type": "application/json"})
            n += 1
            try:
                with urllib.request.urlopen(request, timeout=300) as r:
                    ok = r.status == 200 and json.loads(r.read())["data"][0]["b64_json"]
                    detail = f"status {r.status}"
            except urllib.error.HTTPError as e:
                ok, detail = False, f"HTTP {e.code}: {e.read()[:200]!r}"
            except Exception as e:  # a reset or a timeout is a client failure too
                ok, detail = False, repr(e)
            with lock:
                outcomes["ok" if ok else "failed"] += 1
                if not ok:
                    errors.append(detail)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.workers)]
    t0 = time.time()
    for t in threads:
        t.start()
    desired_under_load = []

    def sample():
        value = scalar("job:carousel_desired_replicas:hpa")
        if value is not None:
            desired_under_load.append(value)

    def wait_until(t):
        while time.time() - t0 < t:
            sample()
            time.sleep(1)

    wait_until(0.3 * args.load_seconds)
    os.kill(replica_pid(1), signal.SIGKILL)
    print(f"t={time.time() - t0:.0f}s: kill -9 replica1", flush=True)

    wait_until(0.5 * args.load_seconds)
    os.kill(replica_pid(2), signal.SIGTERM)
    print(f"t={time.time() - t0:.0f}s: SIGTERM replica2", flush=True)
    unready = None
    for _ in range(20):
        status, _ = get(f"http://127.0.0.1:{args.port + 102}/health/ready", timeout=1)
        if status == 503:
            unready = status
            break
        if status is None:
            break  # already drained and gone
        time.sleep(0.1)
    check(unready == 503 or (run_dir / "replica2.rc").exists(), "SIGTERM turns replica2's /health/ready to 503")

    wait_until(args.load_seconds)
    stop.set()
    for t in threads:
        t.join()
    print(f"load: {outcomes['ok']} answered, {outcomes['failed']} failed in {time.time() - t0:.0f}s", flush=True)
    check(outcomes["ok"] > 0 and outcomes["failed"] == 0,
          f"zero client failures across a kill -9 and a drain ({errors[:3]})")

    rc_file = run_dir / "replica2.rc"
    for _ in range(600):
        if rc_file.exists() and rc_file.read_text().strip():
            break
        time.sleep(0.1)
    check(rc_file.exists() and rc_file.read_text().strip() == "0", "the drained replica2 exited 0")

    peak = max(desired_under_load, default=None)
    check(peak is not None and peak >= 2, f"desired replicas rose under load (samples {desired_under_load})")
    after = None
    for _ in range(90):
        after = scalar("job:carousel_desired_replicas:hpa")
        if after == 1:
            break
        time.sleep(1)
    check(after == 1, f"desired replicas fell to 1 after the load (last {after})")
finally:
    stopped = subprocess.run([str(ROOT / "scripts/cluster.sh"), "--stop", "--run-dir", str(run_dir)],
                             capture_output=True, text=True)
    print(stopped.stdout + stopped.stderr)

check(get(f"http://127.0.0.1:{args.port + 103}/health/live", timeout=1)[0] is None,
      "cluster.sh --stop ended the remaining replica")
check(get(front + "/health/ready", timeout=1)[0] is None, "cluster.sh --stop ended HAProxy")
if failures:
    sys.exit(f"FAIL: {len(failures)} check(s)")
print("PASS")
