"""Scenario 7: the agent's data path at 100k pods, side by side with the tracker's index.

A real ``TrackerServer`` serves an index of the index benchmark's shape (100k pods, 3 clusters, 2k
nodes, 300 namespaces per cluster). A fresh worker process (``bench.workers store``) runs the agent's
data path as ``agent/run.py`` wires it: a ``TrackerClient`` whose apply sink is the ``AgentStore``
in a ``PolicyEngine``'s world, with the local pods of one node tracked. It reports the seconds from
start until the snapshot is applied and the RSS growth of the process over that time (per pod).
Side by side, in the same run: the tracker's index for the same shape (RSS growth per pod in a
fresh process, as scenario 1 measures it; CPU seconds to load the records) and a raw client's
snapshot receive time (what the server and the wire cost). Two label shapes: 20 replicas per
deployment (5,000 label sets, scenario 1's shape) and 100 (1,000 label sets). Then decisions per
CPU second on the resulting store with 1,000 NetworkPolicies over random pod pairs.

Targets (issue 23): agent RSS <= 400 B/pod at 100k pods; snapshot applied <= 1.5 s; >= 100k
decisions/s.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import random
import statistics
import sys
import time
from typing import Any

from bench import report
from bench.bench_index import QUICK_SHAPE, SHAPE, _load, _memory, generate
from bench.workers import Worker
from kube_ip_tracker.agent.policy import PolicyEngine, parse_network_policy

log = logging.getLogger(__name__)

RSS_TARGET = 400.0  # bytes per pod
APPLY_TARGET = 1.5  # seconds
DECISIONS_TARGET = 100_000  # per CPU second
POLICIES = 1000
PROBES = 100_000
REPLICAS = (20, 100)  # pods per label set: 5,000 and 1,000 label sets at 100k pods
LOCAL_CLUSTER = "cluster-0"
LOCAL_NODE = "gke-pool-0-00000"  # bench_index's first node (of cluster-0)
PROBE_PORTS = ((("TCP", 8080), 4), (("TCP", 9090), 1), (("UDP", 53), 1), (("TCP", 443), 1))


# -- in the worker: policies and decisions on the store ---------------------------------------


def _policy(rng: random.Random, name: str, namespace: str, teams: list[str]) -> dict[str, Any]:
    """One of a few common shapes over bench_index's labels (app, team, env, pod-template-hash)."""
    shape = rng.randrange(5)
    http = [{"port": "http"}, {"protocol": "TCP", "port": 9090}]
    if shape == 0:  # the namespace's prod pods take traffic from prod pods of their namespace
        spec: dict[str, Any] = {
            "podSelector": {"matchLabels": {"env": "prod"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"env": "prod"}}}], "ports": http}],
        }
    elif shape == 1:  # from a team's namespaces, any cluster
        spec = {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": rng.choice(teams)}}}]}],
        }
    elif shape == 2:  # egress to the pod network except one cluster's range, plus DNS
        spec = {
            "podSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}]},
            "egress": [
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]},
                {"ports": [{"port": 53, "protocol": "UDP"}]},
            ],
        }
    elif shape == 3:  # deny all ingress to staging
        spec = {"podSelector": {"matchLabels": {"env": "staging"}}, "policyTypes": ["Ingress"]}
    else:  # same team, named port
        spec = {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
            "ingress": [
                {
                    "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"team": rng.choice(teams)}}}],
                    "ports": [{"port": "http"}],
                }
            ],
        }
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _probes(rng: random.Random, ips: list[str], count: int) -> list[tuple[str, str, str, int]]:
    choices, weights = zip(*PROBE_PORTS, strict=True)
    externals = [f"192.0.2.{i}" for i in range(1, 255)]
    out = []
    for _ in range(count):
        src = rng.choice(ips) if rng.random() > 0.05 else rng.choice(externals)
        dst = rng.choice(ips) if rng.random() > 0.05 else rng.choice(externals)
        protocol, port = rng.choices(choices, weights)[0]
        out.append((src, dst, protocol, port))
    return out


def _rate(decide: Any, probes: list[Any]) -> float:
    start = time.process_time()  # one thread of pure Python: CPU time is what "on one core" means
    for probe in probes:
        decide(*probe)
    return len(probes) / (time.process_time() - start)


