"""``kube-ip-agent run`` end to end: a real cluster, a real tracker process, the agent as a real process,
and pods as network namespaces whose addresses are the pods' ``status.podIP``.

A NetworkPolicy created in the API server reaches the agent, which then drops new connections and
cuts the open one; deleting it lets traffic through again; SIGTERM removes the agent's rules.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import stat
import subprocess
import sys
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from kube_ip_tracker.agent.dataplane import Dataplane, DataplaneConfig
from kube_ip_tracker.agent.run import MARK_SLOTS
from kube_ip_tracker.testing import certs, objects, polling
from kube_ip_tracker.testing.clusters import LocalCluster, free_port, refusing_port
from kube_ip_tracker.testing.netns import Pod, PodNetwork

pytestmark = [pytest.mark.root, pytest.mark.cluster]

TRACKER_CMD = [sys.executable, "-m", "kube_ip_tracker.cli"]
AGENT_CMD = [sys.executable, "-m", "kube_ip_tracker.agent.cli", "run"]
NAMESPACE = "demo"
WEB_PORT = 8080


class Process:
    """A child process with its output in a log file, stopped at the end of the test."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
        if self.alive():
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for proc in reversed(started):
        proc.terminate()


def iptables_chains(prefix: str) -> list[str]:
    """Our chains in the security table (iptables and ip6tables) and our nft table, if any is left."""
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        saved = subprocess.run([tool, "-t", "security"], capture_output=True, text=True, check=False).stdout
        found += [line for line in saved.splitlines() if f"{prefix.upper()}-" in line]
    nft = subprocess.run(["nft", "list", "table", "inet", prefix], capture_output=True, check=False)
    if nft.returncode == 0:
        found.append(f"table inet {prefix}")
    return found


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return int(resp.status)


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def eventually(predicate: Callable[[], bool], what: str, agent: Process, within: float = 30.0) -> None:
    """Poll a blocking ``predicate`` off the event loop; fail with the agent's log."""
    await polling.eventually(
        predicate, what, within=within, interval=0.1, in_thread=True, detail=lambda: f"agent log:\n{agent.tail()}"
    )


def deny_ingress(name: str) -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
    }


def slot_for(name: str) -> int:
    """A mark slot that follows from the agent's random name: other agents on a shared host likely hold others."""
    return zlib.crc32(name.encode()) % MARK_SLOTS


def start_agent(
    tmp_path: Path,
    cluster: LocalCluster,
    tracker_port: int,
    name: str,
    metrics_port: int,
    queue: int,
    *extra: str,
    slot: int | None = None,
) -> Process:
    argv = [
        *AGENT_CMD,
        # A first address that refuses connections: the agent fails over to the second.
        "--tracker-address",
        f"127.0.0.1:{refusing_port()}",
        "--tracker-address",
        f"127.0.0.1:{tracker_port}",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--cluster-id",
        cluster.name,
        "--node-name",
        "node-1",
        "--nfqueue-id",
        str(queue),
        "--mark-slot",  # a restarted agent (same name) takes the same slot
        str(slot_for(name) if slot is None else slot),
        "--name",
        name,
        "--metrics-address",
        f"127.0.0.1:{metrics_port}",
        "--log-level",
        "debug",
        *extra,
    ]
    return Process(argv, tmp_path / f"agent-{name}.log")


async def web_and_client(cluster: LocalCluster, net: PodNetwork) -> tuple[Pod, Pod]:
    """Pods web (serving WEB_PORT) and client, as netns and as pods of ``cluster`` on node-1 with their IPs."""
    web, client_pod = net.add_pod("web"), net.add_pod("client")
    web.serve_tcp(WEB_PORT)
    async with cluster.api_client() as api:
        await objects.create_namespace(api, NAMESPACE)
        await objects.create_pod(api, NAMESPACE, "web", labels={"app": "web"}, ips=[str(web.ip)])
        await objects.create_pod(api, NAMESPACE, "client", labels={"app": "client"}, ips=[str(client_pod.ip)])
    return web, client_pod


def tracker_argv(cluster: LocalCluster, port: int, *extra: str) -> list[str]:
    """``kube-ip-tracker`` for ``cluster`` on 127.0.0.1:port, without metrics."""
    argv = [*TRACKER_CMD, "--kubeconfig", str(cluster.kubeconfig), "--listen-address", f"127.0.0.1:{port}"]
    return [*argv, "--metrics-address", "", *extra]


