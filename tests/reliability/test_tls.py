"""TLS and mTLS on the real tracker process: who is refused, and certificate rotation without dropping streams."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import grpc
import grpc.aio
import pytest

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.client.client import ClientOptions, TrackerClient
from kube_ip_tracker.client.tls_flags import add_client_tls_arguments, client_tls_from_args
from kube_ip_tracker.server.tls import ReloadingTls, TlsConfigError, TlsFiles
from kube_ip_tracker.testing import certs, objects

from .conftest import MakeTracker
from .tracker import TRACKER_CMD

WR = pb.WatchResponse


class Pki:
    """CA ``a`` (the deployment's), CA ``b`` (rotation target) and ``rogue`` (an attacker's), with live files."""

    def __init__(self, base: Path) -> None:
        self.a = certs.TestCA(_mkdir(base / "a"), "ca-a")
        self.b = certs.TestCA(_mkdir(base / "b"), "ca-b")
        self.rogue = certs.TestCA(_mkdir(base / "rogue"), "ca-rogue")
        self.server_a = self.a.issue("tracker-a", hosts=["127.0.0.1"])
        self.server_b = self.b.issue("tracker-b", hosts=["127.0.0.1"])
        self.client_a = self.a.issue("agent-a", client=True)
        self.client_rogue = self.rogue.issue("agent-rogue", client=True)
        self.live = _mkdir(base / "live")
        self.cert, self.key = self.live / "tls.crt", self.live / "tls.key"
        self.install(*self.server_a)

    def install(self, cert: Path, key: Path) -> None:
        """Replace the live files atomically (new file, then rename), as a secret volume update does."""
        for src, dst in ((key, self.key), (cert, self.cert)):
            tmp = dst.with_suffix(".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)

    def tracker_args(self, *, mtls: bool) -> list[str]:
        args = ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key)]
        return [*args, "--tls-client-ca-file", str(self.a.cert_path)] if mtls else args


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def creds(ca: certs.TestCA, client: tuple[Path, Path] | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(ca.cert_path.read_bytes())
    return grpc.ssl_channel_credentials(ca.cert_path.read_bytes(), client[1].read_bytes(), client[0].read_bytes())


async def list_clusters(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """ListClusters on a new connection; the status code (OK when it worked)."""
    channel = (
        grpc.aio.secure_channel(target, credentials) if credentials is not None else grpc.aio.insecure_channel(target)
    )
    async with channel:
        try:
            await tracker_pb2_grpc.TrackerStub(channel).ListClusters(pb.ListClustersRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


async def test_mtls_refuses_plaintext_wrong_ca_and_certless_clients(tmp_path, tracker_process: MakeTracker) -> None:  # type: ignore[no-untyped-def]
    pki = Pki(tmp_path / "pki")
    (tmp_path / "clusters").mkdir()
    tracker = tracker_process(["--kubeconfig-dir", str(tmp_path / "clusters"), *pki.tracker_args(mtls=True)])
    tracker.start()
    await tracker.wait_listening()
    good = creds(pki.a, pki.client_a)
    await tracker.eventually(lambda: _is_ok(list_clusters(tracker.target, good)), "an mTLS client is served")

    assert await list_clusters(tracker.target, None) == grpc.StatusCode.UNAVAILABLE  # plaintext
    assert await list_clusters(tracker.target, creds(pki.rogue, pki.client_a)) == grpc.StatusCode.UNAVAILABLE
    assert await list_clusters(tracker.target, creds(pki.a)) == grpc.StatusCode.UNAVAILABLE  # no client cert
    assert await list_clusters(tracker.target, creds(pki.a, pki.client_rogue)) == grpc.StatusCode.UNAVAILABLE

    # The agent's flags (shared helper) give a client that the tracker accepts.
    parser = argparse.ArgumentParser()
    add_client_tls_arguments(parser)
    args = parser.parse_args(
        [
            "--tracker-ca-file",
            str(pki.a.cert_path),
            "--tracker-cert-file",
            str(pki.client_a[0]),
            "--tracker-key-file",
            str(pki.client_a[1]),
        ]
    )
    mirror = AgentStore()
    client = TrackerClient(tracker.target, mirror, ClientOptions(tls=client_tls_from_args(args), backoff_base=0.05))
    client.start()
    try:
        await tracker.eventually(lambda: client.ready, "the agent client is ready over mTLS")
    finally:
        await client.stop()
    assert tracker.alive


async def test_tls_without_client_ca_refuses_plaintext_and_wrong_ca(tmp_path, tracker_process: MakeTracker) -> None:  # type: ignore[no-untyped-def]
    pki = Pki(tmp_path / "pki")
    (tmp_path / "clusters").mkdir()
    tracker = tracker_process(["--kubeconfig-dir", str(tmp_path / "clusters"), *pki.tracker_args(mtls=False)])
    tracker.start()
    await tracker.wait_listening()
    await tracker.eventually(lambda: _is_ok(list_clusters(tracker.target, creds(pki.a))), "a TLS client is served")
    assert await list_clusters(tracker.target, None) == grpc.StatusCode.UNAVAILABLE
    assert await list_clusters(tracker.target, creds(pki.rogue)) == grpc.StatusCode.UNAVAILABLE
    # Stalled and garbage handshakes do not hold up a good client.
    stalled = [socket.create_connection(("127.0.0.1", tracker.port), timeout=5) for _ in range(20)]
    try:
        for i, sock in enumerate(stalled[:10]):
            sock.sendall(b"\x16\x03\x01\x02\x00" + bytes([i]) * 64)  # a truncated, bogus ClientHello
        assert await list_clusters(tracker.target, creds(pki.a)) == grpc.StatusCode.OK
    finally:
        for sock in stalled:
            sock.close()
    assert tracker.alive


@pytest.mark.cluster
async def test_rotation_applies_to_new_connections_and_keeps_open_streams(  # type: ignore[no-untyped-def]
    tmp_path, cluster_factory, tracker_process: MakeTracker
) -> None:
    cluster = cluster_factory(1)[0]
    async with cluster.api_client() as api:
        await objects.create_namespace(api, "demo")
    pki = Pki(tmp_path / "pki")
    tracker = tracker_process(["--kubeconfig", str(cluster.kubeconfig), *pki.tracker_args(mtls=True)])
    tracker.start()
    await tracker.wait_listening()
    old = creds(pki.a, pki.client_a)
    await tracker.eventually(lambda: _is_ok(list_clusters(tracker.target, old)), "an mTLS client is served")

    async with grpc.aio.secure_channel(tracker.target, old) as channel:
        call = tracker_pb2_grpc.TrackerStub(channel).Watch(pb.WatchRequest(watcher_name="long-lived"))
        while (await call.read()).kind != WR.END_OF_SNAPSHOT:
            pass

        # Rotate to a certificate from CA b (the client CA stays a).
        pki.install(*pki.server_b)
        new = creds(pki.b, pki.client_a)
        assert await list_clusters(tracker.target, new) == grpc.StatusCode.OK
        assert await list_clusters(tracker.target, old) == grpc.StatusCode.UNAVAILABLE  # old CA: new cert refused

        # A broken rotation (certificate of a, key of b) is not used: the b certificate stays in force.
        shutil.copyfile(pki.server_a[0], pki.cert)
        assert await list_clusters(tracker.target, new) == grpc.StatusCode.OK
        assert await list_clusters(tracker.target, old) == grpc.StatusCode.UNAVAILABLE
        await tracker.eventually(lambda: "does not match the certificate" in tracker.log(), "the bad files are logged")

        # The stream opened before the rotation still gets deltas.
        async with cluster.api_client() as api:
            await objects.create_pod(api, "demo", "after-rotation", ips=["10.9.0.1"])
        names: set[str] = set()
        while "after-rotation" not in names:
            msg = await _read(call)
            names |= {c.pod.name for c in msg.changes if c.WhichOneof("object") == "pod"}
        call.cancel()
    assert "Reloaded TLS certificate" in tracker.log() and tracker.alive


async def _read(call) -> pb.WatchResponse:  # type: ignore[no-untyped-def]
    msg = await asyncio.wait_for(call.read(), 30)
    assert msg is not grpc.aio.EOF, "the Watch stream opened before the rotation ended"
    return msg


async def _is_ok(code) -> bool:  # type: ignore[no-untyped-def]
    return await code == grpc.StatusCode.OK


def test_reloader_keeps_previous_files_until_a_consistent_set_appears(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    tls = ReloadingTls(TlsFiles(pki.cert, pki.key))
    assert not tls.check()
    shutil.copyfile(pki.server_b[0], pki.cert)  # new certificate, old key: unusable
    assert not tls.check() and not tls.check()
    shutil.copyfile(pki.server_b[1], pki.key)
    assert tls.check() and tls.reloads == 1
    pki.cert.write_text("garbage")
    assert not tls.check()
    pki.cert.unlink()
    assert not tls.check()
    assert tls._fetch() is None  # never raises into gRPC's handshake


def test_reloader_follows_a_secret_volume_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes updates a Secret volume by pointing the ``..data`` symlink at a new directory."""
    pki = Pki(tmp_path / "pki")
    volume = tmp_path / "volume"
    for version, (cert, key) in (("v1", pki.server_a), ("v2", pki.server_b)):
        (volume / version).mkdir(parents=True)
        shutil.copyfile(cert, volume / version / "tls.crt")
        shutil.copyfile(key, volume / version / "tls.key")
    (volume / "..data").symlink_to("v1")
    for name in ("tls.crt", "tls.key"):
        (volume / name).symlink_to(Path("..data") / name)
    tls = ReloadingTls(TlsFiles(volume / "tls.crt", volume / "tls.key"))
    assert not tls.check()
    (volume / "..data_tmp").symlink_to("v2")
    os.replace(volume / "..data_tmp", volume / "..data")
    assert tls.check() and tls.reloads == 1
    assert b"BEGIN CERTIFICATE" in tls._loaded.cert_chain and tls._loaded.cert_chain == pki.server_b[0].read_bytes()


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("missing-cert", "cannot read TLS certificate file"),
        ("bad-cert", "holds no valid PEM certificate"),
        ("bad-key", "holds no usable unencrypted PEM private key"),
        ("mismatch", "does not match the certificate"),
        ("missing-ca", "cannot read TLS client CA file"),
    ],
)
def test_reloader_names_the_bad_file_at_start(tmp_path: Path, what: str, message: str) -> None:
    pki = Pki(tmp_path)
    files = TlsFiles(pki.cert, pki.key)
    if what == "missing-cert":
        files = TlsFiles(tmp_path / "nope.crt", pki.key)
    elif what == "bad-cert":
        pki.cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    elif what == "bad-key":
        pki.key.write_text("nope")
    elif what == "mismatch":
        shutil.copyfile(pki.server_b[1], pki.key)
    else:
        files = TlsFiles(pki.cert, pki.key, tmp_path / "nope-ca.crt")
    with pytest.raises(TlsConfigError, match=message):
        ReloadingTls(files)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert-file", "{cert}"], "--tls-cert-file and --tls-key-file must be given together"),
        (["--tls-client-ca-file", "{cert}"], "--tls-client-ca-file needs --tls-cert-file and --tls-key-file"),
        (
            ["--tls-cert-file", "{dir}/nope.crt", "--tls-key-file", "{key}"],
            "cannot read TLS certificate file {dir}/nope.crt",
        ),
    ],
)
def test_tracker_exits_at_start_naming_bad_tls_flags(tmp_path: Path, flags: list[str], message: str) -> None:
    pki = Pki(tmp_path)
    (tmp_path / "clusters").mkdir()
    subst = {"cert": str(pki.cert), "key": str(pki.key), "dir": str(tmp_path)}
    argv = [*TRACKER_CMD, "--metrics-address", "", "--listen-address", "127.0.0.1:0"]
    argv += ["--kubeconfig-dir", str(tmp_path / "clusters"), *(f.format(**subst) for f in flags)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert message.format(**subst) in result.stderr
