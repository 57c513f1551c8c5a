"""--client-auth=token on the real tracker process with real API servers: who syncs, who is refused and how."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import re
from pathlib import Path

import grpc
import grpc.aio
import pytest

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.client.token import AUTHORIZATION_METADATA, CLUSTER_METADATA, TOKEN_AUDIENCE, TokenOptions
from kube_ip_tracker.ctl import main as ctl_main
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import LocalCluster
from kube_ip_tracker.testing.sa_tokens import expired_copy, service_account_token
from kube_ip_tracker.testing.trackers import AGENT_OPTIONS, Agent

from .conftest import MakeTracker
from .tracker import TrackerProcess

pytestmark = pytest.mark.cluster


async def token(cluster: LocalCluster, sa: str, audience: str = TOKEN_AUDIENCE) -> str:
    namespace, name = sa.split("/")
    async with cluster.api_client() as api:
        return await service_account_token(api, namespace, name, audiences=[audience])


async def call_code(
    target: str, metadata: tuple[tuple[str, str], ...] | None, method: str = "Watch"
) -> grpc.StatusCode:
    """One RPC with ``metadata``: its status code (OK once a Watch sent its first message)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = tracker_pb2_grpc.TrackerStub(channel)
        try:
            if method == "Watch":
                call = stub.Watch(pb.WatchRequest(watcher_name="probe"), metadata=metadata, timeout=10)
                await call.read()
                call.cancel()
            else:
                await stub.ListClusters(pb.ListClustersRequest(), metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def reviews(tracker: TrackerProcess) -> int:
    """TokenReviews that authenticated a token (cache misses), from the tracker's metrics."""
    found = re.search(
        r'^kube_ip_tracker_token_reviews_total\{result="authenticated"\} (\S+)$', tracker.metrics_text(), re.M
    )
    return int(float(found.group(1))) if found else 0


def bearer(tok: str, cluster: str) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION_METADATA, f"Bearer {tok}"), (CLUSTER_METADATA, cluster))


