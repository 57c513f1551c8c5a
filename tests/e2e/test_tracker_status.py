"""``kube-ip-tracker status`` and ``kube-ip-tracker get`` (the real console script) against a real tracker
watching two real clusters, one of which goes down; and over mTLS."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kube_ip_tracker.testing import certs, objects
from kube_ip_tracker.testing.clusters import free_port
from kube_ip_tracker.testing.trackers import Agent, TrackerProcess, eventually

TRACKER_BIN = Path(sys.executable).with_name("kube-ip-tracker")


async def tracker_cli(*argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``kube-ip-tracker ARGV``."""
    done = await asyncio.to_thread(
        subprocess.run, [str(TRACKER_BIN), *argv], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


def row(table: str, cluster: str) -> list[str]:
    """The cells of ``cluster``'s row (split on runs of 3+ spaces, as rendered)."""
    for line in table.splitlines():
        if line.startswith(cluster + " "):
            return re.split(r"\s{3,}", line.strip())
    raise AssertionError(f"no row for {cluster} in:\n{table}")


@pytest.mark.cluster
async def test_status_and_get_with_one_cluster_down(cluster_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clusters = cluster_factory(2)
    for i, cluster in enumerate(clusters):
        async with cluster.api_client() as api:
            await objects.create_namespace(api, "demo", {"team": f"t{i}"})
            await objects.create_node(api, "node-1", internal_ip=f"192.0.2.{i + 1}")
            await objects.create_pod(
                api, "demo", "web", labels={"app": "web"}, ips=[f"10.{i}.0.1"], ports=[("http", 80, "TCP")]
            )
    args = [
        "--kubeconfig",
        str(clusters.merged_kubeconfig),
        "--kube-probe-interval",
        "1s",
        "--kube-probe-timeout",
        "1s",
    ]
    tracker = TrackerProcess("status", args, tmp_path).start()
    watcher = Agent(tracker)
    address = ("--address", tracker.address)
    try:
        await eventually(tracker.serving, "tracker SERVING", [tracker])
        watcher.start()
        await eventually(lambda: watcher.client.ready, "a watcher connected", [tracker])

        code, out, err = await tracker_cli("status", *address)
        assert code == 0, err
        head, *_ = out.splitlines()
        assert head.startswith(f"tracker {tracker.address}: SERVING, epoch ") and "1 watcher, 2 clusters" in head
        assert out.splitlines()[1].split()[:3] == ["CLUSTER", "CONNECTED", "SYNCED"]
        for name in ("cluster-1", "cluster-2"):
            cells = row(out, name)
            assert cells[1:7] == ["yes", "yes", "no", "1", "5", "1"], cells  # demo + the 4 built-in namespaces
            assert cells[7].endswith(" ago") and cells[8:] == ["status", "-"]  # via: this tracker

        code, out, err = await tracker_cli("get", "10.1.0.1", *address)
        assert code == 0, err
        fields = dict(line.split(":", 1) for line in out.splitlines())
        fields = {k: v.strip() for k, v in fields.items()}
        assert (fields["Cluster"], fields["Namespace"], fields["Pod"], fields["Node"]) == (
            "cluster-2",
            "demo",
            "web",
            "node-1",
        )
        assert fields["Pod labels"] == "app=web" and fields["Ports"] == "http 80/TCP"
        assert fields["Node IPs"] == "192.0.2.2"
        # The namespace labels as served: stamped with the cluster's id (--cluster-labels=enforce, the default).
        stamped = {"cluster.clusterset.k8s.io": "cluster-2", "cluster.clusterset.k8s.io/cluster-name": "cluster-2"}
        served = sorted(clusters[1].namespace_labels("demo", {**stamped, "team": "t1"}).items())
        assert fields["Namespace labels"] == ",".join(f"{k}={v}" for k, v in served)

        # Bad input: one line naming it, non-zero exit.
        assert await tracker_cli("get", "10.9.9.9", *address) == (
            1,
            "",
            f"no pod owns 10.9.9.9 (tracker {tracker.address})\n",
        )
        assert await tracker_cli("get", "10.1.0.300", *address) == (
            2,
            "",
            "kube-ip-tracker get: not an IP address: '10.1.0.300'\n",
        )
        code, out, err = await tracker_cli("status", "--address", "nowhere")
        assert (code, out, err) == (2, "", "kube-ip-tracker status: tracker address 'nowhere': missing ':port'\n")
        unused = f"127.0.0.1:{free_port()}"
        code, out, err = await tracker_cli("status", "--address", unused, "--timeout", "2s")
        assert code == 3 and out == "" and len(err.splitlines()) == 1, err
        assert err.startswith(f"kube-ip-tracker status: cannot reach the tracker at {unused}: "), err

        # One cluster down: its row says so, and the exit code says unhealthy.
        clusters[1].stop_apiserver()

        async def cluster_2_down() -> bool:
            code, out, _ = await tracker_cli("status", *address)
            return code == 1 and row(out, "cluster-2")[1] == "no"

        await eventually(cluster_2_down, "status reports cluster-2 disconnected", [tracker], interval=0.5)
        code, out, err = await tracker_cli("status", *address)
        assert code == 1
        up, down = row(out, "cluster-1"), row(out, "cluster-2")
        assert up[1:4] == ["yes", "yes", "no"] and up[9] == "-"
        assert down[1:4] == ["no", "yes", "yes"] and down[4:7] == ["1", "5", "1"]  # last known data kept
        assert len(down) == 10 and down[9] != "-"  # the last error
        assert err == "unhealthy: cluster-2 not connected, stale\n"
        # The pods of the cluster that is down are still served (last known), as GetPodByIP does.
        assert (await tracker_cli("get", "10.1.0.1", *address))[0] == 0

        code, out, _ = await tracker_cli("status", *address, "-o", "json")
        report = json.loads(out)
        assert code == 1 and report["healthy"] is False and report["watchers"] == 1
        assert report["problems"] == ["cluster-2 not connected, stale"]
        by_name = {c["cluster"]: c for c in report["clusters"]}
        assert by_name["cluster-2"]["connected"] is False and by_name["cluster-2"]["last_error"]
        assert by_name["cluster-1"]["pods"] == 1 and by_name["cluster-1"]["last_change_time"] > 0
    finally:
        await watcher.stop()
        tracker.stop()


async def test_status_over_mtls(tmp_path: Path) -> None:
    """The TLS flags are the agent's: with the CA and a client certificate it works; without, one line."""
    ca = certs.TestCA(tmp_path)
    server_cert, server_key = ca.issue("tracker", hosts=["127.0.0.1"])
    client_cert, client_key = ca.issue("operator", client=True)
    empty = tmp_path / "clusters"
    empty.mkdir()  # no clusters: serving at once, healthy
    tls_args = ["--tls-cert-file", str(server_cert), "--tls-key-file", str(server_key)]
    args = ["--kubeconfig-dir", str(empty), *tls_args, "--tls-client-ca-file", str(ca.cert_path)]
    tracker = TrackerProcess("tls", args, tmp_path).start()
    address = ("--address", tracker.address)
    tls = ("--tracker-ca-file", str(ca.cert_path), "--tracker-cert-file", str(client_cert))
    tls += ("--tracker-key-file", str(client_key))
    try:

        async def healthy() -> bool:
            return (await tracker_cli("status", *address, *tls))[0] == 0

        await eventually(healthy, "status over mTLS exits 0", [tracker], interval=0.3)
        code, out, _ = await tracker_cli("status", *address, *tls)
        assert "0 watchers, 0 clusters" in out and out.endswith("(no clusters)\n")
        code, out, err = await tracker_cli("status", *address, "--tracker-ca-file", str(ca.cert_path), "--timeout=2s")
        assert code == 3 and len(err.splitlines()) == 1 and err.startswith("kube-ip-tracker status: ")
        code, _, err = await tracker_cli("status", *address, "--tracker-cert-file", str(client_cert))
        assert (code, err) == (
            2,
            "kube-ip-tracker status: --tracker-cert-file and --tracker-key-file must be given together\n",
        )
        missing = tmp_path / "nope.pem"
        code, _, err = await tracker_cli("get", "10.0.0.1", *address, "--tracker-ca-file", str(missing))
        assert code == 2 and str(missing) in err and len(err.splitlines()) == 1
    finally:
        tracker.stop()
