#!/usr/bin/env python3
"""Attacks a running carousel-sd-server as a hostile client would, on loopback, bounded in time, and checks that it
holds: hostile bodies and headers are refused, expensive requests are refused before any work, ids are unguessable,
nothing of one client leaks to another, event-stream watchers are capped, /health and /metrics answer within 1 s
under the load (watchers and 100 slowloris connections), the slow connections are closed at the request read
deadline, memory stays bounded, and the process is still up at the end.

    tests/server/attack.py BINARY MODEL_DIR     (starts the binary on a free port, stops it with SIGTERM)

Standard library only. Exit 0 when every check held; 1 with the failed checks listed."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def request(url, method="GET", body=None, headers=None, timeout=30):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (ConnectionError, urllib.error.URLError) as e:
        return None, str(e).encode()


def post_json(url, obj, headers=None, timeout=30):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return request(url, "POST", json.dumps(obj), h, timeout)


def timed(url, path):
    t0 = time.monotonic()
    status, _ = request(url + path, timeout=5)
    return status, time.monotonic() - t0


def raw(port, text, read=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(text if isinstance(text, bytes) else text.encode())
    if not read:
        return s, b""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return s, got


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0


def main():
    binary, model = sys.argv[1], sys.argv[2]
    # The model runs on one BLAS thread, so a generation leaves a core to the HTTP threads whose response times are
    # checked (on 2 cores OpenBLAS's spinning threads would otherwise take both).
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    server = subprocess.Popen([binary, "--port", "0", "--model", model, "--device", "cpu", "--max-watchers", "16",
                               "--max-watchers-per-generation", "4", "--request-read-timeout", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    port = None
    for line in server.stdout:
        m = re.match(r"listening on http://[^:]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        print("the server did not start")
        return 1
    url = f"http://127.0.0.1:{port}"
    gen = url + "/v1/images/generations"
    try:
        deep = '{"prompt": "p", "x": ' + "[" * 100000 + "]" * 100000 + "}"
        for path in ("/sdapi/v1/txt2img", "/v1/images/generations"):
            status, _ = request(url + path, "POST", deep, {"Content-Type": "application/json"})
            check(status == 400, f"{path}: JSON nested 100,000 deep -> 400 (got {status})")
        status, body = post_json(url + "/sdapi/v1/txt2img", {"prompt": "p", "steps": 2, "junk": [{}] * 100000})
        check(status == 200 and b"junk" not in body, "A1111: the raw body is not echoed")

        def chunks():
            for _ in range(256):
                yield b" " * 65536
        req = urllib.request.Request(gen, data=chunks(), method="POST", headers={"Content-Type": "application/json",
                                                                                 "Transfer-Encoding": "chunked"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        except (ConnectionError, urllib.error.URLError):
            status = "closed"
        check(status in (413, "closed"), f"a 16 MiB chunked body is refused (got {status})")
        headers = "".join(f"X-Filler-{i}: {'x' * 4000}\r\n" for i in range(2000))
        s, got = raw(port, "GET /health HTTP/1.1\r\nHost: x\r\n" + headers + "\r\n")
        s.close()
        check(b" 431 " in got.split(b"\r\n")[0] or got == b"", "2,000 headers of 4 KB are refused")
        status, body = post_json(gen, {"prompt": "p", "size": "2048x2048", "steps": 1000})
        check(status == 400, f"2048x2048 x 1000 steps is refused before any work (got {status})")
        status, _ = post_json(gen, {"prompt": "p", "size": "0x0"})
        check(status == 400, f"size 0x0 is refused (got {status})")
        status, _ = request(gen, "POST", json.dumps({"prompt": "p", "steps": 2}), {"Content-Type": "text/plain"})
        check(status == 415, f"a text/plain (cross-origin simple) POST runs nothing (got {status})")
        status, body = post_json(gen, {"prompt": "p", "steps": 2, "response_format": "url"},
                                 {"Host": "evil.example"})
        check(status == 200 and b"evil.example" not in body, "the Host header does not reach image URLs")

        status, body = post_json(gen, {"prompt": "secret prompt", "steps": 900, "async": True})
        victim = json.loads(body)["id"] if status == 202 else ""
        check(re.fullmatch(r"gen-[0-9a-f]{32}", victim) is not None, f"ids are 128-bit random ({victim})")
        status, body = request(url + "/sdapi/v1/progress")
        check(status == 200 and victim.encode() not in body and b"secret" not in body,
              "/sdapi/v1/progress names no job")
        watchers = []
        refused = 0
        for _ in range(40):
            s, got = raw(port, f"GET /v1/images/generations/{victim}/events HTTP/1.1\r\nHost: x\r\n\r\n")
            watchers.append(s)
            refused += b" 503 " in got.split(b"\r\n")[0]
        check(refused >= 36, f"event-stream watchers beyond the cap get 503 ({refused} of 40 refused)")
        # Slowloris: 100 connections that each send a header byte every 0.5 s (each read is quick; only the
        # deadline on the whole request, 2 s here, ends them).
        slow = [raw(port, "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ", read=False)[0] for _ in range(100)]
        t0 = time.monotonic()
        open_slow = list(slow)
        slowest = {"/health": (200, 0.0), "/metrics": (200, 0.0)}
        while open_slow and time.monotonic() - t0 < 8:
            for path in slowest:
                status, took = timed(url, path)
                if status != 200 or took > slowest[path][1]:
                    slowest[path] = (status, took)
            for s in list(open_slow):
                try:
                    s.send(b"x")
                except OSError:
                    open_slow.remove(s)
            time.sleep(0.5)
        for path, (status, took) in slowest.items():
            check(status == 200 and took < 1.0,
                  f"{path} answers within 1 s beside 40 watchers and 100 slowloris connections (slowest {took:.2f} s)")
        check(not open_slow, f"slowloris connections are closed at the read deadline ({len(open_slow)} of 100 open "
                             f"after {time.monotonic() - t0:.1f} s)")
        for s in watchers + slow:
            s.close()
        status, _ = request(gen + "/" + victim, "DELETE")
        check(status in (200, 202), f"the owner cancels its generation (got {status})")
        rss = rss_mib(server.pid)
        check(rss < 2048, f"memory stays bounded ({rss:.0f} MiB resident)")
        check(server.poll() is None, "the server is still up")
    finally:
        server.terminate()
        try:
            rc = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            rc = "killed"
        check(rc == 0, f"SIGTERM ends it with exit code 0 (got {rc})")
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
