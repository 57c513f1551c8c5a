"""Scenario 4: propagation through a real API server, tracker path versus a direct watch.

One real local cluster (etcd + kube-apiserver, ``kube_ip_tracker.testing.clusters``) holding 10k
pods. The real ``kube-ip-tracker`` process watches it; the real agent client (``TrackerClient`` +
``Mirror``) runs in its own process; a direct pod watch on the same API server runs in a third.
For each sample one pod's IP is patched (status subresource, as a kubelet reports it); latency is
from just before the PATCH request until the new IP is in the agent's mirror, and until the direct
watch saw it — in the same run, one sample after the other.

Targets: p99 < 50 ms; tracker/direct ratio <= 1.5.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.workers import Worker
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import free_port, start_clusters

log = logging.getLogger(__name__)

FULL = {"pods": 10_000, "samples": 200}
QUICK = {"pods": 100, "samples": 20}
NAMESPACE = "bench"
P99_TARGET_MS = 50.0
RATIO_TARGET = 1.5
TRACKER_BIN = Path(sys.executable).with_name("kube-ip-tracker")


async def _set_ip(api: Any, name: str, ip: str) -> None:
    """Replace a pod's IPs (a JSON patch: a strategic merge would add to status.podIPs)."""
    from kubernetes_asyncio import client

    body = [
        {"op": "replace", "path": "/status/podIP", "value": ip},
        {"op": "replace", "path": "/status/podIPs", "value": [{"ip": ip}]},
    ]
    await client.CoreV1Api(api).patch_namespaced_pod_status(name, NAMESPACE, body)


def _ip(i: int, generation: int = 0) -> str:
    return f"10.{generation * 50 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


async def populate(api: Any, pods: int) -> float:
    """Create the namespace and ``pods`` running pods with IPs; returns the seconds it took."""
    started = time.monotonic()
    await objects.create_namespace(api, NAMESPACE, {"team": "bench"})
    limit = asyncio.Semaphore(24)

    async def one(i: int) -> None:
        async with limit:
            await objects.create_pod(
                api,
                NAMESPACE,
                f"pod-{i:05d}",
                labels={"app": f"app-{i % 50}", "team": "bench", "env": "prod", "pod-template-hash": f"h{i % 500}"},
                node=f"node-{i % 100}",
                ips=[_ip(i)],
                ports=[("http", 8080, "TCP")],
            )

    await asyncio.gather(*(one(i) for i in range(pods)))
    return time.monotonic() - started


