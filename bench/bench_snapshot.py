"""Scenario 2: snapshot to a new watcher over the real server, uncompressed and with gRPC gzip.

One index of 100k pods (the scenario 1 shape) served by two ``TrackerServer``s side by side: one
plain, one with gRPC's gzip message compression (``grpc.default_compression_algorithm``). Each run
changes one pod first and the snapshot cache TTL is 0, so every watcher pays a fresh encoding (cold).
Bytes are what the kernel sent on the server's socket (``ss -ti`` ``bytes_sent``: HTTP/2 and gRPC
framing included), per pod. Clients are separate processes: a raw client (bytes read, headers
parsed: the server's and the wire's share) and the real agent client decoding into its mirror.

Targets: < 2 s; <= 250 B/pod raw; <= 60 B/pod compressed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from bench import report
from bench.bench_index import QUICK_SHAPE, SHAPE, _load, generate
from bench.workers import Worker
from kube_ip_tracker.index import Index
from kube_ip_tracker.server import TrackerServer

log = logging.getLogger(__name__)

GZIP = 2  # grpc_compression_algorithm GRPC_COMPRESS_GZIP
SECONDS_TARGET = 2.0
RAW_TARGET = 250.0
COMPRESSED_TARGET = 60.0


async def _raw_watch(port: int) -> tuple[float, int]:
    worker = await Worker.start("raw", f"127.0.0.1:{port}", "1")
    try:
        reply = await worker.read(limit=300)
        return reply["snapshot_s"][0], report.socket_bytes_sent(port)
    finally:
        await worker.close()


async def _agent_watch(port: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds of the agent client until its mirror holds the snapshot."""
    worker = await Worker.start("agent", f"127.0.0.1:{port}")
    try:
        reply = await worker.ask("connect", limit=300)
        return reply["seconds"], reply["cpu_seconds"]
    finally:
        await worker.close()


async def _measure(shape: dict[str, int], repeats: int) -> dict[str, Any]:
    index = Index(log_size=100_000)
    _load(index, generate(**shape))
    servers = {
        "plain": TrackerServer(index, "127.0.0.1:0", snapshot_cache_ttl=0.0),
        "gzip": TrackerServer(
            index, "127.0.0.1:0", snapshot_cache_ttl=0.0, extra_options=[("grpc.default_compression_algorithm", GZIP)]
        ),
    }
    for s in servers.values():
        await s.start()
    pod = next(index.pods())
    runs: dict[str, list[float]] = {
        f"{m}_{k}": [] for m in servers for k in ("raw_s", "bytes", "agent_s", "agent_cpu_s")
    }
    try:
        n = 0
        for rep in range(repeats):
            for mode in servers if rep % 2 == 0 else reversed(list(servers)):
                for kind in ("raw", "agent"):
                    n += 1
                    index.upsert(replace(pod, labels={**pod.labels, "bench": str(n)}))
                    index.flush()
                    port = servers[mode].bound_port
                    if kind == "raw":
                        seconds, sent = await _raw_watch(port)
                        runs[f"{mode}_raw_s"].append(seconds)
                        runs[f"{mode}_bytes"].append(sent)
                    else:
                        seconds, cpu = await _agent_watch(port)
                        runs[f"{mode}_agent_s"].append(seconds)
                        runs[f"{mode}_agent_cpu_s"].append(cpu)
            log.info("snapshot rep %d: %s", rep, {k: v[-1] for k, v in runs.items()})
    finally:
        for s in servers.values():
            await s.stop(0)
    pods = shape["pods"]
    out: dict[str, Any] = {**shape, "repeats": repeats, "objects": index.snapshot().object_count()}
    for key, values in runs.items():
        out[key] = report.spread(values, 3 if key.endswith("_s") else 0)
    out["plain_bytes_per_pod"] = round(out["plain_bytes"]["median"] / pods, 1)
    out["gzip_bytes_per_pod"] = round(out["gzip_bytes"]["median"] / pods, 1)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    out = asyncio.run(_measure(QUICK_SHAPE if quick else SHAPE, 1 if quick else 3))
    raw_s = out["plain_raw_s"]["median"]
    agent_s = out["plain_agent_s"]["median"]
    out["targets"] = [
        report.target(
            f"snapshot of {out['pods']:,} pods delivered to a new watcher", "< 2 s", raw_s, raw_s < SECONDS_TARGET, "s"
        ),
        report.target(
            f"snapshot of {out['pods']:,} pods applied by the agent client",
            "< 2 s",
            agent_s,
            agent_s < SECONDS_TARGET,
            "s",
        ),
        report.target(
            "bytes on the wire per pod, uncompressed",
            "<= 250 B",
            out["plain_bytes_per_pod"],
            out["plain_bytes_per_pod"] <= RAW_TARGET,
            "B/pod",
        ),
        report.target(
            "bytes on the wire per pod, gRPC gzip",
            "<= 60 B",
            out["gzip_bytes_per_pod"],
            out["gzip_bytes_per_pod"] <= COMPRESSED_TARGET,
            "B/pod",
        ),
    ]
    return out


