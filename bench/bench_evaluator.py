"""Evaluator throughput: decisions per second at 1k and 100k pods with 1k NetworkPolicies.

The world has two clusters and one namespace per 10 policies, so the policies per namespace stay
the same while pods and policies grow: a flat per-decision cost shows the evaluator scans neither
pods nor policies. The default sizes are 1k and 100k pods with 1k policies, plus 100k pods with
10k policies. ``run()`` returns the figures as a dict; ``python -m bench.bench_evaluator``
prints them as JSON (``--output FILE`` also writes them).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kube_ip_tracker.agent.policy import PolicyEngine, parse_network_policy
from kube_ip_tracker.model import ContainerPort, NamespaceRecord, PodRecord

CLUSTERS = ("cluster-1", "cluster-2")
POLICIES_PER_NAMESPACE = 10
APPS = tuple(f"app-{i}" for i in range(20))
TIERS = ("web", "api", "db")
PORTS = (ContainerPort("http", 8080, "TCP"), ContainerPort("metrics", 9090, "TCP"), ContainerPort("dns", 53, "UDP"))
PROBE_PORTS = ((("TCP", 8080), 4), (("TCP", 9090), 1), (("UDP", 53), 1), (("TCP", 443), 1))


def _policy(rng: random.Random, name: str, namespace: str) -> dict[str, Any]:
    """One of a few common policy shapes, with random selectors."""
    app = rng.choice(APPS)
    shape = rng.randrange(6)
    target = {"matchLabels": {"app": app}}
    if shape == 0:
        spec: dict[str, Any] = {"podSelector": target, "policyTypes": ["Ingress"]}
    elif shape == 1:
        spec = {
            "podSelector": target,
            "ingress": [
                {
                    "from": [{"podSelector": {"matchExpressions": [
                        {"key": "app", "operator": "In", "values": rng.sample(APPS, 3)}]}}],
                    "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100}],
                }
            ],
        }  # fmt: skip
    elif shape == 2:
        spec = {
            "podSelector": {"matchLabels": {"tier": rng.choice(TIERS)}},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": f"team-{rng.randrange(10)}"}},
                            "podSelector": {"matchLabels": {"tier": rng.choice(TIERS)}},
                        }
                    ]
                }
            ],
        }
    elif shape == 3:
        spec = {
            "podSelector": target,
            "egress": [
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [f"10.{rng.randrange(1, 3)}.0.0/16"]}}]},
                {"ports": [{"port": 53, "protocol": "UDP"}]},
            ],
        }
    elif shape == 4:
        spec = {
            "podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]},
            "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 8080}]}],
            "egress": [{"to": [{"podSelector": {}}]}],
            "policyTypes": ["Ingress", "Egress"],
        }
    else:
        spec = {
            "podSelector": target,
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": rng.choice(APPS)}}}]}],
        }
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def build(pods: int, policies: int, seed: int = 1) -> tuple[PolicyEngine, list[str]]:
    """An engine holding ``pods`` pods and ``policies`` policies; also every pod IP."""
    rng = random.Random(seed)
    engine = PolicyEngine()
    per_cluster = max(1, policies // (POLICIES_PER_NAMESPACE * len(CLUSTERS)))
    namespaces = [(c, f"ns-{i}") for c in CLUSTERS for i in range(per_cluster)]
    for cluster, name in namespaces:
        engine.set_namespace(NamespaceRecord(cluster, name, {"team": f"team-{rng.randrange(10)}"}))
    ips = []
    for index in range(pods):
        cluster, namespace = namespaces[index % len(namespaces)]
        ip = f"10.{CLUSTERS.index(cluster) + 1}.{(index >> 8) & 255}.{index & 255}"
        labels = {"app": rng.choice(APPS), "tier": rng.choice(TIERS), "pod-template-hash": f"h{index % 97}"}
        engine.set_pod(PodRecord(cluster, namespace, f"pod-{index}", labels, PORTS, "node-1", (ip,)))
        ips.append(ip)
    for index in range(policies):
        cluster, namespace = namespaces[index % len(namespaces)]
        engine.set_policy(parse_network_policy(_policy(rng, f"policy-{index}", namespace), cluster))
    return engine, ips


def _probes(rng: random.Random, ips: list[str], count: int) -> list[tuple[str, str, str, int]]:
    choices, weights = zip(*PROBE_PORTS, strict=True)
    externals = [f"192.0.2.{i}" for i in range(1, 255)]
    probes = []
    for _ in range(count):
        src = rng.choice(ips) if rng.random() > 0.05 else rng.choice(externals)
        dst = rng.choice(ips) if rng.random() > 0.05 else rng.choice(externals)
        protocol, port = rng.choices(choices, weights)[0]
        probes.append((src, dst, protocol, port))
    return probes


def _rate(engine: PolicyEngine, probes: list[tuple[str, str, str, int]]) -> tuple[float, int]:
    decide = engine.decide
    allowed = 0
    start = time.perf_counter()
    for src, dst, protocol, port in probes:
        allowed += decide(src, dst, protocol, port).allowed
    elapsed = time.perf_counter() - start
    return len(probes) / elapsed, allowed


def measure(pods: int, policies: int, decisions: int, seed: int = 1) -> dict[str, Any]:
    """Figures for one world size: build time, cold and warm decision rates, update cost."""
    start = time.perf_counter()
    engine, ips = build(pods, policies, seed)
    build_s = time.perf_counter() - start
    rng = random.Random(seed + 1)
    probes = _probes(rng, ips, decisions)
    cold_rate, _ = _rate(engine, probes)  # first touch fills the per-pod selection caches
    warm_rate, allowed = _rate(engine, probes)
    # A policy change invalidates only its namespace; decisions right after it stay cheap.
    start = time.perf_counter()
    updates = 100
    for index in range(updates):
        obj = _policy(rng, f"policy-{index}", f"ns-{index % 50}")
        engine.set_policy(parse_network_policy(obj, CLUSTERS[0]))
    update_us = (time.perf_counter() - start) / updates * 1e6
    after_update_rate, _ = _rate(engine, probes)
    return {
        "pods": pods,
        "policies": policies,
        "namespaces": engine.world.namespace_count,
        "decisions": decisions,
        "build_seconds": round(build_s, 3),
        "cold_decisions_per_second": round(cold_rate),
        "warm_decisions_per_second": round(warm_rate),
        "warm_microseconds_per_decision": round(1e6 / warm_rate, 2),
        "decisions_per_second_after_100_policy_updates": round(after_update_rate),
        "policy_update_microseconds": round(update_us, 1),
        "allowed_fraction": round(allowed / decisions, 3),
    }


def run(
    sizes: Sequence[tuple[int, int]] = ((1_000, 1_000), (100_000, 1_000), (100_000, 10_000)),
    decisions: int = 50_000,
) -> dict[str, Any]:
    """Benchmark every (pods, policies) size; returns ``{"benchmark": ..., "results": [...]}``."""
    return {
        "benchmark": "evaluator",
        "python": sys.version.split()[0],
        "results": [measure(pods, policies, decisions) for pods, policies in sizes],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=50_000, help="decisions per measurement")
    parser.add_argument("--output", type=Path, help="also write the JSON figures here")
    args = parser.parse_args(argv)
    results = run(decisions=args.decisions)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
