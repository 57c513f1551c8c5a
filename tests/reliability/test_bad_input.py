"""Bad input to the real tracker process: it names the problem and exits at start, or keeps the good clusters.

Flag and kubeconfig errors handled by the parser and the kubeconfig loader have unit tests in
tests/test_tracker_cli.py and tests/sources/test_kubeconfig.py; here the whole process is checked.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.cli import informer_options, parse_args
from kube_ip_tracker.kube.reflector import InformerOptions
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import LocalCluster

from .conftest import MakeTracker
from .tracker import TRACKER_CMD


def start(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRACKER_CMD, "--metrics-address", "", "--listen-address", "127.0.0.1:0", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xa7\x00\xff binary", "cannot read it"),
        (b"", "not a kubeconfig"),
        (b"- just\n- a list\n", "not a kubeconfig"),
        (b"a: [unclosed\n", "not valid YAML"),
        (
            b"clusters: [{name: c, cluster: {}}]\nusers: [{name: u, user: {}}]\n"
            b"contexts: [{name: c, context: {cluster: c, user: u}}]\n",
            "cluster 'c' has no server",
        ),
    ],
)
def test_wrong_kubeconfig_exits_1_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    result = start("--kubeconfig", str(path))
    assert result.returncode == 1, result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("E"))
    assert f"kubeconfig {path}" in line and message in result.stderr


def test_bad_flag_values_exit_2_naming_the_flag() -> None:
    for argv, message in (
        (["--max-watchers=-3"], "--max-watchers: invalid count '-3'"),
        (["--kubeconfig-dir-interval", "0"], "--kubeconfig-dir-interval must be positive"),
        (["--shutdown-grace=-1s"], "--shutdown-grace: invalid duration '-1s'"),
        (["--kube-watch-timeout=0"], "--kube-watch-timeout: invalid duration '0': must be positive"),
        (["--kube-probe-interval=soon"], "--kube-probe-interval: invalid duration 'soon'"),
        (["--kube-probe-failures=0"], "--kube-probe-failures: invalid count '0'"),
        (
            ["--kube-backoff-base=5s", "--kube-backoff-cap=1s"],
            "--kube-backoff-cap (1s) must not be below --kube-backoff-base (5s)",
        ),
    ):
        result = start(*argv)
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr)


def test_source_timeout_flags_default_to_the_informer_defaults_and_reach_the_options() -> None:
    assert informer_options(parse_args([])) == InformerOptions()
    argv = ["--kube-watch-timeout=2s", "--kube-watch-read-margin=1s", "--kube-connect-timeout=3s"]
    argv += ["--kube-request-timeout=4s", "--kube-backoff-base=0.1s", "--kube-backoff-cap=1s"]
    argv += ["--kube-probe-interval=500ms", "--kube-probe-timeout=0.25s", "--kube-probe-failures=6"]
    assert informer_options(parse_args(argv)) == InformerOptions(
        watch_timeout=2,
        watch_read_margin=1,
        connect_timeout=3,
        request_timeout=4,
        backoff_base=0.1,
        backoff_cap=1,
        probe_interval=0.5,
        probe_timeout=0.25,
        probe_failures_to_reconnect=6,
    )


def kubeconfig_as(cluster: LocalCluster, cluster_id: str, **cluster_fields: Any) -> dict[str, Any]:
    """The cluster's kubeconfig under another cluster id, with fields of its ``cluster`` entry replaced."""
    config = cluster.kubeconfig_dict()
    config["clusters"][0]["cluster"].update(cluster_fields)  # type: ignore[index]
    config["clusters"][0]["name"] = cluster_id  # type: ignore[index]
    config["contexts"] = [{"name": cluster_id, "context": {"cluster": cluster_id, "user": config["users"][0]["name"]}}]  # type: ignore[index]
    config["current-context"] = cluster_id
    return config


def write(path: Path, config: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config) if not isinstance(config, str) else config)
    tmp.rename(path)


@pytest.mark.cluster
async def test_bad_clusters_at_run_time_are_reported_and_the_others_kept(  # type: ignore[no-untyped-def]
    tmp_path: Path, cluster_factory, tracker_process: MakeTracker
) -> None:
    cluster = cluster_factory(1)[0]
    async with cluster.api_client() as api:
        await objects.create_namespace(api, "demo")
        await objects.create_pod(api, "demo", "web", ips=["10.7.0.1"])
    configs = tmp_path / "clusters"
    configs.mkdir()
    write(configs / "good.yaml", cluster.kubeconfig_dict())
    write(configs / "no-ca.yaml", kubeconfig_as(cluster, "no-ca", **{"certificate-authority": "/nonexistent/ca.crt"}))
    unreachable = kubeconfig_as(cluster, "unreachable", server="https://127.0.0.1:1")
    write(configs / "unreachable.yaml", unreachable)
    tracker = tracker_process(["--kubeconfig-dir", str(configs), "--kubeconfig-dir-interval", "0.2s"])
    tracker.start()
    await tracker.wait_listening()
    async with grpc.aio.insecure_channel(tracker.target) as channel:
        stub = tracker_pb2_grpc.TrackerStub(channel)

        async def statuses() -> dict[str, pb.ClusterStatus]:
            try:
                resp = await stub.ListClusters(pb.ListClustersRequest(), timeout=5)
            except grpc.aio.AioRpcError:
                return {}
            return {c.status.cluster: c.status for c in resp.clusters}

        async def good_serves() -> bool:
            try:
                resp = await stub.GetPodByIP(pb.GetPodByIPRequest(ip="10.7.0.1"), timeout=5)
            except grpc.aio.AioRpcError:
                return False
            return resp.pod.name == "web"

        async def reported() -> bool:
            s = await statuses()
            return (
                s.get(cluster.name, pb.ClusterStatus()).synced
                and "/nonexistent/ca.crt" in s.get("no-ca", pb.ClusterStatus()).last_error
                and bool(s.get("unreachable", pb.ClusterStatus(connected=True)).last_error)
                and not s["no-ca"].connected
                and not s["unreachable"].connected
            )

        await tracker.eventually(reported, "the bad clusters are reported, the good one synced")
        assert await good_serves()

        # A file that turns into junk keeps its cluster's last good content; the others are untouched.
        write(configs / "unreachable.yaml", "::: [ not yaml")
        await tracker.eventually(lambda: "unreachable.yaml" in tracker.log() and "YAML" in tracker.log(), "junk logged")
        assert await good_serves() and "unreachable" in await statuses()

        # Fixing a bad file connects its cluster.
        write(configs / "unreachable.yaml", kubeconfig_as(cluster, "unreachable"))

        async def fixed() -> bool:
            s = await statuses()
            return "unreachable" in s and s["unreachable"].synced and s["unreachable"].connected

        await tracker.eventually(fixed, "the fixed cluster syncs")
        assert await good_serves() and tracker.alive
