"""Scenario 3: fan-out of a burst of pod changes to 1,000 concurrent watchers.

The tracker (``TrackerServer`` on a real ``Index``) and a baseline (a bare ``grpc.aio`` server that
streams the same pre-serialized DELTA bytes) serve the same client processes, alternately, in the
same run. Watchers are Watch streams on their own channels (own TCP connections), spread over a few
worker processes (``bench/workers.py`` raw mode: bytes read, only the header parsed).

A burst is 1,000 pod label changes applied as 100 event-loop turns of 10 changes (as informer events
arrive), so each watcher gets 100 DELTA messages. Latency of a message = receive time in the client
minus the time its changes entered the server (``time.monotonic``, one clock for all processes).
Server CPU = user+system seconds of the server process (gRPC threads included) from the burst's first
change until every watcher received the last message.

Targets: p99 < 250 ms; tracker/baseline CPU ratio <= 1.0.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import logging
import resource
import statistics
import time
from dataclasses import replace
from typing import Any

import grpc
import grpc.aio

from bench import report
from bench.bench_index import _load, generate
from bench.workers import Worker
from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import PodRecord
from kube_ip_tracker.server import TrackerServer
from kube_ip_tracker.server.encode import chunk_deltas

log = logging.getLogger(__name__)

# Burst shapes: all changes committed in one event-loop turn, or trickling in as turns of 10.
BURSTS = [("one batch", 1000), ("turns of 10", 10)]
FULL = {"watchers": 1000, "workers": 4, "pods": 200, "changes": 1000, "bursts": BURSTS, "repeats": 3}
QUICK = {
    "watchers": 20,
    "workers": 2,
    "pods": 50,
    "changes": 100,
    "bursts": [("one batch", 100), ("turns of 10", 10)],
    "repeats": 1,
}
P99_TARGET_MS = 250.0
RATIO_TARGET = 1.0


class BaselineServer:
    """A bare grpc.aio server: every Watch stream gets END_OF_SNAPSHOT, then whatever is broadcast."""

    def __init__(self, end_of_snapshot: bytes) -> None:
        self.end_of_snapshot = end_of_snapshot
        self.queues: set[asyncio.Queue[bytes | None]] = set()
        self.server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "kubeiptracker.v1.Tracker",
            {"Watch": grpc.unary_stream_rpc_method_handler(self._watch)},  # bytes in, bytes out
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.bound_port = self.server.add_insecure_port("127.0.0.1:0")

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        for q in self.queues:
            q.put_nowait(None)
        await self.server.stop(0)

    def broadcast(self, data: bytes) -> None:
        for q in self.queues:
            q.put_nowait(data)

    async def _watch(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.queues.add(queue)
        try:
            await context.write(self.end_of_snapshot)
            while (data := await queue.get()) is not None:
                await context.write(data)
        finally:
            self.queues.discard(queue)


def _bursts(pods: list[PodRecord], changes: int, tag: str) -> list[PodRecord]:
    """``changes`` label updates cycling over ``pods`` (each one a real change)."""
    out = []
    for i in range(changes):
        p = pods[i % len(pods)]
        out.append(replace(p, labels={**p.labels, "burst": f"{tag}-{i}"}))
    return out


def _baseline_messages(
    records: list, bursts: list[list[PodRecord]], per_turn: list[int]
) -> tuple[bytes, list[list[tuple[int, bytes]]]]:
    """The tracker's own DELTA bytes for each burst (encoded by the server's functions on a scratch index)."""
    index = Index(log_size=200_000)
    _load(index, iter(records))
    eos = wire.encode_response(pb.WatchResponse.END_OF_SNAPSHOT, index.epoch, index.revision)
    out = []
    for burst, n in zip(bursts, per_turn, strict=True):
        messages = []
        for start in range(0, len(burst), n):
            for r in burst[start : start + n]:
                index.upsert(r)
            batch = index.flush()
            assert batch is not None
            items = [(c.revision, wire.frame_change(wire.encode_change(c.record, c.deleted))) for c in batch.changes]
            messages += [(batch.revision, m.data) for m in chunk_deltas(index.epoch, items, batch.revision)]
        out.append(messages)
    return eos, out


async def _connect(port: int, watchers: int, workers: int) -> tuple[list[Worker], list[float]]:
    per = [watchers // workers + (1 if k < watchers % workers else 0) for k in range(workers)]
    procs = await asyncio.gather(*(Worker.start("raw", f"127.0.0.1:{port}", str(n)) for n in per))
    replies = await asyncio.gather(*(w.read(limit=300) for w in procs))
    return list(procs), [s for r in replies for s in r["snapshot_s"]]


async def _burst(
    workers: list[Worker], emit: Any, turns: list[Any], last_revision: int
) -> tuple[list[float], float, float, float, int, int]:
    """Apply the turns, wait for every watcher to get ``last_revision``.

    Returns latencies (s, one per turn per watcher), CPU s, the part of it spent in ``emit`` (committing:
    the tracker's index, framing and DELTA encoding; the baseline's queueing), wall s, turn deliveries and
    messages received (fewer than turn deliveries when the tracker merged DELTAs of a watcher that fell behind).
    """
    sent: dict[int, float] = {}
    gc.collect()
    cpu0, wall0 = report.cpu_seconds(), time.monotonic()
    commit = 0.0
    for turn in turns:
        started, thread0 = time.monotonic(), time.thread_time()
        sent[emit(turn)] = started
        commit += time.thread_time() - thread0  # emit runs on the event loop's thread, synchronously
        await asyncio.sleep(0)
    replies = await asyncio.gather(*(w.ask(f"until {last_revision}", limit=600) for w in workers))
    cpu, wall = report.cpu_seconds() - cpu0, time.monotonic() - wall0
    revisions = sorted(sent)
    latencies = []
    messages = 0
    for reply in replies:
        for stream in reply["deltas"]:
            for first, revision, received in stream:
                covered = revisions[bisect.bisect_left(revisions, first) : bisect.bisect_right(revisions, revision)]
                latencies += [received - sent[r] for r in covered]
                messages += 1 if covered else 0
    return latencies, cpu, commit, wall, len(latencies), messages


def _figures(
    latencies: list[float], cpu: float, commit: float, wall: float, delivered: int, messages: int, changes: int
) -> dict[str, float]:
    return {
        "p50_ms": report.percentile(latencies, 0.5) * 1e3,
        "p99_ms": report.percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
        "cpu_s": cpu,
        "commit_cpu_s": commit,
        "delivery_cpu_s": cpu - commit,
        "wall_s": wall,
        "messages_written": messages,
        "cpu_s_per_1000_batch_deliveries": cpu / delivered * 1000,
        "cpu_us_per_change_delivery": cpu / changes * 1e6,
        "load_1m": report.load_average()[0],
    }


async def _serve(mode: str, records: list, bursts: list[list[PodRecord]], shape: dict[str, Any]) -> list[dict]:
    """One server (tracker or baseline), the watchers connected once, then every burst shape in turn."""
    per_turn = [n for _, n in shape["bursts"]]
    watchers = shape["watchers"]
    if mode == "tracker":
        index = Index(log_size=200_000)
        _load(index, iter(records))
        server: Any = TrackerServer(index, "127.0.0.1:0", max_watchers=watchers + 10)

        def emit(turn: list[PodRecord]) -> int:
            for r in turn:
                index.upsert(r)
            index.flush()
            return index.committed_revision

        plans = []
        revision = index.revision
        for burst, n in zip(bursts, per_turn, strict=True):
            revision += len(burst)
            plans.append(([burst[i : i + n] for i in range(0, len(burst), n)], revision))
    else:
        eos, messages = _baseline_messages(records, bursts, per_turn)
        server = BaselineServer(eos)

        def emit(turn: tuple[int, bytes]) -> int:
            server.broadcast(turn[1])
            return turn[0]

        plans = [(m, m[-1][0]) for m in messages]
    await server.start()
    workers: list[Worker] = []
    out = []
    try:
        workers, snapshot_s = await _connect(server.bound_port, watchers, shape["workers"])
        for turns, last in plans:
            await asyncio.sleep(0.5)  # let the previous burst's writes and acks settle
            latencies, cpu, commit, wall, delivered, messages = await _burst(workers, emit, turns, last)
            if delivered != watchers * len(turns):
                raise RuntimeError(f"{mode}: {delivered} batches delivered, expected {watchers * len(turns)}")
            figures = _figures(latencies, cpu, commit, wall, delivered, messages, watchers * shape["changes"])
            out.append({**figures, "snapshot_s": statistics.median(snapshot_s)})
    finally:
        for w in workers:
            await w.close()
        await (server.stop(0) if mode == "tracker" else server.stop())
    return out


async def _measure(shape: dict[str, Any]) -> dict[str, Any]:
    records = list(generate(shape["pods"], 1, 20, 5))
    pods = [r for r in records if isinstance(r, PodRecord)]
    names = [name for name, _ in shape["bursts"]]
    runs: dict[str, dict[str, list[dict[str, float]]]] = {n: {"tracker": [], "baseline": []} for n in names}
    for rep in range(shape["repeats"]):
        for mode in ("tracker", "baseline") if rep % 2 == 0 else ("baseline", "tracker"):
            bursts = [_bursts(pods, shape["changes"], f"{mode}{rep}{k}") for k in range(len(names))]
            for name, figures in zip(names, await _serve(mode, records, bursts, shape), strict=True):
                runs[name][mode].append(figures)
                log.info("fanout %s, %s, rep %d: %s", name, mode, rep, figures)
    out: dict[str, Any] = {k: v for k, v in shape.items() if k != "bursts"}
    out["bursts"] = []
    for (name, per_turn), by_mode in zip(shape["bursts"], runs.values(), strict=True):
        entry: dict[str, Any] = {
            "name": name,
            "per_turn": per_turn,
            "messages_per_watcher": -(-shape["changes"] // per_turn),
        }
        for mode, rs in by_mode.items():
            entry[mode] = {k: report.spread([r[k] for r in rs]) for k in rs[0]}
        pairs = list(zip(by_mode["tracker"], by_mode["baseline"], strict=True))
        entry["cpu_ratio"] = report.spread([t["cpu_s"] / b["cpu_s"] for t, b in pairs], 2)
        entry["delivery_cpu_ratio"] = report.spread([t["delivery_cpu_s"] / b["delivery_cpu_s"] for t, b in pairs], 2)
        out["bursts"].append(entry)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 server-side connections
    out = asyncio.run(_measure(QUICK if quick else FULL))
    out["targets"] = []
    for b in out["bursts"]:
        p99 = round(b["tracker"]["p99_ms"]["median"], 1)
        ratio = b["cpu_ratio"]["median"]
        out["targets"] += [
            report.target(
                f"delivery p99, {out['watchers']:,} watchers, burst as {b['name']}", "< 250 ms", p99,
                p99 < P99_TARGET_MS, "ms",
            ),
            report.target(
                f"server CPU tracker / bare grpc.aio, burst as {b['name']}", "<= 1.0", ratio, ratio <= RATIO_TARGET,
                "x",
            ),
        ]  # fmt: skip
    return out


def markdown(results: dict[str, Any]) -> str:
    r = results
    lines = [
        "## 3. Fan-out to concurrent watchers",
        "",
        f"{r['watchers']:,} Watch streams, each on its own channel and TCP connection, in {r['workers']} client "
        f"processes (raw clients: bytes read, headers parsed); an index of {r['pods']} pods (small, so that "
        f"{r['watchers']:,} snapshots do not dominate). A burst of {r['changes']:,} pod label changes is applied "
        "two ways: committed in one event-loop turn (one DELTA per watcher), and trickling in as event-loop "
        "turns of 10 changes (one DELTA per turn per watcher). The baseline is a bare `grpc.aio` server (one queue per "
        "stream, nothing else) streaming the very bytes the tracker produced for the same bursts to the same "
        f"client processes; tracker and baseline alternate, {r['repeats']} runs each (medians). Latency: change "
        "applied in the server until the client process read the message. Server CPU: user+system of the "
        "server process, gRPC threads included, from the first change until every watcher has the last.",
        "",
        report.targets_table(r["targets"]),
        "",
    ]
    for b in r["bursts"]:
        t, base = b["tracker"], b["baseline"]

        def row(name: str, key: str, digits: int = 1, t: dict = t, base: dict = base) -> tuple[str, str, str]:
            return (name, f"{t[key]['median']:,.{digits}f}", f"{base[key]['median']:,.{digits}f}")

        deliveries = r["watchers"] * b["messages_per_watcher"]
        lines += [
            f"Burst as {b['name']} ({b['messages_per_watcher']} batch(es) per watcher, {deliveries:,} batch "
            "deliveries; a watcher that fell behind reads the change log from its position and gets the DELTAs "
            "of consecutive batches merged into one message, so the tracker may write fewer messages):",
            "",
            report.table(
                ("figure (median)", "tracker", "bare grpc.aio"),
                [
                    row("p50 latency, ms", "p50_ms"),
                    row("p99 latency, ms", "p99_ms"),
                    row("max latency, ms", "max_ms"),
                    row("server CPU s per burst", "cpu_s", 2),
                    row("of which committing (tracker: index, framing, DELTAs; bare: queueing)", "commit_cpu_s", 3),
                    row("of which delivering (the rest)", "delivery_cpu_s", 2),
                    row("server CPU s per 1,000 batch deliveries", "cpu_s_per_1000_batch_deliveries", 3),
                    row("server CPU µs per change delivered to one watcher", "cpu_us_per_change_delivery", 2),
                    row("messages written to all watchers", "messages_written", 0),
                    row("burst wall time, s", "wall_s", 2),
                    row("snapshot per watcher at connect, s", "snapshot_s", 2),
                ],
            ),
            "",
            f"CPU ratio per run (tracker / baseline): {b['cpu_ratio']['runs']}; delivery only (committing "
            f"taken out of both): {b['delivery_cpu_ratio']['runs']}. The tracker's server process "
            f"was busy {t['cpu_s']['median']:.2f} CPU s of the burst's {t['wall_s']['median']:.2f} s (the "
            "rest is the client processes reading and the transport, on the same cores).",
            "",
        ]
    if report.missed(r):
        one = r["bursts"][0]
        t, base = one["tracker"], one["baseline"]
        lines += [
            "### Where the time goes / what remains",
            "",
            f"**CPU, burst as {one['name']}.** The run splits the server CPU of a burst into committing it (timed "
            "around the commit on the event loop's thread: for the tracker the index applying the 1,000 upserts, "
            "each change framed once and the DELTA joined once; for the bare server queueing bytes made before "
            "the burst) and delivering it. The tracker's committing took "
            f"{t['commit_cpu_s']['median'] * 1e3:.0f} ms of its {t['cpu_s']['median'] * 1e3:.0f} ms; delivering "
            f"took {t['delivery_cpu_s']['median'] * 1e3:.0f} ms against the bare server's "
            f"{base['delivery_cpu_s']['median'] * 1e3:.0f} ms (delivery-only ratio per run "
            f"{one['delivery_cpu_ratio']['runs']}). Of the commit, the index is ~10 µs per upsert (its own "
            "benchmark, section 1) and framing ~6 µs per pod with a new label set (label entries and the "
            "cluster, namespace and node fields are cached now; ~9 µs before). Delivering is one `context.write` "
            "of the same ~250 KB per watcher as the bare server's, after a wake-up and reading the memoised "
            "DELTA from the watcher's log position: in a cProfile of the event loop (this burst alone, quick "
            "shapes with 500 watchers, 2026-12-02 19:04 UTC, load average ~7) the tracker's own delivery code "
            "(`next_delta`, the wait for the next change) took ~6% of the time of its `_write` calls around "
            "`context.write` (the write counters are looked up once per kind now, ~3 µs less per write). The bare "
            "server's bytes exist before the burst, so with the commit counted, <= 1.0x would need the tracker "
            "to deliver for less than a bare grpc.aio stream: the target is missed by the commit first. Delivery "
            f"alone is {one['delivery_cpu_ratio']['median']}x the bare server's at the median "
            f"({one['delivery_cpu_ratio']['min']}-{one['delivery_cpu_ratio']['max']} over the runs), and where "
            "that remainder goes was not found: the profile shows no tracker code of that size, and a scratch run "
            "of this burst with the bare server given the tracker's stream shape (a send task and an overflow "
            "waiter per stream) did not differ from the plain bare server beyond the spread between runs of the "
            "same two servers (0.7x-1.8x, 2026-12-02 19:28 UTC, load average 0.7-3.9); the CPU of one burst is "
            "a fraction of a second on 2 shared cores. The server is busy for only part of the burst (see the "
            "CPU and wall figures).",
            "",
            "**Latency.** Committed as one batch, the burst is 250 MB over loopback to client processes on the "
            "same 2 cores: the latency tail is the clients and the transport moving those bytes, and the bare "
            "server's p99 is of the same order; 1,000 real agents would be on 1,000 machines. Trickling in as "
            "many small batches, a bare server writes watchers x batches messages and its tail grows to seconds; "
            "a tracker watcher sends the change log from its position to the head, the batches committed while "
            "it was writing merged into one message (within the per-message limits), so it writes far fewer "
            "messages, which cuts both CPU and latency. What remains is the per-stream write cost of grpc.aio "
            "(~40 µs of CPU per message here) and sharing 2 cores between the server, the client processes and "
            "other sessions.",
        ]
    return "\n".join(lines).rstrip()
