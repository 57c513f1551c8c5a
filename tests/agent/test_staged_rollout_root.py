"""Staged policies and audit mode on real packets: a real API server, a real tracker process, the agent
as a real ``kube-ip-agent run`` process, pods as network namespaces.

* A staged default-deny changes no verdict; its would-deny lines name it and the metric counts them;
  removing the annotation enforces it within the revalidation bound.
* An agent in audit mode accepts what its policies deny and logs each denial once per tuple.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from kube_ip_tracker.agent.policy.staged import STAGED_ANNOTATION
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import LocalCluster, free_port
from kube_ip_tracker.testing.netns import PodNetwork

from .test_agent_run_root import (
    AGENT_CMD,
    NAMESPACE,
    WEB_PORT,
    Process,
    deny_ingress,
    eventually,
    metric,
    processes,  # noqa: F401 (the fixture)
    start_agent,
    tracker_argv,
    web_and_client,
)

pytestmark = [pytest.mark.root, pytest.mark.cluster]

PROBES = 5
# A policy change revalidates at once (after the agent's 0.2 s coalescing delay); the rest is the watch
# event's way from the API server and, on a loaded machine, scheduling.
REVALIDATION_BOUND = 2.0


def counter(port: int, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        found = re.match(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$", line)
        if found and all(f'{k}="{v}"' in (found.group(2) or "") for k, v in labels.items()):
            total += float(found.group(3))
    return total


def staged(policy: dict[str, object], value: str | None = "true") -> dict[str, object]:
    metadata = dict(policy["metadata"])  # type: ignore[call-overload]
    metadata["annotations"] = {STAGED_ANNOTATION: value} if value is not None else {}
    return {**policy, "metadata": metadata}


def readyz(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
        return str(resp.read().decode())


def log_lines(agent: Process, *needles: str) -> list[str]:
    return [line for line in agent.log_path.read_text(errors="replace").splitlines() if all(n in line for n in needles)]


@dataclass
class Agent:
    """A running agent, and what a restart of it needs."""

    process: Process
    metrics_port: int
    tracker_port: int
    name: str
    queue: int


async def ready_agent(
    cluster: LocalCluster,
    started: list[Process],
    tmp_path: Path,
    pods: int,
    *extra: str,
    restart: Agent | None = None,
) -> Agent:
    """An agent (``extra`` flags) for ``cluster``, once it is ready and enforces ``pods``: with a new tracker,
    or with ``restart``'s tracker, name and queue (the same agent started again)."""
    if restart is None:
        tracker_port = free_port()
        started.append(Process(tracker_argv(cluster, tracker_port), tmp_path / "tracker.log"))
        name, queue = f"kipt-{secrets.token_hex(3)}", 20000 + secrets.randbelow(40000)
    else:
        tracker_port, name, queue = restart.tracker_port, restart.name, restart.queue
    metrics_port = free_port()
    agent = start_agent(tmp_path, cluster, tracker_port, name, metrics_port, queue, *extra)
    started.append(agent)
    await eventually(lambda: metric(metrics_port, "kube_ip_agent_ready") == 1.0, "agent ready", agent, 60)
    await eventually(
        lambda: metric(metrics_port, "kube_ip_agent_local_pod_addresses") == float(pods), "local pods", agent
    )
    return Agent(agent, metrics_port, tracker_port, name, queue)


