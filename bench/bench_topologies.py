"""Propagation latency of the two topologies: a pod IP written to an API server -> every agent's mirror.

Three real local clusters (etcd + kube-apiserver), real tracker processes, and one agent mirror
(``TrackerClient`` + ``Mirror``, in this process) per tracker:

- full mesh: three trackers, each watching all three API servers; an agent on each.
- hub and spoke: a hub watching all three; three spokes, each watching its own API server plus the
  hub; an agent on each spoke. A write to cluster *i* reaches spoke *i* directly ("local") and the
  two other spokes through the hub ("via hub").

Each sample: a pod is created without an IP (not indexed), then its status is patched with an IP;
the clock runs from just before the patch until the mirror applies the pod (a listener on the
mirror records the moment). Writes are made one at a time, round robin over the clusters, each
waiting until every agent has it, so the figures are latencies without queueing.

Run: ``python -m bench topologies`` (stores the result, regenerates docs/benchmarks.md) or
``python bench/bench_topologies.py [--quick]`` (prints JSON).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kube_ip_tracker.agent.events import PodUpserted
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import ClusterSet, start_clusters
from kube_ip_tracker.testing.trackers import Agent, TrackerProcess, eventually

NAMESPACE = "bench"


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (0..1) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


def _summary(latencies_ms: Sequence[float]) -> dict[str, Any]:
    return {
        "samples": len(latencies_ms),
        "p50_ms": round(_percentile(latencies_ms, 0.5), 1),
        "p99_ms": round(_percentile(latencies_ms, 0.99), 1),
        "max_ms": round(max(latencies_ms), 1) if latencies_ms else 0.0,
    }


class _Arrivals:
    """First time each IP shows up in an agent's mirror (recorded by a mirror listener)."""

    def __init__(self, agent: Agent) -> None:
        self.seen: dict[str, float] = {}
        agent.store.subscribe(self._on_events)

    def _on_events(self, events: Sequence[object]) -> None:
        now = time.perf_counter()
        for e in events:
            if isinstance(e, PodUpserted):
                for ip in e.pod.ips:
                    self.seen.setdefault(ip, now)


async def _measure(
    clusters: ClusterSet, agents: list[Agent], writes: int, tag: int, trackers: list[TrackerProcess]
) -> list[tuple[int, int, float]]:
    """(cluster index, agent index, latency ms) per write and agent."""
    arrivals = [_Arrivals(a) for a in agents]
    out: list[tuple[int, int, float]] = []
    apis = [c.api_client() for c in clusters]
    try:
        for n in range(writes):
            i = n % len(clusters)
            name = f"t{tag}-{n}"
            ip = f"10.{100 + tag}.{n // 250}.{n % 250 + 1}"
            await objects.create_pod(apis[i], NAMESPACE, name, labels={"app": "bench"})
            started = time.perf_counter()
            await objects.set_pod_status(apis[i], NAMESPACE, name, ips=[ip])
            await eventually(lambda ip=ip: all(ip in a.seen for a in arrivals), f"{ip} at every agent", trackers, 30)
            out += [(i, j, (a.seen[ip] - started) * 1000) for j, a in enumerate(arrivals)]
    finally:
        for api in apis:
            await api.close()
    return out


async def _ready(agents: list[Agent], clusters: ClusterSet, trackers: list[TrackerProcess]) -> None:
    names = [c.name for c in clusters]
    for a in agents:
        await eventually(
            lambda a=a: a.client.ready and all(a.store.cluster_synced(n) for n in names),
            f"{a.tracker.name}'s agent synced",
            trackers,
            60,
        )


async def _sample(
    clusters: ClusterSet, trackers: list[TrackerProcess], served: list[TrackerProcess], writes: int, tag: int
) -> list[tuple[int, int, float]]:
    """Agents on ``served`` (trackers already started), measured, then everything stopped."""
    agents = [Agent(t).start() for t in served]
    try:
        await _ready(agents, clusters, trackers)
        return await _measure(clusters, agents, writes, tag, trackers)
    finally:
        for a in agents:
            await a.stop()
        for t in trackers:
            t.stop()


async def _full_mesh(clusters: ClusterSet, log_dir: Path, writes: int) -> dict[str, Any]:
    trackers = [
        TrackerProcess(f"mesh-{i + 1}", ["--kubeconfig", str(clusters.merged_kubeconfig)], log_dir).start()
        for i in range(len(clusters))
    ]
    samples = await _sample(clusters, trackers, trackers, writes, 1)
    return {"all": _summary([ms for _, _, ms in samples])}


async def _hub_and_spoke(clusters: ClusterSet, log_dir: Path, writes: int) -> dict[str, Any]:
    hub = TrackerProcess("hub", ["--kubeconfig", str(clusters.merged_kubeconfig)], log_dir).start()
    spokes = [
        TrackerProcess(
            f"spoke-{i + 1}", ["--kubeconfig", str(c.kubeconfig), "--upstream-tracker", hub.address], log_dir
        ).start()
        for i, c in enumerate(clusters)
    ]
    samples = await _sample(clusters, [hub, *spokes], spokes, writes, 2)
    return {
        "all": _summary([ms for _, _, ms in samples]),
        "local": _summary([ms for i, j, ms in samples if i == j]),
        "via_hub": _summary([ms for i, j, ms in samples if i != j]),
    }


async def _run(writes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-topologies-") as tmp:
        base = Path(tmp)
        clusters = start_clusters(3, base / "clusters")
        try:
            for c in clusters:
                async with c.api_client() as api:
                    await objects.create_namespace(api, NAMESPACE)
            mesh = await _full_mesh(clusters, base, writes)
            hub = await _hub_and_spoke(clusters, base, writes)
        finally:
            clusters.stop()
    return {"clusters": 3, "writes": writes, "full_mesh": mesh, "hub_and_spoke": hub}


def run(quick: bool = False) -> dict[str, Any]:
    """Measure both topologies; ``quick``: 9 writes each instead of 60."""
    return asyncio.run(_run(9 if quick else 60))


def markdown(results: dict[str, Any]) -> str:
    """A section with one row per topology and path."""
    rows = [
        ("full mesh (3 trackers, each watching 3 API servers)", "any", results["full_mesh"]["all"]),
        ("hub and spoke (hub + 3 spokes)", "own cluster (spoke's API server)", results["hub_and_spoke"]["local"]),
        ("hub and spoke", "other clusters (via the hub)", results["hub_and_spoke"]["via_hub"]),
        ("hub and spoke", "any", results["hub_and_spoke"]["all"]),
    ]
    lines = [
        "## Topologies: propagation latency",
        "",
        f"API write (pod status patched with an IP) until the agent's mirror holds the pod, {results['writes']} "
        f"writes round robin over {results['clusters']} real local clusters, one agent per tracker (full mesh) "
        "or per spoke (hub and spoke); one write at a time. `bench/bench_topologies.py`; see docs/topologies.md.",
        "",
        "| topology | path | samples | p50 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for topology, path, s in rows:
        lines.append(f"| {topology} | {path} | {s['samples']} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    results = run(quick="--quick" in sys.argv[1:])
    print(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
