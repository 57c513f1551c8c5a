"""Everything the demo runs, started in order and always torn down: clusters, objects, pods, trackers, agents.

:class:`DemoStack` is an async context manager. :meth:`DemoStack.close` stops the agents first (they
remove their rules), then the trackers and clusters, deletes the pod namespaces and veths, removes
any rule an agent left behind and the working directory. It is safe to call after a partial start,
on Ctrl-C and twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes_asyncio import client
from prometheus_client.parser import text_string_to_metric_families

from kube_ip_tracker.agent.dataplane import Dataplane, DataplaneConfig
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import ClusterSet, free_port, start_clusters
from kube_ip_tracker.testing.netns import Pod, PodNetwork, routed
from kube_ip_tracker.testing.trackers import TrackerProcess

from . import scenario
from .scenario import CLUSTERS, NAMESPACES, NODES, PODS, WEB_PORT, DemoPod, PolicyChange
from .web import HttpResult, HttpServer, http_get

log = logging.getLogger("kube_ip_tracker.demo")

AGENT_CMD = [sys.executable, "-m", "kube_ip_tracker.agent.cli", "run"]
READY_TIMEOUT = 60.0
T = TypeVar("T")


class DemoError(RuntimeError):
    """The demo cannot start or run; the message says what to do."""


@dataclass(frozen=True)
class DemoSettings:
    """Where the demo lives on this host. Two stacks with different settings can run at once."""

    subnet: str = scenario.DEFAULT_SUBNET
    prefix: str = "kipdemo"  # netns/veth prefix; the agents' rules are <prefix>-c1, <prefix>-c2
    mark_slots: tuple[int, int] = (2, 3)  # tests' dataplanes use slot 0 (the default marks)
    first_queue: int = 0  # 0: a random free-looking queue number
    workdir: Path | None = None  # None: a new temporary directory, removed at the end
    agent_args: tuple[str, ...] = ()  # extra flags for every agent (e.g. --log-level debug)
    tracker_metrics: bool = False  # serve the trackers' /metrics (TrackerProcess.metrics_port)

    def rule_name(self, cluster: str) -> str:
        return f"{self.prefix}-c{CLUSTERS.index(cluster) + 1}"


_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGTERM when the parent goes away."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class ChildProcess:
    """A child process with its output in a log file, in its own session (Ctrl-C is ours to handle)."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> ChildProcess:
        """Start it; it gets SIGTERM if the thread that started it dies (a demo killed with SIGKILL)."""
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def lines(self) -> list[str]:
        """Every line of the process's log so far."""
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(text.splitlines()[-lines:])


def agent_ready(metrics_port: int) -> bool:
    """Whether the agent serving metrics on ``metrics_port`` reports ``kube_ip_agent_ready 1``."""
    return metric_sum(metrics_port, "kube_ip_agent_ready") == 1


def _names_would_deny(line: str, policy: str) -> bool:
    return '"Connection would be denied"' in line and f'policy="{policy}"' in line


def metric_sum(metrics_port: int, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when unreachable or absent)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as resp:
            families = list(text_string_to_metric_families(resp.read().decode()))
    except OSError:
        return 0.0
    return sum(
        s.value
        for f in families
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def rules_left(name: str) -> list[str]:
    """What remains of an agent's rules named ``name``: iptables/ip6tables chain lines and the nft table."""
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        saved = subprocess.run([tool, "-t", "security"], capture_output=True, text=True, check=False).stdout
        found += [line for line in saved.splitlines() if f"{name.upper()}-" in line]
    if subprocess.run(["nft", "list", "table", "inet", name], capture_output=True, check=False).returncode == 0:
        found.append(f"nft table inet {name}")
    return found


def namespaces_left(prefix: str) -> list[str]:
    """Network namespaces named ``<prefix>-...``."""
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix + "-"))
    except FileNotFoundError:
        return []