def decision_rates(engine: PolicyEngine, enforcement: Any, probes: int, policies: int) -> dict[str, Any]:
    """Add ``policies`` NetworkPolicies to the store's namespaces, then decisions per CPU second.

    ``engine.decide(src, dst, protocol, port)`` with address strings (scenario 6's call), and the
    dataplane's call (``LocalEnforcement.decide`` of a parsed packet). Cold = first pass (selection
    caches filled); warm = median of three more passes.
    """
    from kube_ip_tracker.agent.dataplane import PacketInfo, Protocol

    rng = random.Random(3)
    objects = engine.world.objects
    namespaces = sorted(objects.namespaces)
    teams = sorted({ns.labels.get("team", "") for ns in objects.namespaces.values()})
    for i in range(policies):
        cluster, namespace = namespaces[i % len(namespaces)]
        engine.set_policy(parse_network_policy(_policy(rng, f"policy-{i}", namespace, teams), cluster))
    ips = [entry.primary_ip for entry in engine.world.pods() if entry.primary_ip]
    text = _probes(rng, ips, probes)
    cold = _rate(engine.decide, text)
    warm = [_rate(engine.decide, text) for _ in range(3)]
    protocols = {"TCP": (Protocol.TCP, 6), "UDP": (Protocol.UDP, 17)}
    packets = [
        (PacketInfo(ipaddress.ip_address(s), ipaddress.ip_address(d), protocols[p][0], 40000, port, protocols[p][1]),)
        for s, d, p, port in text
    ]
    dataplane = [_rate(enforcement.decide, packets) for _ in range(3)]
    allowed = sum(engine.decide(*probe).allowed for probe in text[:10_000])
    return {
        "policies": engine.world.policy_count,
        "probes": probes,
        "cold_decisions_per_s": round(cold),
        "decisions_per_s": round(statistics.median(warm)),
        "decisions_per_s_runs": [round(r) for r in warm],
        "dataplane_decisions_per_s": round(statistics.median(dataplane)),
        "allowed_share": round(allowed / min(len(text), 10_000), 3),
    }


def memory_breakdown(objects: Any) -> dict[str, float]:
    """Bytes per pod of the store's parts, from ``sys.getsizeof`` (allocator rounding not included)."""
    size = sys.getsizeof
    pods = max(1, objects.pod_count)
    entries = [e for t in objects.pods.values() for e in t.values()]
    gc_head = 16  # PyGC_Head of a GC-tracked object (sys.getsizeof includes it for the entry)
    identities = {id(e.identity): e.identity for e in entries}.values()
    labels = {id(i.labels): i.labels for i in identities}.values()
    out = {
        "entry object": sum(size(e) for e in entries) / pods,
        "name string": sum(size(e.name) for e in entries) / pods,
        "address key(s) (int)": sum(size(e.addresses) for e in entries) / pods,
        "creation time (int)": sum(size(e.creation_timestamp) for e in entries) / pods,
        "per-namespace name tables": sum(size(t) for t in objects.pods.values()) / pods,
        "IP claims table": size(objects.claims._claims) / pods,
        "identities (objects, labels, pool)": (
            sum(size(i) + gc_head for i in identities)
            + sum(size(m) for m in labels)
            + size(objects.identities._pool._items)
        )
        / pods,
    }
    return {k: round(v, 1) for k, v in out.items()}


# -- in the parent ----------------------------------------------------------------------------


async def _raw_watch(target: str) -> float:
    worker = await Worker.start("raw", target, "1")
    try:
        return float((await worker.read(limit=300))["snapshot_s"][0])
    finally:
        await worker.close()


async def _store_run(target: str, decide: bool, profile: bool = False) -> dict[str, Any]:
    worker = await Worker.start("store", target, LOCAL_CLUSTER, LOCAL_NODE)
    try:
        reply = await worker.ask("connect profile" if profile else "connect", limit=600)
        if decide:
            reply["decisions"] = await worker.ask(f"decide {PROBES} {POLICIES}", limit=900)
        return reply
    finally:
        await worker.close()


def _index_load_seconds(records: list[Any]) -> float:
    from kube_ip_tracker.index import Index

    cpu = time.process_time()
    _load(Index(log_size=100_000), iter(records))
    return time.process_time() - cpu


