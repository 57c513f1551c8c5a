"""Two clusters, one agent process per cluster on one host: egress is enforced by the source's agent,
ingress by the destination's, each from its own cluster's NetworkPolicies."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import free_port
from kube_ip_tracker.testing.netns import PodNetwork

from .test_agent_run_root import (
    AGENT_CMD,
    NAMESPACE,
    TRACKER_CMD,
    WEB_PORT,
    Process,
    eventually,
    iptables_chains,
    metric,
)
from .test_agent_run_root import processes as processes

# ~35 s (two clusters, a tracker and two agents): host sharing and the direction rule have fast tests too
# (test_agent_run_coexist_root.py, test_agent_run_units.py).
pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow]


def deny_all(direction: str) -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"deny-{direction.lower()}", "namespace": NAMESPACE},
        "spec": {"podSelector": {}, "policyTypes": [direction]},
    }


def denials(port: int, direction: str) -> float:
    return metric(port, f'kube_ip_agent_decisions_total{{direction="{direction}",result="deny"}}') or 0.0


async def test_each_agent_enforces_its_own_side_of_a_cross_cluster_connection(
    cluster_factory, processes: list[Process], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    clusters = cluster_factory(2)
    with PodNetwork(host_address=True) as net:
        pods = {cluster.name: net.add_pod(cluster.name[-1] + "web") for cluster in clusters}
        for cluster in clusters:
            pods[cluster.name].serve_tcp(WEB_PORT)
            async with cluster.api_client() as api:
                await objects.create_namespace(api, NAMESPACE)
                ip = str(pods[cluster.name].ip)
                await objects.create_pod(api, NAMESPACE, "web", labels={"app": "web"}, node="node-1", ips=[ip])

        tracker_port = free_port()
        argv = [*TRACKER_CMD, "--kubeconfig", str(clusters.merged_kubeconfig)]
        argv += ["--listen-address", f"127.0.0.1:{tracker_port}", "--metrics-address", ""]
        processes.append(Process(argv, tmp_path / "tracker.log"))
        first_queue = 20000 + secrets.randbelow(40000)
        agents: dict[str, tuple[Process, int, str]] = {}
        for index, cluster in enumerate(clusters):
            port, name = free_port(), f"kipt-{secrets.token_hex(3)}"
            argv = [*AGENT_CMD, "--tracker-address", f"127.0.0.1:{tracker_port}"]
            argv += ["--kubeconfig", str(cluster.kubeconfig), "--cluster-id", cluster.name, "--node-name", "node-1"]
            argv += ["--nfqueue-id", str(first_queue + index), "--name", name, "--mark-slot", str(4 + index)]
            argv += ["--metrics-address", f"127.0.0.1:{port}", "--log-level", "debug"]
            agent = Process(argv, tmp_path / f"agent-{cluster.name}.log")
            processes.append(agent)
            agents[cluster.name] = (agent, port, name)
        for agent, port, _ in agents.values():
            await eventually(lambda p=port: metric(p, "kube_ip_agent_ready") == 1.0, "agent ready", agent, 60)

        (c1, (agent1, port1, _)), (c2, (agent2, port2, _)) = agents.items()
        one, two = pods[c1], pods[c2]
        assert one.tcp_probe(two.ip, WEB_PORT) and two.tcp_probe(one.ip, WEB_PORT), agent1.tail() + agent2.tail()

        async with clusters[0].api_client() as api1, clusters[1].api_client() as api2:
            net1, net2 = client.NetworkingV1Api(api1), client.NetworkingV1Api(api2)
            # cluster-1 pods may send nothing: enforced by cluster-1's agent, on the source side.
            await net1.create_namespaced_network_policy(NAMESPACE, deny_all("Egress"))
            await eventually(lambda: not one.tcp_probe(two.ip, WEB_PORT, timeout=0.5), "egress denied", agent1)
            assert two.tcp_probe(one.ip, WEB_PORT), "ingress to cluster-1 is not isolated"
            assert denials(port1, "egress") > 0 and denials(port2, "egress") == 0
            await net1.delete_namespaced_network_policy("deny-egress", NAMESPACE)
            await eventually(lambda: one.tcp_probe(two.ip, WEB_PORT, timeout=0.5), "egress allowed again", agent1)

            # cluster-2 pods accept nothing: enforced by cluster-2's agent, on the destination side.
            await net2.create_namespaced_network_policy(NAMESPACE, deny_all("Ingress"))
            await eventually(lambda: not one.tcp_probe(two.ip, WEB_PORT, timeout=0.5), "ingress denied", agent2)
            assert two.tcp_probe(one.ip, WEB_PORT), "egress from cluster-2 is not isolated"
            assert denials(port2, "ingress") > 0 and denials(port1, "ingress") == 0

        for agent, _, name in agents.values():
            assert agent.terminate() == 0, agent.tail()
            assert iptables_chains(name) == []