def write_token(path: Path, tok: str) -> None:
    """Replace the token file atomically, as the kubelet's projected volume does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tok)
    os.replace(tmp, path)


async def test_token_of_allowed_service_account_syncs_and_others_are_refused(  # type: ignore[no-untyped-def]
    tmp_path, cluster_factory, tracker_process: MakeTracker
) -> None:
    clusters = cluster_factory(3)
    a, b, unknown = clusters
    async with b.api_client() as api:
        await objects.create_namespace(api, "demo")
        await objects.create_pod(api, "demo", "web", ips=["10.7.0.1"])
    tracker = tracker_process(
        ["--kubeconfig", str(a.kubeconfig), "--kubeconfig", str(b.kubeconfig), "--client-auth", "token"], metrics=True
    )
    tracker.start()
    await tracker.wait_listening()
    await tracker.eventually(tracker.serving, "the tracker serves")

    # An agent of cluster b with its service account's token syncs (a real client, token from a file).
    agent_token = await token(b, "kube-system/kube-ip-agent")
    token_file = tmp_path / "token"
    write_token(token_file, agent_token)
    agent = Agent(tracker, dataclasses.replace(AGENT_OPTIONS, token=TokenOptions(token_file, b.name))).start()
    try:
        await tracker.eventually(lambda: (b.name, "web") in agent.pod_names("demo"), "the agent with a token synced")
    finally:
        await agent.stop()
    # The tracker's own service account (a spoke calling its hub) is allowed too, on every method.
    spoke = await token(a, "kube-system/kube-ip-tracker")
    assert await call_code(tracker.target, bearer(spoke, a.name), "ListClusters") == grpc.StatusCode.OK

    other_sa = await token(b, "default/intruder")
    other_audience = await token(b, "kube-system/kube-ip-agent", audience="https://kubernetes.default.svc")
    expired = expired_copy(agent_token, b.base_dir / "pki" / "sa.key")
    from_unknown = await token(unknown, "kube-system/kube-ip-agent")
    refusals = {
        "no token": (None, grpc.StatusCode.UNAUTHENTICATED),
        "not a bearer token": (((AUTHORIZATION_METADATA, "Basic eDp5"),), grpc.StatusCode.UNAUTHENTICATED),
        "another service account": (bearer(other_sa, b.name), grpc.StatusCode.PERMISSION_DENIED),
        "expired": (bearer(expired, b.name), grpc.StatusCode.UNAUTHENTICATED),
        "another audience": (bearer(other_audience, b.name), grpc.StatusCode.UNAUTHENTICATED),
        "unknown cluster named": (bearer(from_unknown, unknown.name), grpc.StatusCode.UNAUTHENTICATED),
        "unknown cluster's token, known cluster named": (bearer(from_unknown, a.name), grpc.StatusCode.UNAUTHENTICATED),
        "token of b, cluster a named": (bearer(agent_token, a.name), grpc.StatusCode.UNAUTHENTICATED),
    }
    for what, (metadata, code) in refusals.items():
        for method in ("Watch", "ListClusters"):
            assert await call_code(tracker.target, metadata, method) == code, f"{what} ({method})"

    # Reviewed once per (cluster, token) that the API server accepted: the agent's, the spoke's, the
    # intruder's (refused by the tracker, but a valid token); repeated calls were answered from the cache.
    assert reviews(tracker) == 3
    metrics = tracker.metrics_text()
    for reason in ("missing_token", "malformed_token", "not_allowed", "invalid_token", "unknown_cluster"):
        assert f'kube_ip_tracker_auth_refusals_total{{reason="{reason}"}}' in metrics, reason
    log = tracker.log()
    assert "PERMISSION_DENIED" in log and "system:serviceaccount:default:intruder" in log
    refused = "\n".join(line for line in log.splitlines() if "Refused" in line)
    assert "token has expired" in refused and "invalid for the target audiences" in refused, refused
    for secret in (agent_token, other_sa, expired, other_audience, from_unknown, spoke):
        assert secret not in log and secret.split(".")[2] not in log, "a token was logged"
    assert tracker.alive


async def test_rotated_token_file_is_sent_on_the_next_call(
    tmp_path, cluster_factory, tracker_process: MakeTracker
) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    tracker = tracker_process(
        [
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--client-auth",
            "token",
            "--allowed-service-accounts",
            "ops/reader",
            "--token-cache-size",
            "1",
        ],
        metrics=True,
    )
    tracker.start()
    await tracker.wait_listening()
    token_file = tmp_path / "token"
    first = await token(cluster, "kube-system/kube-ip-agent")  # not allowed here
    write_token(token_file, first)
    source = TokenOptions(token_file, cluster.name).reloading()
    async with cluster.api_client() as api:
        await objects.create_namespace(api, "ops")
    await tracker.eventually(tracker.serving, "the tracker serves")
    assert await call_code(tracker.target, source.metadata()) == grpc.StatusCode.PERMISSION_DENIED
    write_token(token_file, await token(cluster, "ops/reader"))  # the kubelet rotates the file
    assert await call_code(tracker.target, source.metadata()) == grpc.StatusCode.OK
    assert source.reloads == 1 and reviews(tracker) == 2
    assert await call_code(tracker.target, source.metadata()) == grpc.StatusCode.OK
    assert reviews(tracker) == 2  # cached
    assert await call_code(tracker.target, bearer(first, cluster.name)) == grpc.StatusCode.PERMISSION_DENIED
    assert await call_code(tracker.target, source.metadata()) == grpc.StatusCode.OK
    assert reviews(tracker) == 4  # a cache of one token: each switch evicts the other

    # The operator command sends the token of its flags.
    flags = ["--address", tracker.target, "--tracker-token-file", str(token_file), "--tracker-token-cluster"]
    code, out, err = await ctl(["status", *flags, cluster.name])
    assert code == 0 and "SERVING" in out, err
    code, out, err = await ctl(["get", "10.255.0.1", *flags, cluster.name])
    assert "no pod owns 10.255.0.1" in err, err
    code, out, err = await ctl(["status", "--address", tracker.target])
    assert code != 0 and "UNAUTHENTICATED" in err, err


async def ctl(argv: list[str]) -> tuple[int, str, str]:
    """``kube-ip-tracker status|get ...``: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(ctl_main.main, argv, out, err)
    return code, out.getvalue(), err.getvalue()