async def test_a_staged_default_deny_is_reported_then_enforced_when_unstaged(
    cluster_factory,  # type: ignore[no-untyped-def]
    processes: list[Process],  # noqa: F811
    tmp_path: Path,
) -> None:
    (cluster,) = cluster_factory(1)
    with PodNetwork(host_address=True) as net:
        web, client_pod = await web_and_client(cluster, net)
        # No verdict cache: every connection reaches the agent, so every one is counted.
        running = await ready_agent(
            cluster, processes, tmp_path, 2, "--metrics-per-policy", "--verdict-cache-size", "0"
        )
        agent, metrics_port = running.process, running.metrics_port
        assert client_pod.tcp_probe(web.ip, WEB_PORT), agent.tail()
        stream = client_pod.open_stream(web.ip, WEB_PORT)
        assert stream.exchange()

        async with cluster.api_client() as api:
            networking = client.NetworkingV1Api(api)
            await networking.create_namespaced_network_policy(NAMESPACE, staged(deny_ingress("default-deny")))
            await eventually(
                lambda: metric(metrics_port, "kube_ip_agent_networkpolicies_staged") == 1.0, "policy staged", agent
            )
            # The staged default-deny changes no verdict: new connections pass, the open one is not cut.
            would_deny = {"result": "would-deny", "direction": "ingress"}
            per_policy = {"policy": f"{NAMESPACE}/default-deny"}
            await eventually(
                lambda: (
                    client_pod.tcp_probe(web.ip, WEB_PORT)
                    and counter(metrics_port, "kube_ip_agent_staged_decisions_total", **would_deny) >= 1
                ),
                "a first would-deny decided",
                agent,
            )
            before = counter(metrics_port, "kube_ip_agent_staged_decisions_total", **would_deny)
            before_policy = counter(metrics_port, "kube_ip_agent_staged_policy_verdicts_total", **per_policy)
            for _ in range(PROBES):
                assert client_pod.tcp_probe(web.ip, WEB_PORT), agent.tail()
            assert stream.exchange(), agent.tail()
            assert counter(metrics_port, "kube_ip_agent_decisions_total", result="deny") == 0
            assert counter(metrics_port, "kube_ip_agent_dataplane_verdicts_total", result="drop") == 0
            # The metric counts every would-deny (each probe; revalidations of accepted connections add more).
            counted = counter(metrics_port, "kube_ip_agent_staged_decisions_total", **would_deny) - before
            assert counted >= PROBES
            counted = counter(metrics_port, "kube_ip_agent_staged_policy_verdicts_total", **per_policy) - before_policy
            assert counted >= PROBES
            # One would-deny line for the tuple (the probes and the stream share it), naming the staged policy.
            lines = log_lines(agent, '"Connection would be denied"')
            assert len(lines) == 1, agent.tail()
            assert (
                f'verdict="would-deny" direction="ingress" tier="NetworkPolicy" policy="{NAMESPACE}/default-deny"'
                in lines[0]
            )
            assert 'enforced="allow"' in lines[0] and f'src="{cluster.name}/{NAMESPACE}/client"' in lines[0]

            # explain, asked over the agent's socket, shows the staged outcome beside the enforced one.
            ends = ["--from", f"{cluster.name}/{NAMESPACE}/client", "--to", f"{cluster.name}/{NAMESPACE}/web"]
            sock = f"/run/kube-ip-agent/{running.name}.sock"
            explained = await asyncio.to_thread(
                subprocess.run,
                [*AGENT_CMD[:-1], "explain", "--socket", sock, *ends, "--port", f"{WEB_PORT}/TCP"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert explained.returncode == 0, explained.stderr  # allowed: the staged policy is not enforced
            assert "with staged policies: would deny (staged policies are not enforced)" in explained.stdout
            assert (
                f"  with staged policies: deny: NetworkPolicy {NAMESPACE}/default-deny (isolated, no rule matched)"
                in explained.stdout
            )

            # Removing the annotation enforces the policy: new connections are denied, the open one is cut.
            started = time.monotonic()
            await networking.replace_namespaced_network_policy(
                "default-deny", NAMESPACE, staged(deny_ingress("default-deny"), None)
            )
            await eventually(
                lambda: not client_pod.tcp_probe(web.ip, WEB_PORT, timeout=0.2),
                "new connection denied",
                agent,
                REVALIDATION_BOUND,
            )
            await eventually(lambda: not stream.exchange(timeout=0.2), "open connection cut", agent, REVALIDATION_BOUND)
            print(f"unstaged policy enforced on packets after {time.monotonic() - started:.3f}s")
            assert metric(metrics_port, "kube_ip_agent_networkpolicies_staged") == 0.0
            assert counter(metrics_port, "kube_ip_agent_decisions_total", result="deny") >= 1
            assert (
                f'"Connection denied" verdict="deny" direction="ingress" tier="NetworkPolicy" policy="{NAMESPACE}/default-deny"'
                in agent.tail(300)
            )
        assert agent.terminate() == 0, agent.tail()


async def test_audit_mode_accepts_what_the_policies_deny_and_logs_each_denial_once(
    cluster_factory,  # type: ignore[no-untyped-def]
    processes: list[Process],  # noqa: F811
    tmp_path: Path,
) -> None:
    (cluster,) = cluster_factory(1)
    with PodNetwork(host_address=True) as net:
        web, client_pod = await web_and_client(cluster, net)
        other = net.add_pod("other")
        async with cluster.api_client() as api:
            await objects.create_pod(api, NAMESPACE, "other", labels={"app": "other"}, ips=[str(other.ip)])
            await client.NetworkingV1Api(api).create_namespaced_network_policy(NAMESPACE, deny_ingress("deny-web"))
        running = await ready_agent(cluster, processes, tmp_path, 3, "--policy-audit-mode", "--log-verdicts-rate", "5")
        agent, metrics_port = running.process, running.metrics_port
        assert metric(metrics_port, "kube_ip_agent_policy_audit_mode") == 1.0
        assert "does not enforce" in await asyncio.to_thread(readyz, metrics_port)
        assert log_lines(agent, "Starting in policy audit mode: this node does not enforce policies"), agent.tail()

        # deny-web denies every ingress to web: in audit mode every connection is accepted all the same.
        await eventually(
            lambda: (
                other.tcp_probe(web.ip, WEB_PORT)
                and counter(metrics_port, "kube_ip_agent_audit_accepted_total", direction="ingress") >= 1
            ),
            "a first denial decided and accepted",
            agent,
        )
        denied = counter(metrics_port, "kube_ip_agent_decisions_total", result="deny")
        audited = counter(metrics_port, "kube_ip_agent_audit_accepted_total", direction="ingress")
        for _ in range(PROBES):
            assert client_pod.tcp_probe(web.ip, WEB_PORT), agent.tail()
            assert other.tcp_probe(web.ip, WEB_PORT), agent.tail()
        assert counter(metrics_port, "kube_ip_agent_dataplane_verdicts_total", result="drop") == 0
        assert counter(metrics_port, "kube_ip_agent_decisions_total", result="deny") - denied >= 2 * PROBES
        assert counter(metrics_port, "kube_ip_agent_audit_accepted_total", direction="ingress") - audited >= 2 * PROBES
        # Each denial is logged once per tuple (two tuples: two lines), counted as usual, marked accepted.
        lines = log_lines(agent, '"Connection denied"')
        assert len(lines) == 2, agent.tail()
        for source in ("client", "other"):
            (line,) = [line for line in lines if f'src="{cluster.name}/{NAMESPACE}/{source}"' in line]
            assert f'policy="{NAMESPACE}/deny-web"' in line and 'audit="accepted"' in line
        assert counter(metrics_port, "kube_ip_agent_verdict_log_suppressed_total", reason="duplicate") >= 2 * (
            PROBES - 1
        )

        # Leaving audit mode is a restart without the flag: what audit mode accepted is cut once it is ready.
        stream = client_pod.open_stream(web.ip, WEB_PORT)
        assert stream.exchange(), agent.tail()
        assert agent.terminate() == 0, agent.tail()
        enforcing = await ready_agent(cluster, processes, tmp_path, 3, restart=running)
        assert metric(enforcing.metrics_port, "kube_ip_agent_policy_audit_mode") == 0.0
        await eventually(lambda: not stream.exchange(timeout=0.3), "audit-accepted connection cut", enforcing.process)
        assert not client_pod.tcp_probe(web.ip, WEB_PORT, timeout=0.5), enforcing.process.tail()
        assert enforcing.process.terminate() == 0, enforcing.process.tail()
