"""The tracker's unauthenticated endpoints (metrics HTTP, gRPC health) expose no pod data.

A cluster with pods, namespaces and nodes whose names, IPs and labels are distinctive markers; every
answer of /metrics, /healthz, /readyz, an unknown path and the gRPC health service is searched for them.
Cluster ids and counts may appear (they are configuration, not pod data).
"""

from __future__ import annotations

import urllib.error
import urllib.request

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.testing import objects

from .conftest import MakeTracker

pytestmark = pytest.mark.cluster

MARKERS = {
    "pod name": "zq-secret-pod",
    "pod IP": "10.77.66.55",
    "pod label value": "zq-label-value",
    "namespace": "zq-secret-ns",
    "namespace label value": "zq-ns-label",
    "node": "zq-secret-node",
    "node IP": "192.0.2.213",
}


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:  # 404 / 503 pages are answers too
        return e.read().decode(errors="replace")


async def test_metrics_and_health_expose_no_pod_data(cluster_factory, tracker_process: MakeTracker) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(1)[0]
    async with cluster.api_client() as api:
        await objects.create_namespace(api, MARKERS["namespace"], {"team": MARKERS["namespace label value"]})
        await objects.create_node(api, MARKERS["node"], {"zone": "z"}, internal_ip=MARKERS["node IP"])
        await objects.create_pod(
            api,
            MARKERS["namespace"],
            MARKERS["pod name"],
            labels={"app": MARKERS["pod label value"]},
            node=MARKERS["node"],
            ips=[MARKERS["pod IP"]],
        )
    tracker = tracker_process(["--kubeconfig", str(cluster.kubeconfig)], metrics=True)
    tracker.start()
    await tracker.wait_listening()
    base = f"http://127.0.0.1:{tracker.metrics_port}"
    await tracker.eventually(
        lambda: 'kube_ip_tracker_index_objects{cluster="cluster-1",kind="pod"} 1.0' in fetch(base + "/metrics"),
        "the pod is indexed",
    )
    async with grpc.aio.insecure_channel(tracker.target) as channel:
        # The index really holds the markers (so the search below could find them).
        found = await tracker_pb2_grpc.TrackerStub(channel).GetPodByIP(pb.GetPodByIPRequest(ip=MARKERS["pod IP"]))
        assert found.pod.name == MARKERS["pod name"]
        health = health_pb2_grpc.HealthStub(channel)
        answers = {
            "grpc health": str(await health.Check(health_pb2.HealthCheckRequest())),
            "grpc health (service)": str(
                await health.Check(health_pb2.HealthCheckRequest(service="kubeiptracker.v1.Tracker"))
            ),
        }
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health.Check(health_pb2.HealthCheckRequest(service=MARKERS["pod name"]))
        answers["grpc health (unknown service)"] = str(err.value.details())
    for path in ("/metrics", "/healthz", "/readyz", "/" + MARKERS["pod name"]):
        answers[path] = fetch(base + path).replace("/" + MARKERS["pod name"], "")  # a 404 may echo the path
    for where, text in answers.items():
        for what, marker in MARKERS.items():
            assert marker not in text, f"{where} exposes the {what} ({marker})"
    assert "kube_ip_tracker_index_objects" in answers["/metrics"]  # the scrape did return metrics
