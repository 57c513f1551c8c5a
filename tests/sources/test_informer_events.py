"""Informer event handling and cluster status, without an API server."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from kube_ip_tracker.kube.errors import ConnectError, ResourceExpired, WatchError, describe_error
from kube_ip_tracker.kube.reflector import InformerOptions, Reflector
from kube_ip_tracker.model import Kind
from kube_ip_tracker.sources.kube import informer as make_informer
from kube_ip_tracker.sources.status import ClusterState

from .recording import RecordingWriter


def make(kind: Kind = Kind.POD) -> tuple[Reflector, RecordingWriter, ClusterState]:
    writer = RecordingWriter()
    state = ClusterState("c1", writer)
    informer = make_informer("c1", kind, api=None, writer=writer, state=state, options=InformerOptions())
    informer.resource_version = "1"
    return informer, writer, state


def pod_event(etype: str, rv: str, *, ip: str | None = "10.0.0.1", **spec: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running"}
    if ip:
        status["podIPs"] = [{"ip": ip}]
    return {
        "type": etype,
        "object": {
            "metadata": {"name": "p", "namespace": "ns", "resourceVersion": rv, "labels": {"a": "1"}},
            "spec": {"nodeName": "n1", **spec},
            "status": status,
        },
    }


async def test_events_update_index_and_resource_version() -> None:
    informer, writer, _ = make()
    informer.handle_event(pod_event("ADDED", "5"))
    assert informer.resource_version == "5"
    assert writer.pod("c1", "ns", "p").ips == ("10.0.0.1",)
    # An update that changes nothing the index keeps is not written.
    informer.handle_event(pod_event("MODIFIED", "6"))
    assert [c[0] for c in writer.calls] == ["upsert"]
    informer.handle_event(pod_event("MODIFIED", "7", ip="10.0.0.2"))
    assert writer.pod("c1", "ns", "p").ips == ("10.0.0.2",)
    informer.handle_event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "42"}}})
    assert informer.resource_version == "42"
    assert len(writer.calls) == 2
    informer.handle_event(pod_event("DELETED", "43", ip="10.0.0.2"))
    assert writer.pod("c1", "ns", "p") is None
    assert writer.calls[-1] == ("delete", Kind.POD, "c1", "ns", "p")


async def test_pod_that_stops_qualifying_is_deleted_once() -> None:
    informer, writer, _ = make()
    informer.handle_event(pod_event("ADDED", "2"))
    informer.handle_event(pod_event("MODIFIED", "3", ip=None))  # IP gone
    assert writer.pod("c1", "ns", "p") is None
    informer.handle_event(pod_event("MODIFIED", "4", ip=None))
    informer.handle_event(pod_event("DELETED", "5", ip=None))
    assert [c[0] for c in writer.calls] == ["upsert", "delete"]
    # A hostNetwork pod is never written.
    informer.handle_event(pod_event("ADDED", "6", hostNetwork=True))
    assert [c[0] for c in writer.calls] == ["upsert", "delete"]


async def test_error_events() -> None:
    informer, _, _ = make()
    with pytest.raises(ResourceExpired):
        informer.handle_event({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}})
    with pytest.raises(WatchError) as err:
        informer.handle_event({"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "boom"}})
    assert "500" in str(err.value) and "boom" in str(err.value)
    assert informer.resource_version == "1"


async def test_cluster_state_publishes_changes_only() -> None:
    writer = RecordingWriter()
    state = ClusterState("c1", writer)
    state.publish()
    state.connect_ok("uid-1")
    for kind in (Kind.POD, Kind.NAMESPACE):
        state.kind_listed(kind)
    assert not writer.status["c1"].synced and writer.status["c1"].connected
    state.kind_listed(Kind.NODE)
    assert writer.status["c1"].synced and state.synced_event.is_set()
    state.kind_failed(Kind.POD, "watch pods: timed out")
    status = writer.status["c1"]
    assert (status.connected, status.stale, status.last_error) == (False, True, "watch pods: timed out")
    assert status.kube_system_uid == "uid-1"
    count = len(writer.calls)
    state.kind_ok(Kind.NODE)  # was not failing: nothing to publish
    assert len(writer.calls) == count
    state.kind_ok(Kind.POD)
    assert writer.status["c1"].connected and writer.status["c1"].last_error == ""


def api_error(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return exc


def test_describe_error() -> None:
    assert describe_error(api_error(401, "Unauthorized"), "list pods") == (
        "unauthorized",
        "list pods: unauthorized (401): the API server rejected the credentials",
    )
    label, message = describe_error(
        api_error(403, 'pods is forbidden: User "x" cannot list resource "pods"'), "list pods"
    )
    assert label == "forbidden" and message.startswith("list pods: forbidden (403): pods is forbidden")
    assert describe_error(api_error(410, "too old"), "watch pods")[0] == "expired"
    too_large = "Timeout: Too large resource version: 200, current: 100"
    assert describe_error(api_error(504, too_large), "watch pods")[0] == "expired"
    assert describe_error(WatchError(504, too_large), "watch pods")[0] == "expired"
    assert describe_error(WatchError(500, "boom"), "watch pods") == ("api", "watch pods: watch error 500: boom")
    assert describe_error(TimeoutError(), "watch pods") == ("timeout", "watch pods: timed out")
    assert describe_error(aiohttp.ServerDisconnectedError(), "watch pods")[0] == "unreachable"
    try:
        raise ConnectError("get namespace kube-system: forbidden (403): no") from api_error(403, "no")
    except ConnectError as exc:
        assert describe_error(exc, "connect") == ("forbidden", "get namespace kube-system: forbidden (403): no")