class Seen:
    """``(pod name, ip) -> first time seen`` from a worker's ``seen`` lines."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.times: dict[tuple[str, str], float] = {}
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            reply = await self.worker.read(limit=3600)
            if "seen" in reply:
                for ip in reply["ips"]:
                    self.times.setdefault((reply["seen"], ip), reply["t"])
                self.changed.set()

    async def wait(self, key: tuple[str, str], limit: float) -> float:
        async with asyncio.timeout(limit):
            while key not in self.times:
                if self.task.done():
                    self.task.result()
                self.changed.clear()
                await self.changed.wait()
        return self.times[key]


async def _measure(shape: dict[str, int], base: Path) -> dict[str, Any]:
    clusters = await asyncio.to_thread(start_clusters, 1, base)
    cluster = clusters[0]
    tracker: asyncio.subprocess.Process | None = None
    workers: list[Worker] = []
    via_tracker = via_direct = None
    try:
        async with cluster.api_client() as api:
            populate_s = await populate(api, shape["pods"])
            log.info("created %d pods in %.1fs", shape["pods"], populate_s)
            port = free_port()
            with (base / "tracker.log").open("wb") as out:
                tracker = await asyncio.create_subprocess_exec(
                    str(TRACKER_BIN), "--listen-address", f"127.0.0.1:{port}", "--metrics-address", "",
                    "--kubeconfig", str(cluster.kubeconfig), "--log-level", "warning",
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            agent = await Worker.start("agent", f"127.0.0.1:{port}")
            direct = await Worker.start("kube", str(cluster.kubeconfig), NAMESPACE)
            workers = [agent, direct]
            await agent.ask("connect", limit=300)
            await agent.ask("watch_pods")
            await direct.read(limit=60)  # "watching"
            via_tracker, via_direct = Seen(agent), Seen(direct)

            # Warm-up: the tracker has listed every pod and both watches deliver (retry until then).
            deadline = time.monotonic() + 300
            generation = 1
            while True:
                key = ("pod-00000", _ip(0, generation))
                await _set_ip(api, *key)
                try:
                    await via_tracker.wait(key, 5)
                    await via_direct.wait(key, 5)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the pod change never reached the agent mirror") from None
                    generation += 1
            samples: list[tuple[float, float]] = []
            for k in range(shape["samples"]):
                i = 1 + (k * 7919) % (shape["pods"] - 1)
                key = (f"pod-{i:05d}", _ip(i, generation + 1))
                started = time.monotonic()
                await _set_ip(api, *key)
                t_tracker = await via_tracker.wait(key, 30)
                t_direct = await via_direct.wait(key, 30)
                samples.append((t_tracker - started, t_direct - started))
                await asyncio.sleep(0.02)
    finally:
        for seen in (via_tracker, via_direct):
            if seen is not None:
                seen.task.cancel()
        for w in workers:
            await w.close()
        if tracker is not None and tracker.returncode is None:
            tracker.terminate()
            try:
                async with asyncio.timeout(10):
                    await tracker.wait()
            except TimeoutError:
                tracker.kill()
                await tracker.wait()
        await asyncio.to_thread(clusters.stop)
    t_ms = [a * 1e3 for a, _ in samples]
    d_ms = [b * 1e3 for _, b in samples]
    major, minor = cluster.apiserver_version or (0, 0)
    out: dict[str, Any] = {**shape, "populate_s": round(populate_s, 1), "apiserver": f"{major}.{minor}"}
    for name, values in (("tracker", t_ms), ("direct", d_ms)):
        out[name] = {
            "p50_ms": round(report.percentile(values, 0.5), 1),
            "p99_ms": round(report.percentile(values, 0.99), 1),
            "max_ms": round(max(values), 1),
            "mean_ms": round(sum(values) / len(values), 1),
        }
    out["p50_ratio"] = round(out["tracker"]["p50_ms"] / out["direct"]["p50_ms"], 2)
    out["p99_ratio"] = round(out["tracker"]["p99_ms"] / out["direct"]["p99_ms"], 2)
    out["extra_ms"] = {
        "p50": round(report.percentile([a - b for a, b in zip(t_ms, d_ms, strict=True)], 0.5), 1),
        "p99": round(report.percentile([a - b for a, b in zip(t_ms, d_ms, strict=True)], 0.99), 1),
    }
    return out


def run(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-propagation-") as tmp:
        out = asyncio.run(_measure(QUICK if quick else FULL, Path(tmp)))
    p99 = out["tracker"]["p99_ms"]
    out["targets"] = [
        report.target(
            f"pod IP change to agent mirror, {out['pods']:,} pods, p99", "< 50 ms", p99, p99 < P99_TARGET_MS, "ms"
        ),
        report.target("tracker / direct watch, p99", "<= 1.5", out["p99_ratio"], out["p99_ratio"] <= RATIO_TARGET, "x"),
    ]
    return out


def markdown(results: dict[str, Any]) -> str:
    r = results
    t, d = r["tracker"], r["direct"]
    lines = [
        "## 4. Propagation through a real API server",
        "",
        f"One local cluster (etcd + kube-apiserver v{r.get('apiserver', '1.20')}) with {r['pods']:,} running pods (created in "
        f"{r['populate_s']} s). The real `kube-ip-tracker` process watches it; the agent client (`TrackerClient` "
        "+ `Mirror`) and a direct pod watch (kubernetes_asyncio) on the same API server run in their own "
        f"processes. {r['samples']} samples, one after the other: a pod's IP is patched through the status "
        "subresource and the time is taken from just before the PATCH until the new IP is in the agent's "
        "mirror, and until the direct watch saw it.",
        "",
        report.targets_table(r["targets"]),
        "",
        report.table(
            ("latency, ms", "via tracker to agent mirror", "direct watch", "ratio"),
            [
                ("p50", t["p50_ms"], d["p50_ms"], r["p50_ratio"]),
                ("p99", t["p99_ms"], d["p99_ms"], r["p99_ratio"]),
                ("max", t["max_ms"], d["max_ms"], ""),
                ("mean", t["mean_ms"], d["mean_ms"], ""),
            ],
        ),
        "",
        f"The tracker hop adds {r['extra_ms']['p50']} ms at p50 and {r['extra_ms']['p99']} ms at p99 "
        "(per-sample difference). The Go reference reported an average of 643 ms at 10k pods.",
    ]
    if report.missed(r):
        lines += [
            "",
            "### Where the time goes / what remains",
            "",
            "Both paths share the API server's own latency (PATCH, etcd write, watch cache, watch event); the "
            "tracker path adds a second hop: the tracker's informer decodes the JSON watch event "
            "(kubernetes_asyncio), converts it to a record, the index commits at the end of the event-loop "
            "turn, the fan-out encodes it once and the gRPC stream delivers it to the agent, which decodes it "
            "into its mirror. Each step is a few hundred microseconds of Python; on this shared 2-core machine "
            "the tail is set by scheduling: five busy processes (API server, etcd, tracker, agent, direct "
            "watcher) and other sessions' tests compete for two cores, so any of them waiting for a core adds "
            "its time slice to the sample.",
        ]
    return "\n".join(lines)
