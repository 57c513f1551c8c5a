"""Index benchmark: apply rate, memory per pod, snapshot size.

Default shape: 100k pods across 3 clusters, 2k nodes, 300 namespaces, 4 labels per pod (app, team,
env, pod-template-hash; ~20 replicas per deployment), 1-2 container ports, one IPv4 per pod.

Run: ``.venv/bin/python -m bench.bench_index`` (or ``bench/bench_index.py``); ``run()`` returns the
figures as a dict.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import sys
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    pods: int, clusters: int, nodes: int, namespaces: int, seed: int = 1
) -> Iterator[PodRecord | NamespaceRecord | NodeRecord | ClusterStatusRecord]:
    """Records in the order a source would write them: statuses, namespaces, nodes, then pods."""
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
    deployments = max(1, pods // 20)
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


def run(pods: int = 100_000, clusters: int = 3, nodes: int = 2000, namespaces: int = 300) -> dict[str, float]:
    """Build the index three ways (timed, RSS, tracemalloc) and encode a snapshot; return the figures."""
    out: dict[str, float] = {"pods": pods, "clusters": clusters, "nodes": nodes, "namespaces": namespaces}

    # 1. Apply rate (records generated up front so only the index work is timed).
    records = list(generate(pods, clusters, nodes, namespaces))
    index = Index(log_size=100_000)
    started = time.perf_counter()
    n = _load(index, iter(records))
    elapsed = time.perf_counter() - started
    out["load_events"] = n
    out["load_events_per_s"] = round(n / elapsed)
    # Steady state: label updates of existing pods (each a real change).
    pod_records = [r for r in records if isinstance(r, PodRecord)][:20_000]
    updates = [
        PodRecord(
            p.cluster,
            p.namespace,
            p.name,
            {**p.labels, "version": "v2"},
            p.ports,
            p.node,
            p.ips,
            p.creation_timestamp,
            p.uid,
        )
        for p in pod_records
    ]
    started = time.perf_counter()
    for i, u in enumerate(updates):
        index.upsert(u)
        if i % 100 == 99:
            index.flush()
    index.flush()
    out["update_events_per_s"] = round(len(updates) / (time.perf_counter() - started))
    del records, pod_records, updates

    # 2. Snapshot size (raw and gzip) and encode time.
    snap = index.snapshot()
    started = time.perf_counter()
    chunks: list[bytes] = []
    pending: list[bytes] = []
    for content in snap.clusters:
        for record in (content.status, *content.namespaces, *content.nodes, *content.pods):
            pending.append(wire.frame_change(wire.encode_change(record)))
            if len(pending) == 500:
                chunks.append(b"".join(pending))
                pending = []
    chunks.append(b"".join(pending))
    out["snapshot_encode_s"] = round(time.perf_counter() - started, 3)
    raw = sum(len(c) for c in chunks)
    gz = sum(len(zlib.compress(c, 6)) for c in chunks)  # per message, as gRPC gzip compression would
    out["snapshot_bytes"] = raw
    out["snapshot_bytes_per_pod"] = round(raw / pods, 1)
    out["snapshot_gzip_bytes_per_pod"] = round(gz / pods, 1)
    del snap, chunks, pending, index
    gc.collect()

    # 3. Memory: RSS growth and traced allocations of an index fed by a generator (nothing else kept).
    gc.collect()
    rss_before = _rss_bytes()
    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    index = Index(log_size=100_000)
    _load(index, generate(pods, clusters, nodes, namespaces, seed=2))
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced_before
    tracemalloc.stop()
    rss = _rss_bytes() - rss_before
    out["traced_bytes_per_pod"] = round(traced / pods, 1)
    out["rss_bytes_per_pod"] = round(rss / pods, 1)
    # The change log of the initial load holds one small Change per event; report it separately.
    out["change_log_changes"] = min(100_000, index.revision)
    return out


async def _watch_snapshots(index: Index, watchers: int) -> float:
    """Seconds until ``watchers`` concurrent in-process Watch clients all reached END_OF_SNAPSHOT."""
    import grpc.aio

    from kube_ip_tracker.api.v1 import tracker_pb2 as pb
    from kube_ip_tracker.api.v1 import tracker_pb2_grpc
    from kube_ip_tracker.server import TrackerServer

    server = TrackerServer(index, "127.0.0.1:0")
    await server.start()

    async def one() -> None:
        target = f"127.0.0.1:{server.bound_port}"
        async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
            async for m in tracker_pb2_grpc.TrackerStub(ch).Watch(pb.WatchRequest()):
                if m.kind == pb.WatchResponse.END_OF_SNAPSHOT:
                    return

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(watchers)))
        return time.perf_counter() - started
    finally:
        await server.stop(0)


def run_watch(pods: int = 100_000, watchers: int = 10) -> dict[str, float]:
    """Snapshot delivery over loopback (clients decode in the same process, so this is a lower bound)."""
    index = Index()
    _load(index, generate(pods, 3, 2000, 300))
    one = asyncio.run(_watch_snapshots(index, 1))
    many = asyncio.run(_watch_snapshots(index, watchers))
    return {"watch_snapshot_1_watcher_s": round(one, 2), f"watch_snapshot_{watchers}_watchers_s": round(many, 2)}


def main() -> None:
    print(json.dumps({**run(), **run_watch()}, indent=2))


if __name__ == "__main__":
    main()
