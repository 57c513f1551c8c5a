"""The change log's run of framed changes and its cursor lookup, against what each entry holds."""

from __future__ import annotations

import random

from kube_ip_tracker.index import Index
from kube_ip_tracker.server.changelog import ChangeLog
from kube_ip_tracker.server.encode import MAX_CHANGES_PER_MESSAGE, FilterGroup, WatchFilter

from .helpers import WR, pod


def _committed(index: Index, log: ChangeLog, rng: random.Random, batches: int) -> None:
    for _ in range(batches):
        for _ in range(rng.randrange(1, 6)):
            index.upsert(pod(f"p{rng.randrange(40)}", f"10.0.0.{rng.randrange(200)}", ts=rng.randrange(1000)))
        batch = index.flush()
        assert batch is not None
        log.append(batch)
        log.trim()


def test_run_slices_and_cursor_lookup_match_the_entries_through_trims() -> None:
    rng = random.Random(3)
    index = Index(log_size=60)  # the log follows the index's: old entries go, the run is compacted
    log = ChangeLog(index)
    for _ in range(30):
        _committed(index, log, rng, rng.randrange(1, 8))
        first, head = log.first_revision, index.committed_revision
        logged = sum(len(e.framed) for e in log.entries)
        assert len(log._run) <= 2 * logged + 1  # trimmed changes do not pile up in the run
        for revision in range(first - 1, head + 1):
            framed = [
                f for e in log.entries for c, f in zip(e.batch.changes, e.framed, strict=True) if c.revision > revision
            ]
            assert log.framed_after(revision) == framed
            seq = next((e.seq for e in log.entries if e.batch.revision > revision), log.next_seq)
            assert log.seq_after(revision) == seq
        assert log.seq_after(first - 2) is None
    assert log.first_revision > 1  # entries were trimmed


def test_an_unfiltered_catch_up_is_the_run_in_deltas_within_the_limits() -> None:
    index = Index(log_size=5000)
    log = ChangeLog(index)
    start = index.committed_revision
    for i in range(2500):
        index.upsert(pod(f"p{i}", f"10.1.{i // 250}.{i % 250}"))
        if i % 7 == 6 or i == 2499:
            log.append(index.flush())  # type: ignore[arg-type]
    head = index.committed_revision
    messages = FilterGroup(WatchFilter(), index).encode_run(start + 1, log.framed_after(start), index.epoch, head)
    assert len(messages) == 3
    revision = start
    names = []
    for m in messages:
        msg = WR.FromString(m.data)
        assert (msg.kind, msg.first_revision, msg.revision) == (WR.DELTA, m.first_revision, m.revision)
        assert msg.first_revision == revision + 1 and len(msg.changes) <= MAX_CHANGES_PER_MESSAGE
        revision = msg.revision
        names += [c.pod.name for c in msg.changes if c.HasField("pod")]
    assert revision == head and names == [f"p{i}" for i in range(2500)]
