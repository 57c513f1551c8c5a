"""Scenario 1: index apply rate (events/s) and tracker memory per pod (RSS and tracemalloc).

Shape: 100k pods across 3 clusters, 2k nodes, 300 namespaces, 4 labels per pod (app, team,
env, pod-template-hash; ~20 replicas per deployment), 1-2 container ports, one IPv4 per pod.
Targets: >= 100k events/s, <= 1 KB per pod.

``python -m bench index`` runs it through the runner; ``measure()`` gives the raw figures of one
shape, ``generate()`` the records (shared with the other benchmarks).
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from kube_ip_tracker import wire
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord, ContainerPort, NamespaceRecord, NodeRecord, PodRecord

PORT_SETS = [
    (ContainerPort("http", 8080, "TCP"),),
    (ContainerPort("http", 8080, "TCP"), ContainerPort("metrics", 9090, "TCP")),
    (ContainerPort("grpc", 50051, "TCP"),),
    (ContainerPort("dns", 53, "UDP"), ContainerPort("dns-tcp", 53, "TCP")),
]


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _fresh(s: str) -> str:
    """A new string object equal to ``s`` (as a decoded API object would give)."""
    return (s + " ")[:-1]


def generate(
    pods: int, clusters: int, nodes: int, namespaces: int, seed: int = 1, replicas: int = 20
) -> Iterator[PodRecord | NamespaceRecord | NodeRecord | ClusterStatusRecord]:
    """Records in the order a source would write them: statuses, namespaces, nodes, then pods.

    Pods come in deployments of ``replicas`` (one label set each: ``pods // replicas`` label sets).
    """
    rng = random.Random(seed)
    cluster_names = [f"cluster-{c}" for c in range(clusters)]
    for c in cluster_names:
        yield ClusterStatusRecord(
            c, connected=True, synced=True, kube_system_uid=str(uuid.UUID(int=rng.getrandbits(128)))
        )
    ns_names = [f"team-{i // 10}-ns-{i}" for i in range(namespaces)]
    for c in cluster_names:
        for ns in ns_names:
            yield NamespaceRecord(c, ns, {"kubernetes.io/metadata.name": ns, "team": ns.split("-ns-")[0]})
    node_names = [f"gke-pool-{i // 100}-{i:05d}" for i in range(nodes)]
    for i, n in enumerate(node_names):
        c = cluster_names[i % clusters]
        yield NodeRecord(
            c, n, {"topology.kubernetes.io/zone": f"zone-{i % 3}", "pool": n[:10]}, (f"172.16.{i // 250}.{i % 250}",)
        )
    deployments = max(1, pods // replicas)
    for i in range(pods):
        d = i % deployments
        c = cluster_names[d % clusters]
        ns = ns_names[d % namespaces]
        app = f"svc-{d}"
        template_hash = f"{(d * 2654435761) & 0xFFFFFFFF:08x}"[:9]
        labels = {
            _fresh("app"): _fresh(app),
            _fresh("team"): _fresh(ns.split("-ns-")[0]),
            _fresh("env"): _fresh("prod" if d % 3 else "staging"),
            _fresh("pod-template-hash"): _fresh(template_hash),
        }
        yield PodRecord(
            cluster=_fresh(c),
            namespace=_fresh(ns),
            name=f"{app}-{template_hash}-{rng.getrandbits(32):08x}",
            labels=labels,
            ports=tuple(PORT_SETS[d % len(PORT_SETS)]),
            node=_fresh(node_names[(i * 7) % nodes]),
            ips=(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}",),
            creation_timestamp=1_700_000_000 + i,
            uid=str(uuid.UUID(int=rng.getrandbits(128))),
        )


def _load(index: Index, records: Iterator) -> int:
    n = 0
    for r in records:
        if isinstance(r, ClusterStatusRecord):
            index.set_cluster_status(r)
        else:
            index.upsert(r)
        n += 1
        if n % 1000 == 0:
            index.flush()  # as the event loop would, once per turn
    index.flush()
    return n


SHAPE = {"pods": 100_000, "clusters": 3, "nodes": 2000, "namespaces": 300}
QUICK_SHAPE = {"pods": 1000, "clusters": 3, "nodes": 30, "namespaces": 10}
APPLY_TARGET = 100_000  # events/s
MEMORY_TARGET = 1024  # bytes per pod


def _apply_rate(records: list) -> tuple[float, float]:
    """Events per second of wall-clock time and per second of this process's CPU time."""
    index = Index(log_size=100_000)
    wall, cpu = time.perf_counter(), time.process_time()
    n = _load(index, iter(records))
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def _update_rate(records: list, gc_enabled: bool = True) -> float:
    """Steady state: a label update of every pod (each a real change), 100 per flush.

    As many updates as pods, so the full passes of Python's cyclic GC that they trigger are spread over
    the run as in a long-running tracker (a short run measures either none or one). ``gc_enabled=False``
    runs the updates with the cyclic garbage collector off, to show its share.
    """
    index = Index(log_size=100_000)
    _load(index, iter(records))
    pods = [r for r in records if isinstance(r, PodRecord)]
    updates = [
        PodRecord(p.cluster, p.namespace, p.name, {**p.labels, "version": "v2"}, p.ports, p.node, p.ips,
                  p.creation_timestamp, p.uid)
        for p in pods
    ]  # fmt: skip
    if not gc_enabled:
        gc.disable()
    try:
        cpu = time.process_time()
        for i, u in enumerate(updates):
            index.upsert(u)
            if i % 100 == 99:
                index.flush()
        index.flush()
        return len(updates) / (time.process_time() - cpu)
    finally:
        gc.enable()


def _snapshot_size(records: list, pods: int) -> dict[str, float]:
    """Encoded snapshot size as the server frames it (raw, and gzip per 500-object message)."""
    index = Index(log_size=100_000)
    _load(index, iter(records))
    gc.collect()
    started = time.perf_counter()
    gc.collect()  # one full pass over everything the index holds: what the event loop pauses for
    gc_pass_ms = (time.perf_counter() - started) * 1e3
    snap = index.snapshot()
    started = time.process_time()
    chunks: list[bytes] = []
    pending: list[bytes] = []
    for content in snap.clusters:
        for record in (content.status, *content.namespaces, *content.nodes, *content.pods):
            pending.append(wire.frame_change(wire.encode_change(record)))
            if len(pending) == 500:
                chunks.append(b"".join(pending))
                pending = []
    chunks.append(b"".join(pending))
    encode_s = time.process_time() - started
    raw = sum(len(c) for c in chunks)
    gz = sum(len(zlib.compress(c, 6)) for c in chunks)
    return {
        "gc_full_pass_ms": round(gc_pass_ms, 1),
        "gc_tracked_objects": len(gc.get_objects()),
        "snapshot_encode_s": round(encode_s, 3),
        "snapshot_bytes": raw,
        "snapshot_bytes_per_pod": round(raw / pods, 1),
        "snapshot_gzip_bytes_per_pod": round(gz / pods, 1),
    }


def _memory(pods: int, clusters: int, nodes: int, namespaces: int, replicas: int = 20) -> dict[str, float]:
    """RSS growth and traced allocations of an index fed by a generator, each in a fresh process.

    Separate processes: tracemalloc's own bookkeeping (a trace per live block) would count in RSS.
    """
    out: dict[str, float] = {}
    for what in ("rss", "traced"):
        done = subprocess.run(
            [sys.executable, "-m", "bench.bench_index", "--memory", what, str(pods), str(clusters), str(nodes),
             str(namespaces), str(replicas)],
            cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, check=True,
        )  # fmt: skip
        out.update(json.loads(done.stdout))
    return out


def _memory_here(
    what: str, pods: int, clusters: int, nodes: int, namespaces: int, replicas: int = 20
) -> dict[str, float]:
    """RSS growth (``what`` = "rss") or traced allocations ("traced") of an index fed by a generator."""
    gc.collect()
    rss_before = _rss_bytes()
    if what == "traced":
        tracemalloc.start()
    index = Index(log_size=100_000)
    _load(index, generate(pods, clusters, nodes, namespaces, seed=2, replicas=replicas))
    gc.collect()
    if what == "traced":
        traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return {"traced_bytes_per_pod": round(traced / pods, 1)}
    return {
        "rss_bytes_per_pod": round((_rss_bytes() - rss_before) / pods, 1),
        "change_log_changes": min(100_000, index.revision),
    }


def measure(
    pods: int = 100_000, clusters: int = 3, nodes: int = 2000, namespaces: int = 300, repeats: int = 1
) -> dict[str, Any]:
    """Every figure of one shape; rates are medians of ``repeats`` runs (each on a fresh index)."""
    out: dict[str, Any] = {"pods": pods, "clusters": clusters, "nodes": nodes, "namespaces": namespaces}
    records = list(generate(pods, clusters, nodes, namespaces))
    out["load_events"] = len(records)
    applies = [_apply_rate(records) for _ in range(repeats)]
    out["load_events_per_s"] = round(statistics.median(cpu for _, cpu in applies))
    out["load_events_per_s_runs"] = [round(cpu) for _, cpu in applies]
    out["load_events_per_wall_s"] = round(statistics.median(wall for wall, _ in applies))
    out["load_events_per_wall_s_runs"] = [round(wall) for wall, _ in applies]
    updates = [_update_rate(records) for _ in range(repeats)]
    out["update_events_per_s"] = round(statistics.median(updates))
    out["update_events_per_s_runs"] = [round(u) for u in updates]
    out["update_events_per_s_gc_off"] = round(statistics.median(_update_rate(records, False) for _ in range(repeats)))
    out.update(_snapshot_size(records, pods))
    out["profile"] = report.profile_top(lambda: _load(Index(log_size=100_000), iter(records)))
    records.clear()
    gc.collect()
    out.update(_memory(pods, clusters, nodes, namespaces))
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Scenario 1 at the target shape (``quick``: a small shape, 2 runs)."""
    shape = QUICK_SHAPE if quick else SHAPE
    out = measure(**shape, repeats=2 if quick else 5)
    out["targets"] = [
        report.target("index apply rate (initial load)", ">= 100,000 events per CPU second", out["load_events_per_s"],
                      out["load_events_per_s"] >= APPLY_TARGET, "events/s"),
        report.target("index apply rate (label updates of every pod)", ">= 100,000 events per CPU second",
                      out["update_events_per_s"], out["update_events_per_s"] >= APPLY_TARGET, "events/s"),
        report.target("tracker memory per pod (RSS)", "<= 1 KB", out["rss_bytes_per_pod"],
                      out["rss_bytes_per_pod"] <= MEMORY_TARGET, "B/pod"),
        report.target("tracker memory per pod (tracemalloc)", "<= 1 KB", out["traced_bytes_per_pod"],
                      out["traced_bytes_per_pod"] <= MEMORY_TARGET, "B/pod"),
    ]  # fmt: skip
    return out


def markdown(results: dict[str, Any]) -> str:
    r = results
    lines = [
        "## 1. Index apply rate and memory per pod",
        "",
        f"{r['pods']:,} pods over {r['clusters']} clusters, {r['nodes']:,} nodes, {r['namespaces']} namespaces per "
        "cluster, 4 labels per pod, written to `kube_ip_tracker.index.Index` the way the sources do "
        "(one `upsert` per event, a commit every 1,000 events as one event-loop turn would). Records are "
        "generated before the clock starts; each run uses a fresh index. Rates are per second of the "
        "process's CPU time (the work is one thread of pure Python; on this shared machine wall-clock time "
        "also counts the time other sessions held the cores — both are shown). Memory is measured in a fresh "
        "process: RSS growth and tracemalloc while an index is filled from a generator.",
        "",
        report.targets_table(r["targets"]),
        "",
        report.table(
            ("figure", "value"),
            [
                (
                    "initial load, events per CPU second (median; runs)",
                    f"{r['load_events_per_s']:,} ({r['load_events_per_s_runs']})",
                ),
                (
                    "initial load, events per wall-clock second (median; runs)",
                    f"{r['load_events_per_wall_s']:,} ({r['load_events_per_wall_s_runs']})",
                ),
                (
                    "label updates of every pod, events per CPU second (median; runs)",
                    f"{r['update_events_per_s']:,} ({r.get('update_events_per_s_runs', '')})",
                ),
                (
                    "the same with Python's cyclic GC off (median)",
                    f"{r['update_events_per_s_gc_off']:,}" if "update_events_per_s_gc_off" in r else "n/a",
                ),
                (
                    "one full GC pass with the index loaded (objects tracked)",
                    f"{r['gc_full_pass_ms']} ms ({r['gc_tracked_objects']:,})" if "gc_full_pass_ms" in r else "n/a",
                ),
                ("memory per pod, RSS growth", f"{r['rss_bytes_per_pod']} B"),
                ("memory per pod, tracemalloc", f"{r['traced_bytes_per_pod']} B"),
                ("change log held during the memory run", f"{r['change_log_changes']:,} changes"),
                ("snapshot encoded in-process (CPU seconds, one thread)", f"{r['snapshot_encode_s']} s"),
                (
                    "snapshot size, raw / gzip per 500-object message",
                    f"{r['snapshot_bytes_per_pod']} / {r['snapshot_gzip_bytes_per_pod']} B per pod",
                ),
            ],
        ),
        "",
        "Where the apply time goes (cProfile of one load, own time per function):",
        "",
        report.profile_table(r["profile"]),
        "",
        "Memory: records are stored once (frozen slotted dataclasses), cluster/namespace/node names and label "
        "keys/values are interned, identical label maps and port tuples are shared between pods (a deployment's "
        "replicas share one map), so a pod costs its record, its name, uid and IP strings, one IP-claim entry, "
        "its dict slots and its share of the change log.",
    ]
    if report.missed(r):
        lines += [
            "",
            "### Where the time goes / what remains",
            "",
            "An event costs a few microseconds of pure Python: the record is rebuilt with interned strings and "
            "shared labels/ports (a frozen dataclass `__init__` of 9 fields), the per-namespace pod table and the "
            "IP-claims dict are updated, and a `Change` is appended for the batch (see the profile above). The "
            "hot path was trimmed (label maps pooled in a plain dict pruned by reference count instead of a "
            "`WeakValueDictionary`, no exception per write to find the event loop, the pod key built only when "
            "an IP is contested); what remains is one Python-level object construction and ~7 dict operations "
            "per event, much of it memory-bound (a 100k-entry IP dict and pod tables). CPU time is used because "
            "other sessions share the 2 cores; under heavy load even CPU time per event rises (shared caches). "
            "Going much further would need skipping the record rebuild when the source already interned it, "
            "or a compiled extension. An update of an existing pod costs more than a new pod: the new record "
            "is compared with the stored one, the old IP claims are dropped before the new ones are added, the "
            "old record stays referenced by the change log, and a changed label map is a new map to intern "
            "(replicas then share it). Python's cyclic garbage collector is the other visible cost: every "
            "record, change and label map the index keeps is a GC-tracked object, a full pass over them takes "
            "the time shown above, and a full pass runs each time the long-lived objects grew by a quarter; "
            "updates create long-lived objects, so over a run that updates every pod the passes cost the "
            "difference between the GC-on and GC-off rates (a run of only 20k updates measured either none "
            "or one, 70k to 140k events/s, during development). The index cannot change that itself (it is process-wide); the tracker process could call "
            "`gc.freeze()` once the initial lists are in the index and raise the collection thresholds, "
            "which removes most of it (suggested to the CLI owner, not done here). Memory: RSS counts what the allocator keeps after the generator's "
            "temporary objects are freed, so it is above the traced figure.",
        ]
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--memory"]:
        print(json.dumps(_memory_here(sys.argv[2], *(int(a) for a in sys.argv[3:8]))))
        return
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))


if __name__ == "__main__":
    main()
