"""Scenario 5: resume after a 10 s disconnect during churn, versus a full snapshot.

An index of 100k pods (the scenario 1 shape) behind a ``TrackerServer``; 100 pod label changes per
second keep arriving the whole time. The real agent client (``TrackerClient`` + ``Mirror``, in its
own process) connects fresh (full snapshot: seconds until applied, bytes the server sent on the
connection), closes its stream for 10 s, then reconnects with its resume point: seconds until its
mirror reached the revision the index had at reconnect, and the bytes sent on the new connection
(``ss -ti`` ``bytes_sent``, so framing included; it also counts the few live changes that arrive
before the measurement, so it errs high). Three rounds, medians.

Target: resume costs < 1% of a snapshot (bytes and time).
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
    runs: dict[str, list[float]] = {k: [] for k in ("full_s", "full_bytes", "resume_s", "resume_bytes", "missed")}
    try:
        for rnd in range(rounds):
            await asyncio.sleep(0.5)  # the previous connection is closed on both sides
            full = await worker.ask("connect", limit=300)
            runs["full_bytes"].append(report.socket_bytes_sent(server.bound_port))
            runs["full_s"].append(full["seconds"])
            stopped = await worker.ask("stop")
            await asyncio.sleep(disconnect_s)
            goal = index.revision
            resumed = await worker.ask(f"resume {goal}", limit=300)
            runs["resume_bytes"].append(report.socket_bytes_sent(server.bound_port))
            runs["resume_s"].append(resumed["seconds"])
            runs["missed"].append(goal - stopped["revision"])
            log.info("resume round %d: %s", rnd, {k: v[-1] for k, v in runs.items()})
    finally:
        churn.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await churn
        await worker.close()
        await server.stop(0)
    out: dict[str, Any] = {**shape, "rounds": rounds, "disconnect_s": disconnect_s, "churn_per_s": CHURN_PER_SECOND}
    for key, values in runs.items():
        out[key] = report.spread(values, 3 if key.endswith("_s") else 0)
    out["bytes_ratio"] = report.spread(
        [r / f for r, f in zip(runs["resume_bytes"], runs["full_bytes"], strict=True)], 5
    )
    out["time_ratio"] = report.spread([r / f for r, f in zip(runs["resume_s"], runs["full_s"], strict=True)], 5)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    out = asyncio.run(_measure(QUICK_SHAPE if quick else SHAPE, 1 if quick else 3, 1.0 if quick else 10.0))
    b, t = out["bytes_ratio"]["median"], out["time_ratio"]["median"]
    out["targets"] = [
        report.target("resume bytes / full snapshot bytes", "< 1%", round(b * 100, 3), b < TARGET, "%"),
        report.target("resume time / full snapshot time", "< 1%", round(t * 100, 3), t < TARGET, "%"),
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
            ],
        ),
    ]
    if report.missed(r):
        lines += [
            "",
            "### Where the time goes / what remains",
            "",
            "A resume sends every missed change in full (a pod change carries the whole pod record, ~250 B, "
            "exactly what the pod costs in a snapshot), so the byte ratio is about missed changes / objects: "
            f"{med('missed')} changes against {r['pods']:,} pods is ~1% by construction, plus HTTP/2 framing "
            "of the small DELTAs. Collapsing repeated changes of one object would not help here (churn over "
            "100k pods rarely hits a pod twice in 10 s); getting well under 1% needs field-level deltas in "
            "the protocol (a label change sending only the labels) — a wire format change, not done. The "
            "time of a resume is a new connection, the server encoding the missed changes from its change log "
            "(~5-11 ms for 1,000 changes in-process, more when every change has a new label map) and the agent "
            "client decoding and applying them (~15-20 µs each); a full snapshot costs the same per object "
            "without the fixed connection cost, so the time ratio is the changes/objects ratio plus that "
            "fixed part (a few ms against a ~1.5 s snapshot). Encoded DELTAs are not kept in the change log "
            "(it would cost ~250 B per logged change, ~25 MB for the default 100k-change log).",
        ]
    return "\n".join(lines)
