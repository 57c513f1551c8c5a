"""Restart storm and stuck agents against the real tracker process.

- Many watchers connecting at once (all agents after a tracker restart) are served from a shared
  snapshot encoding; beyond --max-watchers they get RESOURCE_EXHAUSTED, and every slot is freed when
  they leave. The default run uses 300 watchers, the slow variant the issue's 2,000.
- Agents that stop reading do not make the tracker hold more and more: once a stuck watcher's queue
  reaches --watcher-buffer-messages it is disconnected (RESOURCE_EXHAUSTED), while a healthy watcher
  keeps receiving every change.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc
import grpc.aio
import pytest

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.server.grpc_server import SERVICE_NAME
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import LocalCluster

from .conftest import MakeTracker
from .tracker import TrackerProcess

pytestmark = pytest.mark.cluster

WR = pb.WatchResponse
WATCH = f"/{SERVICE_NAME}/Watch"


def metrics(tracker: TrackerProcess) -> dict[str, float]:
    """The tracker's /metrics as {"name{labels}": value}."""
    out = {}
    for line in tracker.metrics_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def rss_mib(tracker: TrackerProcess) -> float:
    assert tracker.proc is not None
    for line in Path(f"/proc/{tracker.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def populated_cluster(cluster_factory, pods: int) -> LocalCluster:  # type: ignore[no-untyped-def]
    cluster: LocalCluster = cluster_factory(1)[0]
    async with cluster.api_client() as api:
        await objects.create_namespace(api, "storm", {"team": "t"})
        await objects.create_node(api, "node-1", {"zone": "z"}, internal_ip="192.0.2.1")
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem:
                await objects.create_pod(
                    api, "storm", f"p-{i}", labels={"app": "a"}, ips=[f"10.3.{i // 250}.{i % 250 + 1}"]
                )

        await asyncio.gather(*(one(i) for i in range(pods)))
    return cluster


async def start_tracker(tracker_process: MakeTracker, cluster: LocalCluster, *flags: str) -> TrackerProcess:
    tracker = tracker_process(["--kubeconfig", str(cluster.kubeconfig), *flags], metrics=True)
    tracker.start()
    await tracker.wait_listening()
    await tracker.eventually(
        lambda: metrics(tracker).get("kube_ip_tracker_server_serving") == 1.0, "the tracker serves", 60
    )
    return tracker


def is_end_of_snapshot(data: bytes) -> bool:
    """END_OF_SNAPSHOT without decoding every (large) SNAPSHOT message."""
    return len(data) < 200 and WR.FromString(data).kind == WR.END_OF_SNAPSHOT


async def storm(tracker: TrackerProcess, watchers: int, max_watchers: int, per_channel: int) -> None:
    channels = [
        grpc.aio.insecure_channel(tracker.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(-(-watchers // per_channel))
    ]
    release = asyncio.Event()
    outcome: Counter[str] = Counter()
    served = asyncio.Event()

    async def watcher(i: int) -> None:
        call = channels[i // per_channel].unary_stream(WATCH, request_serializer=pb.WatchRequest.SerializeToString)(
            pb.WatchRequest(watcher_name=f"storm-{i}"), timeout=120
        )
        try:
            async for data in call:
                if is_end_of_snapshot(data):
                    outcome["served"] += 1
                    if outcome["served"] == max_watchers:
                        served.set()
                    await release.wait()
                    break
        except grpc.aio.AioRpcError as e:
            outcome[e.code().name] += 1
        finally:
            call.cancel()

    try:
        tasks = [asyncio.create_task(watcher(i)) for i in range(watchers)]  # all at once
        await asyncio.wait_for(served.wait(), 120)
        await tracker.eventually(lambda: sum(outcome.values()) == watchers, "every watcher answered", 60)
        m = metrics(tracker)
        assert outcome == {"served": max_watchers, "RESOURCE_EXHAUSTED": watchers - max_watchers}, outcome
        assert m["kube_ip_tracker_server_watchers"] == max_watchers
        assert m['kube_ip_tracker_server_watchers_rejected_total{reason="max_watchers"}'] == watchers - max_watchers
        encodings = m["kube_ip_tracker_server_snapshot_encodings_total"]
        assert encodings <= 3, f"{encodings} snapshot encodings for {max_watchers} watchers: not shared"
        print(
            f"storm: {watchers} watchers, {max_watchers} served from {encodings:.0f} encodings, RSS {rss_mib(tracker):.0f} MiB"
        )
        release.set()
        await asyncio.gather(*tasks)
        await tracker.eventually(
            lambda: metrics(tracker)["kube_ip_tracker_server_watchers"] == 0, "every stream closed", 30
        )
    finally:
        release.set()
        for ch in channels:
            await ch.close()
    assert tracker.alive


async def test_restart_storm_is_served_from_a_shared_snapshot_with_admission(  # type: ignore[no-untyped-def]
    cluster_factory, tracker_process: MakeTracker
) -> None:
    cluster = await populated_cluster(cluster_factory, 200)
    tracker = await start_tracker(tracker_process, cluster, "--max-watchers", "250")
    await storm(tracker, 300, 250, per_channel=10)


@pytest.mark.slow
async def test_restart_storm_2000_watchers(cluster_factory, tracker_process: MakeTracker) -> None:  # type: ignore[no-untyped-def]
    cluster = await populated_cluster(cluster_factory, 1000)
    tracker = await start_tracker(tracker_process, cluster, "--max-watchers", "1500")
    await storm(tracker, 2000, 1500, per_channel=20)


async def test_stuck_watchers_are_cut_off_and_do_not_grow_memory(  # type: ignore[no-untyped-def]
    cluster_factory, tracker_process: MakeTracker
) -> None:
    cluster = await populated_cluster(cluster_factory, 50)
    tracker = await start_tracker(tracker_process, cluster, "--watcher-buffer-messages", "20")
    stuck_channels = [
        grpc.aio.insecure_channel(tracker.target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(5)
    ]
    stuck = [
        ch.unary_stream(WATCH, request_serializer=pb.WatchRequest.SerializeToString)(
            pb.WatchRequest(watcher_name=f"stuck-{i}"), timeout=300
        )
        for i, ch in enumerate(stuck_channels)
    ]
    healthy_channel = grpc.aio.insecure_channel(tracker.target)
    healthy = healthy_channel.unary_stream(WATCH, request_serializer=pb.WatchRequest.SerializeToString)(
        pb.WatchRequest(watcher_name="healthy"), timeout=300
    )
    seen: set[tuple[str, str]] = set()  # (pod, its "rev" label) of every pod change received

    async def follow() -> None:
        async for data in healthy:
            msg = WR.FromString(data)
            for c in msg.changes:
                if c.WhichOneof("object") == "pod" and not c.deleted:
                    seen.add((c.pod.name, dict(c.pod.labels).get("rev", "")))

    follower = asyncio.create_task(follow())
    try:
        await tracker.eventually(lambda: metrics(tracker)["kube_ip_tracker_server_watchers"] == 6, "6 watchers", 30)
        rss_before = rss_mib(tracker)
        big = {f"k{k:03d}-{'x' * 55}": "v" * 63 for k in range(150)}  # ~19 KB per pod change
        async with cluster.api_client() as api:
            for i in range(1000):  # each change is its own DELTA once the tracker keeps up
                await objects.label_pod(api, "storm", f"p-{i % 50}", {**big, "rev": str(i)})
                if i % 50 == 49 and metrics(tracker)["kube_ip_tracker_server_slow_watcher_disconnects_total"] >= 5:
                    break
        await tracker.eventually(
            lambda: metrics(tracker)["kube_ip_tracker_server_slow_watcher_disconnects_total"] >= 5,
            "the 5 stuck watchers are disconnected",
            60,
        )
        await tracker.eventually(lambda: metrics(tracker)["kube_ip_tracker_server_watchers"] == 1, "1 watcher left", 30)
        last = (f"p-{i % 50}", str(i))
        await tracker.eventually(lambda: last in seen, "the healthy watcher got every change", 30)
        rss_after = rss_mib(tracker)
        assert rss_after - rss_before < 100, "the tracker grew by more than 100 MiB"  # a sanity bound, not a benchmark
        print(f"stuck watchers: RSS {rss_before:.0f} MiB before, {rss_after:.0f} MiB after {i + 1} changes of ~19 KB")
        for call in stuck:  # what they get when they finally read: what was in flight, then the status
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too slow" in (err.value.details() or "")
    finally:
        follower.cancel()
        for ch in [*stuck_channels, healthy_channel]:
            await ch.close()
    assert tracker.alive
