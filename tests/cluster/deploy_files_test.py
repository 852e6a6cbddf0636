#!/usr/bin/env python3
"""Checks the files under deploy/ offline: HAProxy's config parses (with the server lines scripts/cluster.sh adds),
Prometheus's config and rules pass promtool (config check and the rules' unit tests), the Kubernetes manifests pass
kubernetes-validate --strict, every kustomization names files that exist, and the PromQL that the HPA (through
prometheus-adapter) and KEDA evaluate is the expression of the recording rules in deploy/prometheus/rules.yml.

Usage: tests/cluster/deploy_files_test.py     (needs haproxy, promtool, kubernetes-validate and PyYAML)
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run(cmd, what, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    check(result.returncode == 0, what)
    if result.returncode != 0:
        print(result.stdout + result.stderr)
    return result


def normalize(promql):
    """Drops label matchers, grouping clauses and blanks: what remains is the computation."""
    promql = re.sub(r"\{[^}]*\}", "", promql)
    promql = re.sub(r"\b(by|without)\s*\([^)]*\)", "", promql)
    return re.sub(r"\s+", "", promql)


def expand(expr, rules):
    """Replaces every recorded series name in expr by its rule's expression, until none is left."""
    for _ in range(len(rules) + 1):
        replaced = expr
        for name, body in rules.items():
            replaced = re.sub(r"(?<![\w:])" + re.escape(name) + r"(?![\w:])", "(" + body + ")", replaced)
        if replaced == expr:
            return expr
        expr = replaced
    raise ValueError("recording rules refer to each other in a cycle")


def same_computation(a, b):
    """The same functions, series, ranges and numbers in the same order (parentheses and selectors aside)."""
    return re.sub(r"[()]", "", normalize(a)) == re.sub(r"[()]", "", normalize(b))


# HAProxy: the shipped file plus the server lines cluster.sh appends.
with tempfile.TemporaryDirectory() as tmp:
    cfg = pathlib.Path(tmp) / "haproxy.cfg"
    cfg.write_text((DEPLOY / "haproxy/haproxy.cfg").read_text() +
                   "    server replica1 127.0.0.1:18181 agent-port 18281\n"
                   "    server replica2 127.0.0.1:18182 agent-port 18282\n")
    env = dict(os.environ, CAROUSEL_FRONT_BIND="127.0.0.1:18080", CAROUSEL_STATS_BIND="127.0.0.1:18081")
    run(["haproxy", "-c", "-q", "-f", str(cfg)], "haproxy -c: deploy/haproxy/haproxy.cfg with two servers", env=env)
    text = (DEPLOY / "haproxy/haproxy.cfg").read_text()
    for directive in ["balance leastconn", "option httpchk GET /health/ready", "agent-check", "option redispatch",
                      "retry-on conn-failure empty-response response-timeout", "timeout http-request",
                      "prometheus-exporter"]:
        check(directive in text, f"haproxy.cfg has '{directive}'")

# Prometheus: config with empty target files, and the rules' unit tests.
with tempfile.TemporaryDirectory() as tmp:
    for name in ["prometheus.yml", "rules.yml"]:
        shutil.copy(DEPLOY / "prometheus" / name, tmp)
    (pathlib.Path(tmp) / "targets").mkdir()
    for job in ["carousel", "haproxy"]:
        (pathlib.Path(tmp) / "targets" / f"{job}.json").write_text("[]\n")
    run(["promtool", "check", "config", str(pathlib.Path(tmp) / "prometheus.yml")], "promtool check config")
run(["promtool", "test", "rules", "rules_test.yml"], "promtool test rules", cwd=DEPLOY / "prometheus")

# Kubernetes: every manifest validates strictly (KEDA's custom resource is checked below by hand).
manifests = sorted(p for p in (DEPLOY / "k8s").rglob("*.yaml") if p.name != "kustomization.yaml")
builtin = [p for p in manifests if yaml.safe_load(p.read_text())["apiVersion"] != "keda.sh/v1alpha1"]
run(["kubernetes-validate", "--strict", "--quiet", *map(str, builtin)],
    f"kubernetes-validate --strict: {len(builtin)} manifests")
for kustomization in (DEPLOY / "k8s").rglob("kustomization.yaml"):
    for resource in yaml.safe_load(kustomization.read_text())["resources"]:
        check((kustomization.parent / resource).exists(), f"{kustomization.relative_to(ROOT)} names {resource}")

# The same signal everywhere.
groups = yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text())["groups"]
rules = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
per_pod = expand("instance:carousel_drain_seconds:avg30s", rules)
total = expand("job:carousel_drain_seconds:sum", rules)

adapter_cm = yaml.safe_load((DEPLOY / "k8s/hpa/prometheus-adapter-config.yaml").read_text())
adapter_rules = yaml.safe_load(adapter_cm["data"]["config.yaml"])["rules"]
served = {}
for rule in adapter_rules:
    series = re.search(r"^(\w+)", rule["seriesQuery"]).group(1)
    query = rule["metricsQuery"].replace("<<.Series>>", series).replace("{<<.LabelMatchers>>}", "")
    served[rule["name"]["as"]] = query
hpa = yaml.safe_load((DEPLOY / "k8s/hpa/hpa.yaml").read_text())
for metric in hpa["spec"]["metrics"]:
    name = metric["pods"]["metric"]["name"]
    check(name in served, f"HPA metric {name} is served by the prometheus-adapter rule")
    check(same_computation(served.get(name, ""), per_pod),
          f"adapter query for {name} is instance:carousel_drain_seconds:avg30s ({per_pod})")
    check(metric["pods"]["target"]["averageValue"] == "10", "HPA target is the rules' 10 s")

keda = yaml.safe_load((DEPLOY / "k8s/keda/scaledobject.yaml").read_text())
trigger = keda["spec"]["triggers"][0]
check(trigger["type"] == "prometheus", "KEDA trigger is prometheus")
check(same_computation(trigger["metadata"]["query"], total),
      f"KEDA query is job:carousel_drain_seconds:sum ({total})")
check(trigger["metadata"]["threshold"] == "10", "KEDA threshold is the rules' 10 s")
desired = rules["job:carousel_desired_replicas:hpa"]
check("/ 10" in desired, "the desired-replicas rule divides by the same 10 s target")

if failures:
    sys.exit(f"{len(failures)} check(s) failed")
print("PASS")