async def test_agent_enforces_policies_from_the_api_server_and_cleans_up(
    cluster_factory, processes: list[Process], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    with PodNetwork(host_address=True) as net:
        web, client_pod = await web_and_client(cluster, net)
        tracker_port, metrics_port = free_port(), free_port()
        processes.append(Process(tracker_argv(cluster, tracker_port), tmp_path / "tracker.log"))
        name = f"kipt-{secrets.token_hex(3)}"
        queue = 20000 + secrets.randbelow(40000)
        agent = start_agent(tmp_path, cluster, tracker_port, name, metrics_port, queue)
        processes.append(agent)

        await eventually(lambda: metric(metrics_port, "kube_ip_agent_ready") == 1.0, "agent ready", agent, 60)
        assert await asyncio.to_thread(http_status, f"http://127.0.0.1:{metrics_port}/readyz") == 200
        # Without --pod-cidr the agent enforces the pods the tracker reports on node-1.
        await eventually(lambda: metric(metrics_port, "kube_ip_agent_local_pod_addresses") == 2.0, "local pods", agent)
        assert iptables_chains(name), "the agent installed no rules"
        assert client_pod.tcp_probe(web.ip, WEB_PORT), agent.tail()
        stream = client_pod.open_stream(web.ip, WEB_PORT)
        assert stream.exchange()

        async with cluster.api_client() as api:
            net_api = client.NetworkingV1Api(api)
            await net_api.create_namespaced_network_policy(NAMESPACE, deny_ingress("deny-web"))
            await eventually(lambda: not client_pod.tcp_probe(web.ip, WEB_PORT, timeout=0.5), "new denied", agent)
            await eventually(lambda: not stream.exchange(timeout=0.5), "open connection cut", agent)
            assert metric(metrics_port, "kube_ip_agent_networkpolicies") == 1.0
            # The verdict log names the policy; explain (root-only socket of this agent) agrees.
            assert f'policy="{NAMESPACE}/deny-web"' in agent.tail(200), agent.tail()
            sock = Path("/run/kube-ip-agent") / f"{name}.sock"
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            ends = ["--from", f"{cluster.name}/{NAMESPACE}/client", "--to", f"{cluster.name}/{NAMESPACE}/web"]
            explained = await asyncio.to_thread(
                subprocess.run,
                [*AGENT_CMD[:-1], "explain", "--socket", str(sock), *ends, "--port", f"{WEB_PORT}/TCP"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert explained.returncode == 1, explained.stderr  # denied
            assert f"deny: NetworkPolicy {NAMESPACE}/deny-web (isolated, no rule matched)" in explained.stdout

            await net_api.delete_namespaced_network_policy("deny-web", NAMESPACE)
            await eventually(lambda: client_pod.tcp_probe(web.ip, WEB_PORT, timeout=0.5), "allowed again", agent)

        # A second agent cannot take the same queue: it exits 1 saying why, and leaves no rules.
        second_name = f"kipt-{secrets.token_hex(3)}"
        other_slot = (slot_for(name) + 1) % MARK_SLOTS  # not the first agent's: the queue is what they share
        second = start_agent(tmp_path, cluster, tracker_port, second_name, free_port(), queue, slot=other_slot)
        processes.append(second)
        assert await asyncio.to_thread(second.proc.wait, 20) == 1, second.tail()
        assert f"cannot bind NFQUEUE {queue}" in second.tail(), second.tail()
        assert iptables_chains(second_name) == []
        assert client_pod.tcp_probe(web.ip, WEB_PORT, timeout=1.0), "the first agent still serves"

        assert agent.terminate() == 0, agent.tail()
        assert iptables_chains(name) == [], agent.tail()
        assert "Stopped" in agent.tail(5)
        assert not (Path("/run/kube-ip-agent") / f"{name}.sock").exists()


async def test_end_port_range_from_the_api_server_is_enforced_on_packets(
    cluster_factory, processes: list[Process], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """An ``endPort`` range (1.21+ API servers keep it) opens exactly its ports to real connections."""
    (cluster,) = cluster_factory(1)
    if cluster.apiserver_version < (1, 21):
        pytest.skip(f"kube-apiserver {cluster.apiserver_version} drops endPort (tests/agent/test_networkpolicies.py)")
    ports = (8080, 8085, 8090, 8091)
    with PodNetwork(host_address=True) as net:
        web, client_pod = await web_and_client(cluster, net)
        for port in ports[1:]:
            web.serve_tcp(port)
        tracker_port, metrics_port = free_port(), free_port()
        processes.append(Process(tracker_argv(cluster, tracker_port), tmp_path / "tracker.log"))
        name = f"kipt-{secrets.token_hex(3)}"
        agent = start_agent(tmp_path, cluster, tracker_port, name, metrics_port, 20000 + secrets.randbelow(40000))
        processes.append(agent)
        await eventually(lambda: metric(metrics_port, "kube_ip_agent_local_pod_addresses") == 2.0, "ready", agent, 60)
        assert all(client_pod.tcp_probe(web.ip, port) for port in ports), agent.tail()

        range_policy = deny_ingress("web-range")
        range_policy["spec"]["ingress"] = [  # type: ignore[index]
            {
                "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                "ports": [{"protocol": "TCP", "port": 8081, "endPort": 8090}],
            }
        ]
        async with cluster.api_client() as api:
            await client.NetworkingV1Api(api).create_namespaced_network_policy(NAMESPACE, range_policy)

        def reachable() -> dict[int, bool]:
            return {port: client_pod.tcp_probe(web.ip, port, timeout=0.5) for port in ports}

        expected = {8080: False, 8085: True, 8090: True, 8091: False}
        await eventually(lambda: reachable() == expected, f"only 8081-8090 reachable ({expected})", agent)
        assert agent.terminate() == 0, agent.tail()


async def test_restarted_agent_enforces_its_pods_before_the_tracker_answers(
    cluster_factory, processes: list[Process], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """After a crash the pod addresses come from the rules left behind: fail-closed holds at once.

    The tracker connection uses mTLS here (the agent's --tracker-* TLS flags).
    """
    (cluster,) = cluster_factory(1)
    name = f"kipt-{secrets.token_hex(3)}"
    ca = certs.TestCA(tmp_path)
    server_cert, server_key = ca.issue("tracker", hosts=["tracker.test"])
    client_cert, client_key = ca.issue("agent", client=True)
    tls = ["--tracker-ca-file", str(ca.cert_path), "--tracker-cert-file", str(client_cert)]
    tls += ["--tracker-key-file", str(client_key), "--tracker-server-name", "tracker.test", "--no-fail-open"]
    try:
        with PodNetwork(host_address=True) as net:
            web, client_pod = await web_and_client(cluster, net)
            tracker_port, queue = free_port(), 20000 + secrets.randbelow(40000)
            tracker_tls = ["--tls-cert-file", str(server_cert), "--tls-key-file", str(server_key)]
            tracker_tls += ["--tls-client-ca-file", str(ca.cert_path)]
            tracker = Process(tracker_argv(cluster, tracker_port, *tracker_tls), tmp_path / "tracker.log")
            processes.append(tracker)

            port = free_port()
            agent = start_agent(tmp_path, cluster, tracker_port, name, port, queue, *tls)
            processes.append(agent)
            await eventually(lambda: metric(port, "kube_ip_agent_local_pod_addresses") == 2.0, "ready", agent, 60)
            assert client_pod.tcp_probe(web.ip, WEB_PORT), agent.tail()

            agent.proc.kill()  # a crash: the rules stay
            agent.proc.wait(10)
            tracker.terminate()
            assert iptables_chains(name)

            port = free_port()
            restarted = start_agent(tmp_path, cluster, tracker_port, name, port, queue, *tls)
            processes.append(restarted)
            await eventually(lambda: "Keeping the 2 pod addresses" in restarted.tail(), "pods kept", restarted)
            await eventually(lambda: metric(port, "kube_ip_agent_ready") == 0.0, "metrics served", restarted)
            # Not ready (no tracker) and fail-closed: the pods' new connections are dropped.
            assert not client_pod.tcp_probe(web.ip, WEB_PORT, timeout=1.0), restarted.tail()

            processes.append(Process(tracker.argv, tmp_path / "tracker.log"))
            await eventually(lambda: metric(port, "kube_ip_agent_ready") == 1.0, "ready again", restarted, 60)
            await eventually(lambda: client_pod.tcp_probe(web.ip, WEB_PORT, timeout=0.5), "allowed", restarted)
            assert restarted.terminate(sig=signal.SIGINT) == 0, restarted.tail()  # Ctrl-C stops it cleanly too
            assert iptables_chains(name) == []
    finally:
        await Dataplane(DataplaneConfig(name=name), lambda _: True, lambda: True).remove_rules()


async def test_an_internal_error_exits_3_and_keeps_the_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A part of the agent dying (a bug) ends the process with 3 so it is restarted; the rules stay meanwhile."""
    from kube_ip_tracker.agent.cli import build_parser
    from kube_ip_tracker.agent.networkpolicies import NetworkPolicyInformer
    from kube_ip_tracker.agent.run import agent_config, run_agent

    async def broken(self: NetworkPolicyInformer) -> None:
        raise RuntimeError("a bug in the informer")

    monkeypatch.setattr(NetworkPolicyInformer, "run", broken)
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(
        "apiVersion: v1\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    name = f"kipt-{secrets.token_hex(3)}"
    argv = ["run", "--tracker-address", f"127.0.0.1:{free_port()}", "--cluster-id", "c"]
    argv += ["--kubeconfig", str(kubeconfig), "--name", name, "--metrics-address", "", "--pod-cidr", "10.99.0.0/24"]
    argv += ["--nfqueue-id", str(20000 + secrets.randbelow(40000)), "--mark-slot", str(slot_for(name))]
    config = agent_config(build_parser().parse_args(argv))
    try:
        with caplog.at_level(logging.ERROR):
            assert await asyncio.wait_for(run_agent(config), 30) == 3
        assert "Agent task networkpolicy-informer failed" in caplog.text
        assert "a bug in the informer" in caplog.text
        assert iptables_chains(name), "the rules stay for the restarted agent"
    finally:
        await Dataplane(DataplaneConfig(name=name), lambda _: True, lambda: True).remove_rules()
    assert iptables_chains(name) == []