class DemoStack:
    """The running demo; see the module docstring. ``say`` receives progress lines for a person."""

    def __init__(self, settings: DemoSettings | None = None, say: Callable[[str], None] = print) -> None:
        self.settings = settings or DemoSettings()
        self.say = say
        self.workdir: Path | None = None
        self.clusters: ClusterSet | None = None
        self.network: PodNetwork | None = None
        self.pods: dict[str, Pod] = {}
        self.trackers: list[TrackerProcess] = []
        self.agents: list[ChildProcess] = []
        self.agent_metrics: dict[str, int] = {}
        self._servers: list[HttpServer] = []
        self._inflight: set[asyncio.Future[Any]] = set()
        self._lock: Any = None
        self._closed = False

    # --- start -----------------------------------------------------------------------------------

    async def __aenter__(self) -> DemoStack:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a thread; :meth:`close` waits for it even if this await is cancelled."""
        future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return await asyncio.shield(future)

    async def start(self) -> None:
        s = self.settings
        self._take_lock()
        await self._blocking(self._remove_leftovers)
        self._check_addresses()
        self.workdir = s.workdir or Path(tempfile.mkdtemp(prefix=f"{s.prefix}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)

        started = time.monotonic()
        self.say(f"Starting {len(CLUSTERS)} local clusters ({', '.join(CLUSTERS)}): etcd + kube-apiserver each ...")
        await self._blocking(self._start_clusters)
        self.say(f"  ready in {time.monotonic() - started:.1f}s; logs and kubeconfigs in {self.workdir}")

        self.say("Creating namespaces, nodes and pods in the API servers (pods get their status.podIP) ...")
        await self._create_objects()
        self.say("Creating the pods' network: one network namespace per pod, veth to the host, flat routing ...")
        await self._blocking(self._create_network)
        for p in PODS:
            serves = f"  serves HTTP on :{WEB_PORT}" if p.web else ""
            labels = ",".join(f"{k}={v}" for k, v in p.labels.items())
            where = f"{p.cluster}/{p.namespace}/{p.name}"
            self.say(f"  {p.key:<13} {where:<28} {p.ip(s.subnet):<13} {labels}{serves}")

        self.say("Starting a kube-ip-tracker per cluster, each watching both API servers (full mesh) ...")
        await self._start_trackers()
        self.say("Starting a kube-ip-agent per cluster (NFQUEUE verdicts for its cluster's pods) ...")
        await self._start_agents()
        self.say(f"Everything is up ({time.monotonic() - started:.1f}s).")

    def _take_lock(self) -> None:
        path = f"/run/lock/kube-ip-tracker-{self.settings.prefix}.lock"
        handle = open(path, "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DemoError(
                f"another demo with prefix {self.settings.prefix!r} is running on this host ({path})"
            ) from None
        self._lock = handle

    def _remove_leftovers(self) -> None:
        """Processes, temp dirs, namespaces, veths and rules of a killed earlier run with our prefix (we hold the lock)."""
        s = self.settings
        if s.workdir is None:
            _stop_processes_using(os.path.join(tempfile.gettempdir(), f"{s.prefix}-"))
            for path in Path(tempfile.gettempdir()).glob(f"{s.prefix}-*"):
                log.warning("removing %s left by an earlier run", path)
                shutil.rmtree(path, ignore_errors=True)
        for name in namespaces_left(s.prefix):
            log.warning("removing network namespace %s left by an earlier run", name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
        for line in links.splitlines():
            name = line.split(":", 2)[1].strip().split("@", 1)[0]
            if name.startswith(s.prefix + "h"):
                subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        for cluster in CLUSTERS:
            if rules_left(s.rule_name(cluster)):
                log.warning("removing rules %s left by an earlier run", s.rule_name(cluster))
                asyncio.run(_remove_rules(s.rule_name(cluster)))

    def _check_addresses(self) -> None:
        for p in PODS:
            ip = p.ip(self.settings.subnet)
            if routed(ipaddress.ip_network(ip)):
                raise DemoError(f"address {ip} of pod {p.key} is already routed on this host; choose another --subnet")

    def _start_clusters(self) -> None:
        assert self.workdir is not None
        self.clusters = start_clusters(len(CLUSTERS), self.workdir / "clusters", names=CLUSTERS)

    async def _create_objects(self) -> None:
        assert self.clusters is not None
        for cluster in self.clusters:
            async with cluster.api_client() as api:
                await objects.create_node(api, NODES[cluster.name])
                for ns in NAMESPACES:
                    if ns.cluster == cluster.name:
                        await objects.create_namespace(api, ns.name, ns.labels)
                for p in PODS:
                    if p.cluster == cluster.name:
                        await objects.create_pod(
                            api,
                            p.namespace,
                            p.name,
                            labels=p.labels,
                            node=NODES[cluster.name],
                            ips=[p.ip(self.settings.subnet)],
                            ports=[("http", WEB_PORT, "TCP"), ("echo", WEB_PORT, "UDP")] if p.web else [],
                        )

    def _create_network(self) -> None:
        self.network = PodNetwork(self.settings.subnet, prefix=self.settings.prefix)
        for p in PODS:
            pod = self.network.add_pod(p.key, p.ip(self.settings.subnet))
            self.pods[p.key] = pod
            if p.web:
                self._servers.append(HttpServer(pod, WEB_PORT, f"hello from {p.name} in {p.cluster}/{p.namespace}"))
                pod.serve_udp(WEB_PORT)

    async def _start_trackers(self) -> None:
        assert self.clusters is not None and self.workdir is not None
        kubeconfig = str(self.clusters.merged_kubeconfig)
        for cluster in CLUSTERS:
            tracker = TrackerProcess(
                f"tracker-{cluster}", ["--kubeconfig", kubeconfig], self.workdir, metrics=self.settings.tracker_metrics
            )
            self.trackers.append(tracker.start())

        async def synced() -> bool:
            for tracker in self.trackers:
                if not tracker.alive:
                    raise DemoError(f"{tracker.name} exited:\n{tracker.log_tail()}")
                clusters = await tracker.clusters()
                if not all(c in clusters and clusters[c].status.synced for c in CLUSTERS):
                    return False
            return True

        await self._wait(synced, "trackers synced with both clusters", lambda: [t.log_tail() for t in self.trackers])

    async def _start_agents(self) -> None:
        assert self.clusters is not None and self.workdir is not None
        s = self.settings
        first_queue = s.first_queue or 20000 + int.from_bytes(os.urandom(2)) % 40000
        for index, (cluster, tracker) in enumerate(zip(self.clusters, self.trackers, strict=True)):
            port = free_port()
            self.agent_metrics[cluster.name] = port
            argv = [
                *AGENT_CMD,
                "--tracker-address",
                tracker.address,
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--cluster-id",
                cluster.name,
                "--node-name",
                NODES[cluster.name],
                "--nfqueue-id",
                str(first_queue + index),
                "--name",
                s.rule_name(cluster.name),
                "--mark-slot",
                str(s.mark_slots[index]),
                "--metrics-address",
                f"127.0.0.1:{port}",
                *s.agent_args,
            ]
            agent = ChildProcess(f"agent-{cluster.name}", argv, self.workdir / f"agent-{cluster.name}.log")
            self.agents.append(agent.start())

        def ready() -> bool:
            for agent, port in zip(self.agents, self.agent_metrics.values(), strict=True):
                if not agent.alive:
                    raise DemoError(f"{agent.name} exited with {agent.proc.returncode}:\n{agent.tail()}")  # type: ignore[union-attr]
                if not agent_ready(port):
                    return False
            return True

        await self._wait(lambda: self._blocking(ready), "agents ready", lambda: [a.tail() for a in self.agents])

    async def _wait(
        self,
        check: Callable[[], Awaitable[bool]],
        what: str,
        logs: Callable[[], list[str]],
        within: float = READY_TIMEOUT,
    ) -> None:
        deadline = time.monotonic() + within
        while not await check():
            if time.monotonic() > deadline:
                raise DemoError(f"not reached within {within:.0f}s: {what}\n" + "\n".join(logs()))
            await asyncio.sleep(0.2)

    # --- use -------------------------------------------------------------------------------------

    def scenario_pod(self, key: str) -> DemoPod:
        return scenario.pod(key)

    async def apply(self, change: PolicyChange) -> None:
        """Create (or delete) the policy of ``change`` in its cluster's API server."""
        assert self.clusters is not None
        cluster = next(c for c in self.clusters if c.name == change.cluster)
        kind = change.body.get("kind", "NetworkPolicy")
        async with cluster.api_client() as api:
            if kind in objects.CLUSTER_POLICY_KINDS:
                if change.delete:
                    await objects.delete_cluster_policy(api, kind, change.body["metadata"]["name"])
                else:
                    await objects.apply_cluster_policy(api, change.body)
                return
            namespace = change.body["metadata"]["namespace"]
            if change.delete:
                name = change.body["metadata"]["name"]
                await client.NetworkingV1Api(api).delete_namespaced_network_policy(name, namespace)
            else:
                await client.NetworkingV1Api(api).create_namespaced_network_policy(namespace, change.body)

    async def http(self, client_key: str, target_key: str, wait: float = 1.0) -> HttpResult:
        """GET http://<target>:80/ from the client pod's namespace."""
        target = self.pods[target_key]
        return await asyncio.to_thread(http_get, self.pods[client_key], target.ip, WEB_PORT, wait)

    async def udp(self, client_key: str, target_key: str, wait: float = 1.0) -> bool:
        """Whether a datagram to <target>:80/UDP is echoed."""
        target = self.pods[target_key]
        return await asyncio.to_thread(self.pods[client_key].udp_probe, target.ip, WEB_PORT, wait)

    async def would_deny(self, cluster: str, policy: str) -> str | None:
        """What ``cluster``'s agent said about the staged ``policy``: its would-deny line and count, or None
        while it has logged none."""
        index = CLUSTERS.index(cluster)
        agent, port = self.agents[index], self.agent_metrics[cluster]

        def seen() -> str | None:
            line = next((line for line in agent.lines() if _names_would_deny(line, policy)), None)
            counted = metric_sum(port, "kube_ip_agent_staged_decisions_total", result="would-deny")
            if line is None or not counted:
                return None
            fields = " ".join(re.findall(r'\b(?:verdict|policy|rule|reason|enforced)=(?:"[^"]*"|\S+)', line))
            return (
                f'{cluster}\'s agent: {fields}; kube_ip_agent_staged_decisions_total{{result="would-deny"}} {counted:g}'
            )

        return await self._blocking(seen)

    def rule_names(self) -> list[str]:
        return [self.settings.rule_name(c) for c in CLUSTERS]

    # --- stop ------------------------------------------------------------------------------------

    async def close(self, keep_logs: bool = False) -> None:
        """Tear everything down (see the module docstring); never raises, logs what failed.

        ``keep_logs`` keeps the working directory (process logs, kubeconfigs) for a look after a failure.
        """
        if self._closed:
            return
        self._closed = True
        if self._inflight:  # a start step still running in a thread: let it finish, then undo it
            await asyncio.gather(*self._inflight, return_exceptions=True)
        steps: list[tuple[str, Callable[[], object]]] = [
            ("agents", lambda: [a.stop() for a in self.agents]),
            ("trackers", lambda: [t.stop() for t in self.trackers]),
            ("clusters", lambda: self.clusters.stop() if self.clusters else None),
            ("web servers", lambda: [srv.close() for srv in self._servers]),
            ("pod network", lambda: self.network.close() if self.network else None),
            ("leftover rules", self._remove_agent_rules),
        ]
        for what, step in steps:
            try:
                await asyncio.to_thread(step)
            except Exception:
                log.exception("cleanup of %s failed", what)
        if self.workdir is not None and self.settings.workdir is None and not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _remove_agent_rules(self) -> None:
        if not self.agents:  # the rules of these names may belong to another demo (we never got the lock)
            return
        for name in self.rule_names():
            if rules_left(name):
                log.warning("agent rules %s were still installed; removing them", name)
                asyncio.run(_remove_rules(name))


def _stop_processes_using(marker: str, timeout: float = 10.0) -> None:
    """SIGTERM (then SIGKILL) every process whose command line contains ``marker`` (an earlier run's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in found:
            log.warning("stopping process %d left by an earlier run (signal %s)", pid, sig.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while found and time.monotonic() < deadline:
            found = [pid for pid in found if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
            time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


async def _remove_rules(name: str) -> None:
    """Delete the nft table and iptables chains of the agent whose rules are named ``name``."""
    await Dataplane(DataplaneConfig(name=name), lambda p: False, lambda: False).remove_rules()
