"""Nothing lost under faults: 3 changing clusters, a real tracker process, agent mirrors, faults injected.

Faults, in turn, while every cluster keeps changing: an API server restart, an etcd restart, an API
server frozen (SIGSTOP) for longer than the watch timeout, a partition during which etcd compacts the
history (the tracker's watch gets 410 and relists), the tracker killed with SIGKILL while agents
and a spoke tracker (hub-and-spoke) stream from it, and a cluster removed from --kubeconfig-dir and
added back. Mirrors: an agent of the tracker, one with a cluster filter, and an agent of the spoke. After the last fault the churn
stops and every mirror must equal the truth listed from the API servers, object by object
(:mod:`kube_ip_tracker.testing.checker`), within a bounded time, which the test reports.

The trackers run with short API server timeouts (``--kube-*`` flags) so the faults fit in seconds.
The default run is one round of faults (about half a minute); the slow variant adds API server and etcd
restarts and repeats rounds until at least 20,000 pod changes were made. After every fault the churn
pauses until every mirror equals the truth, and the time from the end of the fault is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.client import ClientOptions, TrackerClient
from kube_ip_tracker.testing.checker import Diff, compare, list_truth
from kube_ip_tracker.testing.clusters import ClusterSet, LocalCluster
from kube_ip_tracker.testing.proxy import TcpProxy

from .churn import Churn, Timeline
from .conftest import MakeTracker
from .tracker import TrackerProcess

# tests/sources/proxy.py (pytest puts tests/ on sys.path): a TCP proxy a test can cut and restore.

pytestmark = pytest.mark.cluster

# Watches end every 2-4 s (a silent one is given up on 1 s later); a silent API server is reconnected
# to after 6 failed probes 0.5 s apart (about 6 s frozen, 3 s refused).
# Short API server timeouts (the tracker's --kube-* flags) so the faults fit in seconds.
SOURCE_FLAGS = [
    "--kube-watch-timeout=2s",
    "--kube-watch-read-margin=1s",
    "--kube-connect-timeout=2s",
    "--kube-request-timeout=10s",
    "--kube-backoff-base=0.1s",
    "--kube-backoff-cap=1s",
    "--kube-probe-interval=0.5s",
    "--kube-probe-timeout=0.5s",
    "--kube-probe-failures=6",
]
FREEZE_SECONDS = 7.0  # longer than the longest watch (2 x watch_timeout + margin)
PARTITION_SECONDS = 1.0  # shorter than the probes take to reconnect: the watches resume from their old versions
CONVERGE_WITHIN = 60.0


class Run:
    """Clusters, churn, tracker, proxy and mirrors of one churn run."""

    def __init__(
        self, clusters: ClusterSet, tracker: TrackerProcess, spoke: TrackerProcess, proxy: TcpProxy, kdir: Path
    ) -> None:
        self.clusters = clusters
        self.tracker = tracker
        self.spoke = spoke
        self.proxy = proxy
        self.kdir = kdir
        self.parked = kdir.with_name("parked")
        self.parked.mkdir()
        self.churn = Churn(clusters)
        self.timeline = Timeline()
        self.fault_times: dict[str, list[float]] = {}  # fault -> seconds until the mirrors equaled the truth
        self.last_fault_end = 0.0
        self.kills = 0
        names = [c.name for c in clusters]
        self.mirrors: dict[str, tuple[AgentStore, TrackerClient, list[str]]] = {}
        for label, on, wanted in (
            ("all", tracker, names),
            ("filtered", tracker, [names[0], names[2]]),
            ("spoke agent", spoke, names),
        ):
            mirror = AgentStore()
            opts = ClientOptions(
                clusters=wanted if label == "filtered" else (),
                watcher_name=f"agent-{label}",
                backoff_base=0.1,
                backoff_cap=1.0,
            )
            self.mirrors[label] = (mirror, TrackerClient(on.target, mirror, opts), wanted)

    @property
    def all(self) -> AgentStore:
        return self.mirrors["all"][0]

    async def until(self, check: Callable[[], object], what: str, within: float = 30.0) -> None:
        await self.tracker.eventually(check, what, within)

    def status(self, cluster: LocalCluster):  # type: ignore[no-untyped-def]
        return self.all.cluster_statuses().get(cluster.name)

    # -- faults ----------------------------------------------------------------------------------

    # Each fault returns when it ended (time.monotonic()): the API server is ready again, thawed,
    # reachable again, the tracker restarted, the cluster file back. Convergence is timed from there.

    async def restart_apiserver(self, c: LocalCluster) -> float:
        self.timeline.mark(f"restart kube-apiserver of {c.name}")
        await asyncio.to_thread(c.restart_apiserver)
        return time.monotonic()

    async def restart_etcd(self, c: LocalCluster) -> float:
        self.timeline.mark(f"restart etcd of {c.name}")
        await asyncio.to_thread(c.restart_etcd)
        return time.monotonic()

    async def freeze_apiserver(self, c: LocalCluster) -> float:
        self.timeline.mark(f"freeze kube-apiserver of {c.name} for {FREEZE_SECONDS:.0f}s")
        frozen_at = time.monotonic()
        c.freeze_apiserver()
        try:
            await self.until(lambda: not (s := self.status(c)) or not s.connected, "frozen server reported", 20)
            await asyncio.sleep(max(0.0, FREEZE_SECONDS - (time.monotonic() - frozen_at)))
        finally:
            c.thaw_apiserver()
        return time.monotonic()

    async def compacted_partition(self, c: LocalCluster) -> float:
        """Cut the tracker from ``c`` (proxy), let ``c`` change, compact etcd, restore: the watches get 410.

        The watches then resume from resourceVersions etcd no longer has and must relist (counted as
        "expired"). If the probes reconnected first (a relist of another reason), the fault is repeated.
        """
        self.timeline.mark(f"partition {c.name} from the tracker; compact etcd; restore")
        for attempt in range(1, 4):
            before = self.expired_relists(c)
            self.proxy.cut()
            await asyncio.sleep(PARTITION_SECONDS)  # the cluster keeps changing, deletes included
            await asyncio.to_thread(c.compact_etcd)
            self.proxy.restore()
            restored = time.monotonic()
            try:
                await self.until(lambda: self.expired_relists(c) > before, "a relist after 410 (expired)", 10)  # noqa: B023
                return restored
            except AssertionError:
                self.timeline.mark(f"no relist after 410 on attempt {attempt}; partitioning again")
        raise AssertionError(f"the tracker never relisted {c.name} after a 410\n{self.timeline}")

    async def kill_tracker(self) -> float:
        """SIGKILL the tracker, start it again after 1 s (convergence includes its start and sync)."""
        self.timeline.mark("SIGKILL the tracker (the spoke's hub); restart it after 1s")
        self.tracker.kill()
        self.kills += 1
        await asyncio.sleep(1.0)
        self.tracker.start()
        return time.monotonic()

    async def remove_and_readd(self, c: LocalCluster) -> float:
        self.timeline.mark(f"remove {c.name} from --kubeconfig-dir; add it back")
        path = self.kdir / f"{c.name}.yaml"
        path.rename(self.parked / path.name)
        await self.until(
            lambda: self.status(c) is None and not list(self.all.pods(c.name)), "the removed cluster purged", 30
        )
        await asyncio.sleep(1.0)
        (self.parked / path.name).rename(path)
        return time.monotonic()

    async def round(self, gap: float, *, restarts: bool, check_each: bool) -> None:
        """One fault of each kind (API server and etcd restarts only with ``restarts``: ~10 s each).

        With ``check_each``, the churn stops after each fault until every mirror equals the truth, and
        the time that took is recorded per fault.
        """
        c0, c1, c2 = self.clusters
        faults: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("frozen API server", lambda: self.freeze_apiserver(c2)),
            ("410 after compaction", lambda: self.compacted_partition(c0)),
            ("tracker/hub SIGKILL", self.kill_tracker),
            ("cluster removed and re-added", lambda: self.remove_and_readd(c1)),
        ]
        if restarts:
            faults[:0] = [
                ("API server restart", lambda: self.restart_apiserver(c0)),
                ("etcd restart", lambda: self.restart_etcd(c1)),
            ]
        for name, fault in faults:
            self.last_fault_end = await fault()
            if check_each:
                elapsed, _ = await self.converge(name, self.last_fault_end)
                self.fault_times.setdefault(name, []).append(elapsed)
                self.churn.start()
            await asyncio.sleep(gap)

    # -- checks ----------------------------------------------------------------------------------

    def expired_relists(self, c: LocalCluster) -> float:
        """kube_ip_tracker_source_lists_total{reason="expired"} of ``c`` (all kinds) from /metrics."""
        try:
            text = self.tracker.metrics_text()
        except OSError:
            return 0.0
        total = 0.0
        for line in text.splitlines():
            if line.startswith("kube_ip_tracker_source_lists_total{") and f'cluster="{c.name}"' in line:
                if 'reason="expired"' in line:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    async def converge(self, after: str, since: float) -> tuple[float, dict[str, Diff]]:
        """Stop the churn, list the truth, wait until every mirror equals it; the seconds since ``since``."""
        await self.churn.stop()
        self.timeline.mark(f"churn stopped after {self.churn.changes} changes")
        async with contextlib.AsyncExitStack() as stack:
            apis = {c.name: await stack.enter_async_context(c.api_client()) for c in self.clusters}
            truth = await list_truth(apis)
        diffs: dict[str, Diff] = {}

        def equal() -> bool:
            for label, (mirror, _, wanted) in self.mirrors.items():
                diffs[label] = compare(mirror, truth, wanted)
                statuses = mirror.cluster_statuses()
                if diffs[label] or not all(statuses.get(c) and statuses[c].synced for c in wanted):
                    return False
            return True

        try:
            await self.until(equal, "every mirror equals the truth", CONVERGE_WITHIN)
        except AssertionError as e:
            detail = "\n".join(f"mirror {k}: {d.summary()}" for k, d in diffs.items())
            raise AssertionError(f"after {after}: {e}\n{detail}\ntimeline:\n{self.timeline}") from None
        elapsed = time.monotonic() - since
        self.timeline.mark(f"all mirrors equal the truth ({truth.counts()}) {elapsed:.1f}s after: {after}")
        return elapsed, diffs


def kubeconfig_for(cluster: LocalCluster, server: str | None = None) -> dict[str, object]:
    config = cluster.kubeconfig_dict()
    if server:
        config["clusters"][0]["cluster"]["server"] = server  # type: ignore[index]
    return config


async def churn_run(  # type: ignore[no-untyped-def]
    tmp_path: Path,
    cluster_factory,
    tracker_process: MakeTracker,
    *,
    min_pod_changes: int,
    gap: float,
    restarts: bool,
    check_each: bool,
) -> Run:
    clusters: ClusterSet = cluster_factory(3, watch_cache=False)
    proxy = await TcpProxy(clusters[0].port).start()
    kdir = tmp_path / "clusters"
    kdir.mkdir()
    for i, c in enumerate(clusters):
        server = proxy.url if i == 0 else None
        (kdir / f"{c.name}.yaml").write_text(yaml.safe_dump(kubeconfig_for(c, server)))
    tracker = tracker_process(
        [
            "--kubeconfig-dir",
            str(kdir),
            "--kubeconfig-dir-interval",
            "0.2s",
            "--cluster-removal-grace",
            "0s",
            "--ready-timeout",
            "5s",
            *SOURCE_FLAGS,
        ],
        metrics=True,
    )
    # A spoke tracker: its own cluster-3 (the one frozen) plus the other clusters from the tracker (its hub).
    spoke = tracker_process(
        [
            *("--kubeconfig", str(clusters[2].kubeconfig), "--upstream-tracker", tracker.target),
            *("--ready-timeout", "5s", *SOURCE_FLAGS),
        ],
    )
    run = Run(clusters, tracker, spoke, proxy, kdir)
    try:
        await run.churn.prepare()
        tracker.start()
        spoke.start()
        for _, client, _ in run.mirrors.values():
            client.start()
        await run.until(lambda: all(run.status(c) and run.status(c).synced for c in clusters), "synced", 60)
        run.churn.start()
        run.timeline.mark("churn started")
        rounds = 0
        while rounds == 0 or run.churn.pod_changes < min_pod_changes:
            await run.round(gap, restarts=restarts, check_each=check_each)
            rounds += 1
            run.timeline.mark(f"round {rounds} done, {run.churn.changes} changes")
        elapsed, _ = await run.converge("the last fault", run.last_fault_end)
        assert elapsed < CONVERGE_WITHIN
        assert run.churn.deletes > 0 and run.churn.pod_changes >= min_pod_changes
        epochs = re.findall(r"Tracker gRPC server listening .* epoch (\w+)", tracker.log())
        assert len(epochs) == run.kills + 1  # one process per SIGKILL, and the agents follow the last one
        # A filtered watcher's stream epoch is the process epoch plus ".f<fingerprint of its filters>".
        assert run.mirrors["all"][1].epoch == epochs[-1]
        assert run.mirrors["filtered"][1].epoch.split(".f")[0] == epochs[-1]
        report = (
            f"churn run: {run.churn.changes} changes ({run.churn.pod_changes} of pods, {run.churn.deletes} deletes, "
            f"{run.churn.failures} failed "
            f"requests during faults), {rounds} rounds of faults; mirrors equal the truth {elapsed:.1f}s after "
            f"the last fault\n"
            + "".join(
                f"  after {k}: converged in at most {max(v):.1f}s ({len(v)}x)\n" for k, v in run.fault_times.items()
            )
            + str(run.timeline)
        )
        print(report)
        (tmp_path / "report.txt").write_text(report)
        assert re.search(r"Watch stream|snapshot", tracker.log())
        return run
    finally:
        await run.churn.stop()
        for _, client, _ in run.mirrors.values():
            await client.stop()
        await proxy.stop()


async def test_mirrors_converge_after_faults(tmp_path, cluster_factory, tracker_process) -> None:  # type: ignore[no-untyped-def]
    await churn_run(
        tmp_path, cluster_factory, tracker_process, min_pod_changes=300, gap=0.5, restarts=False, check_each=True
    )


@pytest.mark.slow
async def test_mirrors_converge_after_faults_20k_changes(tmp_path, cluster_factory, tracker_process) -> None:  # type: ignore[no-untyped-def]
    await churn_run(
        tmp_path, cluster_factory, tracker_process, min_pod_changes=20_000, gap=3.0, restarts=True, check_each=True
    )
