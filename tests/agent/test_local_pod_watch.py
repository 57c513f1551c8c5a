"""The local pod watch on a real API server: only this node's pods (the spec.nodeName field selector),
changes followed, deleted and terminal pods dropped, nothing used while the API server is cut off,
what changed meanwhile applied after it is back."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml

from kube_ip_tracker.agent.local_pods import LocalPodInformer
from kube_ip_tracker.agent.policy import PolicyEngine
from kube_ip_tracker.agent.policy.objects import ip_key
from kube_ip_tracker.kube.kubeconfig import static_specs
from kube_ip_tracker.model import NamespaceRecord
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import LocalCluster
from kube_ip_tracker.testing.polling import eventually
from kube_ip_tracker.testing.proxy import TcpProxy
from kube_ip_tracker.testing.trackers import background

from .test_networkpolicies import FAST, metric

pytestmark = pytest.mark.cluster

NS = "shop"


def kubeconfig_via(path: Path, cluster: LocalCluster, server: str) -> Path:
    """A kubeconfig of ``cluster`` that reaches it at ``server`` (a proxy in front of it)."""
    data = cluster.kubeconfig_dict()
    data["clusters"][0]["cluster"]["server"] = server  # type: ignore[index]
    path.write_text(yaml.safe_dump(data))
    return path


def local_name(informer: LocalPodInformer, ip: str) -> str | None:
    entry = informer.provisional(ip_key(ip))
    return None if entry is None else entry.name


async def test_the_watch_follows_this_nodes_pods_only_and_nothing_while_cut_off(
    cluster_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    proxy = await TcpProxy(cluster.port).start()
    try:
        (spec,) = static_specs([kubeconfig_via(tmp_path / "kc", cluster, proxy.url)])
        async with cluster.api_client() as api:
            await objects.create_namespace(api, NS)
            await objects.create_pod(api, NS, "web", labels={"app": "web"}, ips=["10.1.0.1"])
            await objects.create_pod(api, NS, "far", labels={"app": "web"}, node="node-2", ips=["10.1.0.2"])
        engine = PolicyEngine()
        engine.set_namespace(NamespaceRecord(spec.cluster_id, NS, {}))  # the tracker's data: the namespace only
        changes: list[int] = []
        informer = LocalPodInformer(spec, "node-1", engine, on_change=lambda: changes.append(1), options=FAST)
        caplog.set_level(logging.INFO, logger="kube_ip_tracker.agent.local_pods")
        async with background(informer.run()):
            await eventually(lambda: local_name(informer, "10.1.0.1") == "web", "node-1's pod listed")
            assert local_name(informer, "10.1.0.2") is None  # node-2's: not even listed
            assert len(informer.store) == 1
            assert metric("kube_ip_agent_local_pod_watch_connected", cluster=spec.cluster_id) == 1
            assert "pods of node node-1 listed (1 with an address)" in caplog.text

            async with cluster.api_client() as api:
                await objects.create_pod(api, NS, "db", labels={"app": "db"}, ips=["10.1.0.9"])
                await eventually(lambda: local_name(informer, "10.1.0.9") == "db", "new pod watched")
                await objects.label_pod(api, NS, "db", {"app": "db2"})
                await eventually(
                    lambda: informer.store.entries[(NS, "db")].labels == {"app": "db2"}, "relabelled pod followed"
                )
                await objects.set_pod_status(api, NS, "web", ips=["10.1.0.1"], phase="Succeeded")
                await eventually(lambda: local_name(informer, "10.1.0.1") is None, "terminal pod dropped")

                proxy.cut()
                await eventually(lambda: not informer.connected, "cut off noticed")
                assert local_name(informer, "10.1.0.9") is None, "nothing is used while the watch is cut off"
                assert metric("kube_ip_agent_local_pod_watch_connected", cluster=spec.cluster_id) == 0
                await objects.delete_pod(api, NS, "db")
                changes_before = len(changes)
                proxy.restore()
                await eventually(lambda: informer.connected, "connected again", 30)
                await eventually(lambda: (NS, "db") not in informer.store.entries, "deletion seen after the cut")
                assert len(changes) > changes_before
            assert "local pod watch connected again" in caplog.text
        await asyncio.sleep(0)
        assert not informer.connected  # cancelled: stopped
    finally:
        await proxy.stop()