async def _measure(shape: dict[str, int], replicas: int, repeats: int, profile: bool) -> dict[str, Any]:
    from kube_ip_tracker.index import Index
    from kube_ip_tracker.server import TrackerServer

    empty = TrackerServer(Index(), "127.0.0.1:0")
    await empty.start()
    try:  # what the client and its channel cost with no pods at all
        fixed = (await _store_run(f"127.0.0.1:{empty.bound_port}", decide=False))["rss_growth"]
    finally:
        await empty.stop(0)
    records = list(generate(**shape, replicas=replicas))
    index_load = [_index_load_seconds(records) for _ in range(repeats)]
    index = Index(log_size=100_000)
    _load(index, iter(records))
    records.clear()
    gc.collect()
    server = TrackerServer(index, "127.0.0.1:0", snapshot_cache_ttl=0.0)
    await server.start()
    target = f"127.0.0.1:{server.bound_port}"
    try:
        raw = [await _raw_watch(target) for _ in range(repeats)]
        runs = [await _store_run(target, decide=k == 0) for k in range(repeats)]
        profiled = await _store_run(target, decide=False, profile=True) if profile else None
    finally:
        await server.stop(0)
    pods = shape["pods"]
    out: dict[str, Any] = {**shape, "replicas": replicas, "label_sets": max(1, pods // replicas)}
    out["agent_snapshot_s"] = report.spread([r["seconds"] for r in runs])
    out["agent_snapshot_cpu_s"] = report.spread([r["cpu_seconds"] for r in runs])
    out["agent_rss_bytes_per_pod"] = round(statistics.median(r["rss_growth"] for r in runs) / pods, 1)
    out["agent_rss_bytes_per_pod_runs"] = [round(r["rss_growth"] / pods, 1) for r in runs]
    out["agent_fixed_rss_bytes"] = fixed
    out["agent_rss_bytes_per_pod_less_fixed"] = round(
        (statistics.median(r["rss_growth"] for r in runs) - fixed) / pods, 1
    )
    out["agent_counts"] = runs[0]["counts"]
    out["identities"] = runs[0]["identities"]
    out["local_pod_addresses"] = runs[0]["local_pod_addresses"]
    out["breakdown"] = runs[0].get("breakdown", {})
    out["decisions"] = runs[0]["decisions"]
    out["raw_snapshot_s"] = report.spread(raw)
    out["index_load_cpu_s"] = report.spread(index_load)
    out.update({f"index_{k}": v for k, v in _memory(**shape, replicas=replicas).items()})
    if profiled is not None:
        out["profile"] = profiled["profile"]
    return out


def run(quick: bool = False) -> dict[str, Any]:
    shape = QUICK_SHAPE if quick else SHAPE
    repeats = 1 if quick else 3
    shapes = [asyncio.run(_measure(shape, replicas, repeats, profile=k == 0)) for k, replicas in enumerate(REPLICAS)]
    main, few = shapes
    rss, apply_s = main["agent_rss_bytes_per_pod"], main["agent_snapshot_s"]["median"]
    rate = main["decisions"]["decisions_per_s"]
    pods = f"{main['pods']:,} pods"
    return {
        "shapes": shapes,
        "targets": [
            report.target(f"agent RSS per pod, {pods}, {main['label_sets']:,} label sets", "<= 400 B", rss,
                          rss <= RSS_TARGET, "B/pod"),
            report.target(f"agent RSS per pod, {pods}, {few['label_sets']:,} label sets", "<= 400 B",
                          few["agent_rss_bytes_per_pod"], few["agent_rss_bytes_per_pod"] <= RSS_TARGET, "B/pod"),
            report.target(f"snapshot of {pods} applied by the agent (tracker client -> agent store)", "<= 1.5 s",
                          apply_s, apply_s <= APPLY_TARGET, "s"),
            report.target(f"evaluator decisions/s on the agent store, {pods}, {POLICIES:,} policies",
                          ">= 100,000 per CPU second", rate, rate >= DECISIONS_TARGET, "decisions/s"),
        ],
    }  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    shapes = results["shapes"]
    rows = []
    for r in shapes:
        d = r["decisions"]
        rows.append(
            (
                f"{r['label_sets']:,} ({r['replicas']} pods each)",
                f"{r['agent_rss_bytes_per_pod']} ({r['agent_rss_bytes_per_pod_runs']}); "
                f"{r.get('agent_rss_bytes_per_pod_less_fixed', 'n/a')} without the client's "
                f"{r.get('agent_fixed_rss_bytes', 0) / 1e6:.1f} MB",
                f"{r['index_rss_bytes_per_pod']}",
                f"{r['agent_snapshot_s']['median']} ({r['agent_snapshot_s']['runs']})",
                f"{r['agent_snapshot_cpu_s']['median']}",
                f"{r['raw_snapshot_s']['median']}",
                f"{r['index_load_cpu_s']['median']}",
                f"{r['identities']:,}",
                f"{d['decisions_per_s']:,} / {d['dataplane_decisions_per_s']:,} (cold {d['cold_decisions_per_s']:,})",
            )
        )
    main = shapes[0]
    lines = [
        "## 7. Agent data path: memory per pod, snapshot apply, decisions",
        "",
        f"A real `TrackerServer` serves an index of {main['pods']:,} pods over {main['clusters']} clusters "
        f"({main['nodes']:,} nodes, {main['namespaces']} namespaces per cluster: scenario 1's shape). A fresh "
        "worker process runs the agent's data path as `agent/run.py` wires it: `TrackerClient` -> `AgentStore` "
        "(the `PolicyEngine`'s world; local pods of one node tracked). Agent figures: seconds from start until "
        "the snapshot is applied (wall, median of 3 fresh workers, and the worker's CPU seconds, gRPC threads "
        "included), RSS growth of the worker over that time per pod. Side by side in the same run: the tracker's "
        "index for the same shape (RSS growth per pod in a fresh process, as scenario 1; CPU seconds to load the "
        "records) and a raw client's snapshot receive time. Decisions: 1,000 NetworkPolicies added to the "
        "store's namespaces, 100,000 random probes (95% pod addresses), per CPU second: `engine.decide` on "
        "address strings (scenario 6's call) / `LocalEnforcement.decide` on parsed packets (the dataplane's "
        "call, with its metrics). Before this store (issue 23, the Mirror -> MirrorFeed -> World path): "
        "2,583 B/pod and 4.2 s.",
        "",
        report.targets_table(results["targets"]),
        "",
        report.table(
            (
                "label sets",
                "agent B/pod (runs)",
                "index B/pod",
                "agent snapshot s (runs)",
                "agent CPU s",
                "raw client s",
                "index load CPU s",
                "identities",
                "decisions/s: engine / dataplane",
            ),
            rows,
        ),
    ]
    if main.get("breakdown"):
        lines += [
            "",
            "Where an agent pod's bytes go (`sys.getsizeof` of the store's parts divided by pods, scenario 1 "
            "shape; allocator rounding and free lists are the rest of the RSS figure):",
            "",
            report.table(("part", "B/pod"), sorted(main["breakdown"].items(), key=lambda kv: -kv[1])),
        ]
    if main.get("profile"):
        lines += [
            "",
            "Where the snapshot time goes (cProfile of one more run, own time per function, event-loop thread):",
            "",
            report.profile_table(main["profile"]),
        ]
    missed = {t["name"] for t in report.missed(results)}
    if missed:
        b = main.get("breakdown", {})
        objects = round(sum(b.values())) if b else "n/a"
        fixed_mb = main.get("agent_fixed_rss_bytes", 0) / 1e6
        lines += ["", "### Where the memory and time go / what remains"]
        if any(name.startswith("agent RSS") for name in missed):
            lines += [
                "",
                f"Memory: an agent pod is a name string, an entry object of five slots (name, identity, address, "
                f"node, creation time; 72 B, which pymalloc rounds to 80), its address as a number (a 32 B int "
                f"instead of a 64 B string), its creation time (a 32 B int), its slots in the IP-claims dict and in "
                f"its namespace's name table, and its share of the identities: {objects} B per pod in objects "
                "(`sys.getsizeof`, table above; tracemalloc counts ~360 B/pod, allocation sizes without pymalloc's "
                "rounding). The RSS figure adds the client's fixed cost "
                f"({fixed_mb:.1f} MB with an empty snapshot, ~42 B/pod here; in a development run "
                "`/proc/self/smaps` put 3.9 MB of it in the pages of the gRPC extension module (`cygrpc`), first touched when a "
                "client runs), pymalloc's size classes and partly used pools, and what gRPC's C core keeps after "
                "the stream (free heap pages are returned after each snapshot with `malloc_trim`). Decoding the "
                "snapshot straight into entries (`agent/wire_pods.py`, no `PodRecord`, label dict or `Upsert` per "
                "pod) cut the short-lived objects but not what is held, so RSS moved only by some 10 B/pod "
                "(486 B/pod at 09:50 UTC before it, same shape, load ~0.1). Every part is already shared where pods "
                "repeat it (identity, labels, ports, node and namespace names); going under 400 B/pod in CPython "
                "needs fewer objects per pod, e.g. pod tables as parallel arrays indexed by a slot number "
                "(addresses and creation times in `array`s, names packed in one buffer, the IP claims as a sorted "
                "array with a small dict for recent changes): a different data structure, not done here.",
            ]
        if any(name.startswith("snapshot") for name in missed):
            lines += [
                "",
                "Time: pods are decoded straight into store entries: a pod's cluster, namespace, labels and ports "
                "are looked up by their serialized bytes (`wire.pod_shared_bytes`, a scan of the first fields in "
                "Python) and only its name, node, addresses and creation time are read (`PodDecoder.entry`); the "
                "profile above is now that scan, the entry and the IP-claims insert, a few microseconds of Python "
                "per pod (CPU seconds went from 2.06 to the figure in the table; 09:50 UTC, load ~0.1, before "
                "this path). Wall-clock seconds on this shared 2-core machine are mostly waiting for a core: "
                "compare the raw client's receive time in the same run (0.49 s when issue 23 measured it on a quiet "
                "machine) and see the load average below. Going further needs a compiled decoder.",
            ]
        if any(name.startswith("evaluator") for name in missed):
            lines += [
                "",
                "Decisions: the rate is per CPU second, but CPU time per decision also rises with the machine's "
                "load (shared caches, hyper-threads); compare the runs in bench/results/agent.json.",
            ]
    return "\n".join(lines)


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