def markdown(results: dict[str, Any]) -> str:
    r = results

    def med(key: str) -> str:
        return f"{r[key]['median']:.2f}" if key in r else "n/a"

    lines = [
        "## 2. Snapshot to a new watcher",
        "",
        f"An index of {r['pods']:,} pods ({r['objects']:,} objects with namespaces, nodes and cluster statuses) "
        "served by two `TrackerServer`s at once, one plain and one with gRPC gzip compression. Before every "
        "connect one pod changes and the snapshot cache TTL is 0, so each watcher waits for a fresh encoding. "
        "Seconds: from the Watch call to END_OF_SNAPSHOT in the client process — a raw client (reads the bytes, "
        "parses headers only) and the real agent client (`TrackerClient` decoding into its `Mirror`). Bytes: "
        f"`bytes_sent` of the server's TCP socket (`ss -ti`), HTTP/2 and gRPC framing included. {r['repeats']} "
        "runs per case, alternating, medians.",
        "",
        report.targets_table(r["targets"]),
        "",
        report.table(
            ("figure (median)", "uncompressed", "gRPC gzip"),
            [
                ("seconds to a raw client", med("plain_raw_s"), med("gzip_raw_s")),
                ("seconds to the agent client (decoded into its mirror)", med("plain_agent_s"), med("gzip_agent_s")),
                ("CPU seconds the agent client process used for it", med("plain_agent_cpu_s"), med("gzip_agent_cpu_s")),
                ("bytes on the wire", f"{r['plain_bytes']['median']:,.0f}", f"{r['gzip_bytes']['median']:,.0f}"),
                ("bytes on the wire per pod", r["plain_bytes_per_pod"], r["gzip_bytes_per_pod"]),
            ],
        ),
        "",
        "Typha's compressed snapshot is about 52 B per key with zstd; gRPC offers gzip and deflate only.",
    ]
    if report.missed(r):
        lines += [
            "",
            "### Where the time goes / what remains",
            "",
            "Delivery: the server encodes the snapshot once per revision in 500-object chunks while the first "
            "chunks already stream (pod upserts are serialized by hand, `wire.encode_pod_change`, ~35% cheaper "
            "than building upb messages), and a snapshot encoded once is shared by every watcher connecting "
            "within the cache TTL (5 s by default), so the cold figure is the worst case for one new watcher. "
            "Applying: the agent client's time is its own decoding. A py-spy profile of `TrackerClient` taking "
            "a 100k-pod snapshot (development run, 2026-11-30) put ~69% of its samples in decoding protobuf "
            "`Change`s into records (`wire.pod_from_proto`; half of it reading upb label maps through the "
            "generic `items()` view). That decode was then made ~20% cheaper per pod (labels read by key, port "
            "tuples shared between pods); a second profile put ~63% in decoding, ~17% in the mirror adding "
            "records and IP claims and ~8% in the mirror's snapshot swap (diffing old and new state for "
            "events). What remains is per-object Python work in the client (~15-20 µs per pod): decoding "
            "straight from the wire bytes, or applying a first snapshot without building the event "
            "diff when the mirror was empty, would be the next steps (agent client code). Compare the agent's "
            "wall-clock and CPU seconds: when the machine is loaded (see the load average below) the client "
            "process gets a fraction of a core and its wall-clock time grows accordingly.",
        ]
    return "\n".join(lines)
