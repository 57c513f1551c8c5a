"""ClusterSupervisor lifecycle with fake sources, and a real source against an unreachable server."""

from __future__ import annotations

import asyncio

from kube_ip_tracker.kube.reflector import InformerOptions
from kube_ip_tracker.model import ClusterSpec, IndexWriter, Kind
from kube_ip_tracker.sources.kube import ClusterSource
from kube_ip_tracker.sources.status import ClusterState
from kube_ip_tracker.sources.supervisor import ClusterSupervisor
from kube_ip_tracker.testing.clusters import refusing_port
from kube_ip_tracker.testing.polling import eventually

from .recording import RecordingWriter


class FakeSource:
    """Runs until cancelled; counts starts and cancellations; synced on demand."""

    events: list[tuple[str, str]] = []

    def __init__(self, spec: ClusterSpec, writer: IndexWriter, options: InformerOptions, synced: bool) -> None:
        self.spec = spec
        self.state = ClusterState(spec.cluster_id, writer, synced=synced)

    @property
    def synced(self) -> bool:
        return self.state.synced

    async def run(self) -> None:
        FakeSource.events.append(("start", self.spec.cluster_id))
        try:
            await asyncio.Event().wait()
        finally:
            FakeSource.events.append(("stop", self.spec.cluster_id))


def supervisor(writer: RecordingWriter) -> ClusterSupervisor:
    FakeSource.events = []
    return ClusterSupervisor(writer, source_factory=FakeSource)  # type: ignore[arg-type]


async def test_ensure_is_idempotent_and_restarts_on_change() -> None:
    sup = supervisor(RecordingWriter())
    a = ClusterSpec("a", server="https://a.invalid")
    await sup.ensure(a)
    await sup.ensure(ClusterSpec("a", server="https://a.invalid"))
    await asyncio.sleep(0)
    assert FakeSource.events == [("start", "a")]
    await sup.ensure(ClusterSpec("a", server="https://a2.invalid"))
    await asyncio.sleep(0)
    assert FakeSource.events == [("start", "a"), ("stop", "a"), ("start", "a")]
    assert sup.specs()["a"].server == "https://a2.invalid"
    await sup.ensure(sup.specs()["a"], restart=True)
    await asyncio.sleep(0)
    assert FakeSource.events.count(("start", "a")) == 3
    await sup.stop()
    assert FakeSource.events[-1] == ("stop", "a") and sup.specs() == {}


async def test_synced_flag_survives_a_restart_and_wait_synced_reports_missing() -> None:
    sup = supervisor(RecordingWriter())
    await sup.ensure(ClusterSpec("a", server="https://a.invalid"))
    await sup.ensure(ClusterSpec("b", server="https://b.invalid"))
    source = sup.source("a")
    assert source is not None
    for kind in Kind:
        source.state.kind_listed(kind)
    assert await sup.wait_synced(["a", "b"], 0.2) == {"b"}
    await sup.ensure(ClusterSpec("a", server="https://a2.invalid"))
    assert sup.source("a").synced  # type: ignore[union-attr]
    await sup.stop()


async def test_remove_purges_after_grace_unless_ensured_again() -> None:
    writer = RecordingWriter()
    sup = supervisor(writer)
    spec = ClusterSpec("a", server="https://a.invalid")
    await sup.ensure(spec)
    await sup.remove("a", grace_seconds=0.2)
    assert writer.status["a"].stale and "removed from the configuration" in writer.status["a"].last_error
    assert ("remove_cluster", "a") not in writer.calls
    await eventually(lambda: ("remove_cluster", "a") in writer.calls, "purged", 2)

    await sup.ensure(spec)
    await sup.remove("a", grace_seconds=0.2)
    await sup.ensure(spec)  # back within the grace period
    await asyncio.sleep(0.4)
    assert writer.calls.count(("remove_cluster", "a")) == 1
    await sup.remove("a")  # no grace: purged at once
    assert writer.calls.count(("remove_cluster", "a")) == 2
    await sup.stop()


async def test_unreachable_cluster_is_reported_and_stops_cleanly() -> None:
    writer = RecordingWriter()
    options = InformerOptions(backoff_base=0.05, backoff_cap=0.2, connect_timeout=1, request_timeout=2)
    sup = ClusterSupervisor(writer, options=options)
    port = refusing_port()  # bound, never listening: connections are refused
    await sup.ensure(ClusterSpec("down", server=f"https://127.0.0.1:{port}", token_provider=_token))
    await eventually(lambda: "down" in writer.status and writer.status["down"].last_error, "error reported")
    status = writer.status["down"]
    assert not status.connected and not status.synced
    assert f"127.0.0.1:{port}" in status.last_error and "cannot connect" in status.last_error
    before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    assert any(t.get_name() == "cluster-down" for t in before)
    await sup.stop()
    left = {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}
    assert not any(t.get_name().startswith(("cluster-", "informer-", "probe-")) for t in left)


async def _token() -> str:
    return "t"


def test_source_is_a_dataclass_with_defaults() -> None:
    source = ClusterSource(ClusterSpec("x", server="https://x.invalid"), RecordingWriter())
    assert source.cluster == "x" and not source.synced and source.options == InformerOptions()
