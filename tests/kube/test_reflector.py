"""The reflector by itself against a real API server: any resource (a core kind the programs do not
use, a CRD) and a plain store; list, watch, bookmarks, status callbacks, metrics, relist on 410;
streaming lists where the server serves them and the paginated fallback where it does not.

Which servers stream (the streaming tests run against every build): 1.27+ serves WatchList;
from etcd directly (``--watch-cache=false``) always, from the watch cache only when etcd has
RequestWatchProgress (3.4.31+, 3.5.13+; Debian 12's 3.4.23 has not: the stream ends in an ERROR 500).
Debian's 1.20 rejects the request (422, resourceVersionMatch forbidden for watch)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import urllib.request
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from prometheus_client import REGISTRY

from kube_ip_tracker.kube.reflector import InformerOptions, Reflector, Resource
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import LocalCluster
from kube_ip_tracker.testing.trackers import background, eventually

pytestmark = pytest.mark.cluster

FAST = InformerOptions(page_size=2, backoff_base=0.05, backoff_cap=0.5, watch_timeout=30, request_timeout=10)
NS = "cfg"

Key = tuple[str, str]


def key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace") or "", meta["name"]


class DictStore:
    """A store keeping each object's data by (namespace, name), and what was called on it."""

    def __init__(self) -> None:
        self.objects: dict[Key, Any] = {}
        self.calls: list[tuple[str, Key]] = []

    def __len__(self) -> int:
        return len(self.objects)

    def replacement(self) -> DictReplacement:
        return DictReplacement(self)

    def upsert(self, obj: dict[str, Any]) -> None:
        self.objects[key(obj)] = obj.get("data") or obj.get("spec")
        self.calls.append(("upsert", key(obj)))

    def delete(self, obj: dict[str, Any]) -> None:
        self.objects.pop(key(obj), None)
        self.calls.append(("delete", key(obj)))


class DictReplacement:
    def __init__(self, store: DictStore) -> None:
        self.store = store
        self.objects: dict[Key, Any] = {}

    def add(self, obj: dict[str, Any]) -> None:
        self.objects[key(obj)] = obj.get("data") or obj.get("spec")

    def commit(self, resource_version: str) -> str:
        self.store.objects = self.objects
        self.store.calls.append(("replace", ("", resource_version)))
        return f"{len(self.objects)} held"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def running(reflector: Reflector, api: client.ApiClient) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    return background(reflector.run(api))


def etcd_has_progress_requests(cluster: LocalCluster) -> bool:
    """etcd answers RequestWatchProgress (3.4.31+ or 3.5.13+), which a watch cache needs to stream."""
    with urllib.request.urlopen(f"{cluster.etcd_url}/version", timeout=10) as resp:
        major, minor, patch = (int(p) for p in json.load(resp)["etcdserver"].split(".")[:3])
    return (major, minor, patch) >= (3, 5, 13) or ((major, minor) == (3, 4) and patch >= 31)


def serves_streaming_lists(cluster: LocalCluster) -> bool:
    assert cluster.apiserver_version is not None
    if cluster.apiserver_version < (1, 27):
        return False
    return not cluster.watch_cache or etcd_has_progress_requests(cluster)


def list_lines(caplog: pytest.LogCaptureFixture, cid: str) -> list[str]:
    return [m for m in caplog.messages if m.startswith(f"Cluster {cid}: listed ")]


