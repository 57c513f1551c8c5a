"""Scenario 5: resume after a 10 s disconnect during churn, versus a full snapshot.

An index of 100k pods (the scenario 1 shape) behind a ``TrackerServer``; 100 pod label changes per
second keep arriving the whole time. The real agent client (``TrackerClient`` + ``Mirror``, in its
own process) connects fresh (full snapshot: seconds until applied, bytes the server sent on the
connection), closes its stream for 10 s, then reconnects with its resume point: seconds until its
mirror reached the revision the index had at reconnect, and the bytes sent on the new connection
(``ss -ti`` ``bytes_sent``, so framing included; it also counts the few live changes that arrive
before the measurement, so it errs high). Three rounds, medians.

Server CPU of a resume: user+system seconds of the server process (gRPC threads included) from the
reconnect until the mirror is up to date, minus the same process's CPU over an equally long stretch of
churn alone just before it (the churn keeps running during the resume).

Targets: resume bytes < 1% of a snapshot's; resume time / snapshot time <= 1.2 x (missed changes /
objects), i.e. a resume costs what its changes cost in a snapshot plus at most 20%; and a resume costs
the server no encoding: <= 1 ms of server CPU per 1,000 missed changes (the change log keeps them framed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import replace
from typing import Any

from bench import report
from bench.bench_index import QUICK_SHAPE, SHAPE, _load, generate
from bench.workers import Worker
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import PodRecord
from kube_ip_tracker.server import TrackerServer

log = logging.getLogger(__name__)

CHURN_PER_SECOND = 100
TARGET = 0.01
TIME_FACTOR = 1.2
CPU_MS_PER_1000 = 1.0


async def _churn(index: Index, pods: list[PodRecord], rate: float) -> None:
    """``rate`` real pod changes per second, on schedule (no drift)."""
    rng = random.Random(5)
    started = time.monotonic()
    n = 0
    while True:
        n += 1
        p = pods[rng.randrange(len(pods))]
        index.upsert(replace(p, labels={**p.labels, "churn": str(n)}))
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))


async def _measure(shape: dict[str, int], rounds: int, disconnect_s: float) -> dict[str, Any]:
    index = Index(log_size=100_000)
    _load(index, generate(**shape))
    pods = list(index.pods())
    server = TrackerServer(index, "127.0.0.1:0")
    await server.start()
    churn = asyncio.create_task(_churn(index, pods, CHURN_PER_SECOND))
    worker = await Worker.start("agent", f"127.0.0.1:{server.bound_port}")
    keys = (
        "full_s",
        "full_bytes",
        "resume_s",
        "resume_bytes",
        "missed",
        "resume_cpu_ms",
        "churn_cpu_ms",
        "reconnect_cpu_ms",
        "reconnect_missed",
    )
    runs: dict[str, list[float]] = {k: [] for k in keys}
    try:
        for rnd in range(rounds):
            await asyncio.sleep(0.5)  # the previous connection is closed on both sides
            full = await worker.ask("connect", limit=300)
            runs["full_bytes"].append(report.socket_bytes_sent(server.bound_port))
            runs["full_s"].append(full["seconds"])
            stopped = await worker.ask("stop")
            await asyncio.sleep(disconnect_s - 1.0)
            cpu0, wall0 = report.cpu_seconds(), time.monotonic()
            await asyncio.sleep(1.0)  # churn alone: the server's CPU without a watcher
            churn_cpu_per_s = (report.cpu_seconds() - cpu0) / (time.monotonic() - wall0)
            goal = index.revision
            cpu0, wall0 = report.cpu_seconds(), time.monotonic()
            resumed = await worker.ask(f"resume {goal}", limit=300)
            cpu, wall = report.cpu_seconds() - cpu0, time.monotonic() - wall0
            runs["resume_cpu_ms"].append(max(0.0, cpu - churn_cpu_per_s * wall) * 1e3)
            runs["churn_cpu_ms"].append(churn_cpu_per_s * wall * 1e3)
            runs["resume_bytes"].append(report.socket_bytes_sent(server.bound_port))
            runs["resume_s"].append(resumed["seconds"])
            runs["missed"].append(goal - stopped["revision"])
            # The fixed part: a resume right after a disconnect (the churn's few changes and one of ours
            # missed), so what remains is the new connection and the call.
            stopped = await worker.ask("stop")
            p = pods[rnd]
            index.upsert(replace(p, labels={**p.labels, "reconnect": str(rnd)}))
            goal = index.revision
            cpu0, wall0 = report.cpu_seconds(), time.monotonic()
            await worker.ask(f"resume {goal}", limit=300)
            cpu, wall = report.cpu_seconds() - cpu0, time.monotonic() - wall0
            runs["reconnect_cpu_ms"].append(max(0.0, cpu - churn_cpu_per_s * wall) * 1e3)
            runs["reconnect_missed"].append(goal - stopped["revision"])
            log.info("resume round %d: %s", rnd, {k: v[-1] for k, v in runs.items()})
    finally:
        churn.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await churn
        await worker.close()
        await server.stop(0)
    out: dict[str, Any] = {**shape, "rounds": rounds, "disconnect_s": disconnect_s, "churn_per_s": CHURN_PER_SECOND}
    for key, values in runs.items():
        out[key] = report.spread(values, 3 if key.endswith(("_s", "_ms")) else 0)
    out["objects"] = index.snapshot().object_count()
    out["bytes_ratio"] = report.spread(
        [r / f for r, f in zip(runs["resume_bytes"], runs["full_bytes"], strict=True)], 5
    )
    out["time_ratio"] = report.spread([r / f for r, f in zip(runs["resume_s"], runs["full_s"], strict=True)], 5)
    out["cpu_ms_per_1000"] = report.spread(
        [c / m * 1000 for c, m in zip(runs["resume_cpu_ms"], runs["missed"], strict=True) if m], 3
    )
    beyond = zip(runs["resume_cpu_ms"], runs["reconnect_cpu_ms"], runs["missed"], runs["reconnect_missed"], strict=True)
    # What each 1,000 missed changes add to the fixed part (the connection and the call).
    out["beyond_reconnect_ms_per_1000"] = report.spread(
        [(c - rc) / (m - rm) * 1000 for c, rc, m, rm in beyond if m > rm], 3
    )
    return out


def run(quick: bool = False) -> dict[str, Any]:
    out = asyncio.run(_measure(QUICK_SHAPE if quick else SHAPE, 1 if quick else 3, 1.5 if quick else 10.0))
    b, t = out["bytes_ratio"]["median"], out["time_ratio"]["median"]
    share = out["missed"]["median"] / out["objects"]
    cpu = out["cpu_ms_per_1000"]["median"] if out["cpu_ms_per_1000"]["runs"] else float("nan")
    out["targets"] = [
        report.target("resume bytes / full snapshot bytes", "< 1%", round(b * 100, 3), b < TARGET, "%"),
        report.target(
            "resume time / full snapshot time",
            f"<= 1.2 x missed/objects ({TIME_FACTOR * share * 100:.3f}%)",
            round(t * 100, 3),
            t <= TIME_FACTOR * share,
            "%",
        ),
        report.target(
            "resume server CPU per 1,000 missed changes", "<= 1 ms", round(cpu, 3), cpu <= CPU_MS_PER_1000, "ms"
        ),
    ]
    return out


def markdown(results: dict[str, Any]) -> str:
    r = results

    def med(key: str, fmt: str = ",.0f") -> str:
        return format(r[key]["median"], fmt)

    lines = [
        "## 5. Resume after a disconnect during churn",
        "",
        f"{r['pods']:,} pods; {r['churn_per_s']} pod changes per second all along. The real agent client (own "
        f"process) takes a full snapshot, disconnects for {r['disconnect_s']:.0f} s, and resumes from its "
        "(epoch, revision): the tracker answers END_OF_SNAPSHOT at that revision and the missed changes from "
        "its change log. Bytes are what the server's socket sent on each connection (`ss -ti`); time is until "
        f"the mirror is up to date. {r['rounds']} rounds, medians.",
        "",
        report.targets_table(r["targets"]),
        "",
        report.table(
            ("figure (median)", "full snapshot", "resume"),
            [
                ("seconds", med("full_s", ".3f"), med("resume_s", ".3f")),
                ("bytes on the wire", med("full_bytes"), med("resume_bytes")),
                ("changes missed while disconnected", "", med("missed")),
                ("objects in the index", f"{r['objects']:,}", ""),
                ("server CPU of the resume, ms (churn alone subtracted)", "", med("resume_cpu_ms", ".2f")),
                ("server CPU of the churn over the same time, ms", "", med("churn_cpu_ms", ".2f")),
                (
                    f"server CPU of a resume right after the disconnect ({med('reconnect_missed')} changes "
                    "missed: the connection and the call), ms",
                    "",
                    med("reconnect_cpu_ms", ".2f"),
                ),
                ("server CPU per 1,000 missed changes beyond that, ms", "", med("beyond_reconnect_ms_per_1000", ".2f")),
            ],
        ),
    ]
    if report.missed(r):
        per_change_us = r["resume_s"]["median"] / r["missed"]["median"] * 1e6
        per_object_us = r["full_s"]["median"] / r["objects"] * 1e6
        lines += [
            "",
            "### Where the time goes / what remains",
            "",
            "**Bytes.** A resume sends every missed change in full (a pod change carries the whole pod record, "
            "~250 B, exactly what the pod costs in a snapshot), so the byte ratio is about missed changes / "
            f"objects: {med('missed')} changes against {r['pods']:,} pods is "
            f"{r['missed']['median'] / r['pods']:.1%} by construction, plus HTTP/2 framing. Getting well under 1% "
            "needs field-level deltas in the protocol (a label change sending only the labels), a wire format "
            "change, not done.",
            "",
            "**Server CPU.** A resume encodes no change: the change log keeps every committed change framed, and "
            "an unfiltered watcher's missed range is one slice of the log's run of framed changes, cut into DELTAs "
            "of at most 1,000 changes by revision arithmetic and byte sums and joined once (a filtered watcher's "
            "range goes through the one filter implementation). What a resume costs the server is then gRPC's: "
            f"a resume right after the disconnect costs {med('reconnect_cpu_ms', '.2f')} ms (this run), the new "
            "connection and the call, and each 1,000 missed changes add "
            f"{med('beyond_reconnect_ms_per_1000', '.2f')} ms in this run (differences against the churn's own CPU, "
            "noisy under load). A profile with the churn stopped (scratch harness on a 20,000-pod index, the real agent client in its "
            "own process, 15-20 resumes per size, 2026-12-02 18:42-18:52 UTC, load average 3-13) puts a 1-change "
            "resume at 1.7-1.9 ms of server CPU: ~1.7 ms on the event loop's thread, nearly all in gRPC's "
            "Cython/C-core handling of the new connection and call (the Watch handler's own Python, admission to "
            "END_OF_SNAPSHOT, is ~0.3 ms by cProfile), and ~0.6 ms on gRPC's event_engine thread (per-thread CPU "
            "from /proc/self/task/*/schedstat). Each 1,000 missed changes added ~1.2 ms before the run slicing "
            "and add ~0.6 ms after it (~0.45 ms in `context.write`, ~0.15 ms joining). So a resume of N missed "
            "changes costs about 1.8 + 0.6 x N / 1,000 ms: <= 1 ms per 1,000 holds only from ~4,500 missed "
            "changes on, and the missed changes of a 10 s disconnect at 100/s are fewer. The target is missed by "
            "the connection that a reconnect makes, not by encoding.",
            "",
            f"**Time.** The server's part of a resume is a few ms of its {r['resume_s']['median'] * 1e3:.0f} ms; "
            "the rest is the agent client applying the changes: "
            f"{per_change_us:.0f} µs per missed change here, against {per_object_us:.0f} µs per object for the "
            "snapshot, so the time ratio is about missed/objects x "
            f"{per_change_us / per_object_us:.1f}. A cProfile of the client side (TrackerClient + AgentStore in "
            "one process, 10 resumes of 2,000 changes, 2026-12-02 19:00 UTC, load average ~7) puts 72% of it in "
            "`AgentStore.apply_delta` (per change: `_set_pod`, its policy-object lookups and IP claims) and 28% in "
            "decoding each change into a `PodRecord` (`wire.pod_from_proto`); a snapshot is decoded straight from "
            "the wire into store entries (`wire_pods.PodDecoder`). Meeting 1.2 x needs the delta path to do the "
            "same (agent store work, not done). Under a high load average (see the run line) the churn task falls "
            "behind and catches up, so more changes are missed than 10 s x 100/s, snapshots take many times "
            "longer, and the server CPU of a resume (a difference against the churn's own CPU over the same time) "
            "is noisy: compare the rounds in bench/results/resume.json before reading the medians.",
        ]
    return "\n".join(lines)