def configmap(name: str, value: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": {"v": value}}


async def test_reflector_lists_watches_and_reports(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    cid = "reflector-plain"
    async with cluster.api_client() as api:
        await objects.create_namespace(api, NS)
        core = client.CoreV1Api(api)
        for name in ("a", "b", "c"):  # two list pages
            await core.create_namespaced_config_map(NS, configmap(name, "1"))

        store = DictStore()
        calls: list[str] = []
        failures: list[str] = []
        reflector = Reflector(
            cid,
            Resource.core("configmaps"),
            store,
            dataclasses.replace(FAST, streaming_lists=False),  # streaming: the next test
            on_listed=lambda: calls.append("listed"),
            on_watching=lambda: calls.append("watching"),
            on_failure=failures.append,
        )
        async with running(reflector, api) as task:
            await eventually(lambda: "watching" in calls, "watch opened")
            assert calls[:2] == ["listed", "watching"]
            assert {k: v for k, v in store.objects.items() if k[0] == NS} == {(NS, n): {"v": "1"} for n in "abc"}
            assert metric("kube_ip_tracker_source_lists_total", cluster=cid, kind="configmaps", reason="initial") == 1
            listed_at = reflector.resource_version
            assert listed_at

            await core.replace_namespaced_config_map("b", NS, configmap("b", "2"))
            await core.create_namespaced_config_map(NS, configmap("d", "1"))
            await core.delete_namespaced_config_map("a", NS)
            await eventually(lambda: (NS, "a") not in store.objects, "delete applied")
            assert store.objects[(NS, "b")] == {"v": "2"} and (NS, "d") in store.objects
            assert store.calls[-3:] == [("upsert", (NS, "b")), ("upsert", (NS, "d")), ("delete", (NS, "a"))]
            assert int(reflector.resource_version or 0) > int(listed_at)
            assert metric("kube_ip_tracker_source_objects", cluster=cid, kind="configmaps") == len(store)
            for etype in ("ADDED", "MODIFIED", "DELETED"):
                assert metric("kube_ip_tracker_source_events_total", cluster=cid, kind="configmaps", type=etype) >= 1
            assert metric("kube_ip_tracker_source_watches_total", cluster=cid, kind="configmaps") == 1
            assert not failures and not task.done()


@pytest.mark.every_apiserver
@pytest.mark.parametrize(
    ("streaming", "watch_cache"),
    [(True, False), (True, True), (False, False)],
    ids=["stream", "stream-cache", "paginate"],
)
async def test_full_list_streams_where_served_and_pages_otherwise(
    cluster_factory, caplog, streaming, watch_cache
) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1, watch_cache=watch_cache)
    cid = f"reflector-list-{streaming}-{watch_cache}-{cluster.apiserver_version}"  # metrics per test and build
    caplog.set_level(logging.DEBUG, logger="kube_ip_tracker.kube.reflector")
    async with cluster.api_client() as api:
        await objects.create_namespace(api, NS)
        core = client.CoreV1Api(api)
        for name in ("a", "b", "c"):
            await core.create_namespaced_config_map(NS, configmap(name, "1"))
        streams = streaming and serves_streaming_lists(cluster)

        store = DictStore()
        listed: list[str] = []
        options = dataclasses.replace(FAST, streaming_lists=streaming)
        reflector = Reflector(cid, Resource.core("configmaps"), store, options, on_listed=lambda: listed.append("x"))
        async with running(reflector, api) as task:
            await eventually(lambda: listed, "listed")
            assert {k: v for k, v in store.objects.items() if k[0] == NS} == {(NS, n): {"v": "1"} for n in "abc"}
            assert reflector.resource_version
            await core.create_namespaced_config_map(NS, configmap("d", "1"))
            await eventually(lambda: (NS, "d") in store.objects, "a change after the list applied")
            assert not task.done()

    (line,) = list_lines(caplog, cid)
    assert line.endswith("(initial, streamed)" if streams else "(initial, paginated)"), line
    fallbacks = metric("kube_ip_tracker_source_list_fallbacks_total", cluster=cid, kind="configmaps")
    assert fallbacks == (1 if streaming and not streams else 0)
    if streams:  # the list and the change came over one watch
        assert metric("kube_ip_tracker_source_watches_total", cluster=cid, kind="configmaps") == 1
        assert ("upsert", (NS, "d")) in store.calls and store.calls[0][0] == "replace"
    assert metric("kube_ip_tracker_source_errors_total", cluster=cid, kind="configmaps", reason="api") == 0


@pytest.mark.every_apiserver
@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "paginate"])
async def test_expired_watch_relists_and_drops_what_is_gone(cluster_factory, caplog, streaming) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1, watch_cache=False)
    cid = f"reflector-410-{streaming}-{cluster.apiserver_version}"
    caplog.set_level(logging.DEBUG, logger="kube_ip_tracker.kube.reflector")
    async with cluster.api_client() as api:
        await objects.create_namespace(api, NS)
        core = client.CoreV1Api(api)
        for name in ("gone", "kept"):
            await core.create_namespaced_config_map(NS, configmap(name, "1"))
        streams = streaming and serves_streaming_lists(cluster)
        store = DictStore()
        reflector = Reflector(
            cid, Resource.core("configmaps"), store, dataclasses.replace(FAST, streaming_lists=streaming)
        )
        async with running(reflector, api):
            await eventually(lambda: (NS, "kept") in store.objects, "listed")
        old_version = reflector.resource_version

        # While the reflector is stopped, objects change and etcd forgets the history.
        await core.delete_namespaced_config_map("gone", NS)
        await core.create_namespaced_config_map(NS, configmap("new", "1"))
        cluster.compact_etcd()

        async with running(reflector, api):  # resumes from old_version: 410, relist, reconcile
            await eventually(lambda: {(NS, "kept"), (NS, "new")} <= store.objects.keys(), "relisted")
            assert (NS, "gone") not in store.objects
        assert reflector.resource_version != old_version
        assert metric("kube_ip_tracker_source_lists_total", cluster=cid, kind="configmaps", reason="expired") == 1
        assert metric("kube_ip_tracker_source_errors_total", cluster=cid, kind="configmaps", reason="expired") == 1
    how = "streamed" if streams else "paginated"
    assert [line.rsplit(" (", 1)[1] for line in list_lines(caplog, cid)] == [f"initial, {how})", f"expired, {how})"]


GROUP, VERSION, PLURAL = "example.kube-ip-tracker.io", "v1", "widgets"


def widget_crd() -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget"},
            "versions": [{"name": VERSION, "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}],
        },
    }


async def test_a_cluster_scoped_custom_resource_is_one_more_instance(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    cid = "reflector-crd"
    async with cluster.api_client() as api:
        if cluster.apiserver_version < (1, 21):
            # Debian's 1.20 build (Go 1.19 with reflect2 1.0.1) dies of SIGSEGV serving a custom object.
            pytest.skip("the Debian 1.20 build of kube-apiserver cannot serve custom objects")
        await client.ApiextensionsV1Api(api).create_custom_resource_definition(widget_crd())
        custom = client.CustomObjectsApi(api)

        async def create(name: str, size: int) -> None:
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Widget",
                "metadata": {"name": name},
                "spec": {"size": size},
            }
            await custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)

        async def established() -> bool:
            crd = await client.ApiextensionsV1Api(api).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

        async def served() -> bool:  # a new CRD takes a moment to be served
            try:
                await create("first", 1)
            except client.ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            except aiohttp.ServerDisconnectedError:  # the API server restarts its handlers for the new group
                return False
            return True

        await eventually(established, "CRD established")
        await eventually(served, "CRD served")
        store = DictStore()
        reflector = Reflector(cid, Resource.of(GROUP, VERSION, PLURAL), store, FAST)
        async with running(reflector, api):
            await eventually(lambda: store.objects.get(("", "first")) == {"size": 1}, "custom object listed")
            await create("second", 2)
            await custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "first")
            await eventually(lambda: store.objects == {("", "second"): {"size": 2}}, "custom object events applied")
        assert metric("kube_ip_tracker_source_objects", cluster=cid, kind=PLURAL) == 1
