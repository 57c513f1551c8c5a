"""The tracker client re-reads rotated TLS files when it reconnects, against a real mTLS tracker process."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.client import ClientOptions, TlsOptions, TrackerClient
from kube_ip_tracker.client.tls_reload import ReloadingClientTls
from kube_ip_tracker.server.tls import TlsConfigError
from kube_ip_tracker.testing import certs
from kube_ip_tracker.testing.trackers import TrackerProcess, eventually


def _install(src: Path, dst: Path) -> None:
    """Replace ``dst`` atomically (new file, then rename), as a Secret volume update does."""
    tmp = dst.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class Pki:
    """A server CA, the old and the new client CA, and the client's live files (old client cert at first)."""

    def __init__(self, base: Path) -> None:
        self.server_ca = certs.TestCA(base, "server-ca")
        self.old_ca = certs.TestCA(base, "client-ca-old")
        self.new_ca = certs.TestCA(base, "client-ca-new")
        self.server = self.server_ca.issue("tracker", hosts=["127.0.0.1"])
        self.old = self.old_ca.issue("agent-old", client=True)
        self.new = self.new_ca.issue("agent-new", client=True)
        live = base / "live"
        live.mkdir()
        self.cert, self.key = live / "tls.crt", live / "tls.key"
        self.tracker_client_ca = live / "tracker-client-ca.crt"  # what the tracker trusts
        _install(self.old[0], self.cert)
        _install(self.old[1], self.key)
        _install(self.old_ca.cert_path, self.tracker_client_ca)

    def tls(self) -> TlsOptions:
        return TlsOptions(self.server_ca.cert_path, self.cert, self.key)


def _errors(target: str) -> float:
    value = REGISTRY.get_sample_value("kube_ip_tracker_client_tls_reloads_total", {"target": target, "result": "error"})
    return value or 0.0


async def _restart(tracker: TrackerProcess) -> None:
    await asyncio.to_thread(tracker.stop)
    tracker.start()


async def test_client_uses_rotated_certificate_after_tracker_restart_with_only_the_new_ca(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    (tmp_path / "clusters").mkdir()
    tracker = TrackerProcess(
        "tls-reload",
        [
            "--kubeconfig-dir",
            str(tmp_path / "clusters"),
            "--tls-cert-file",
            str(pki.server[0]),
            "--tls-key-file",
            str(pki.server[1]),
            "--tls-client-ca-file",
            str(pki.tracker_client_ca),
        ],
        tmp_path,
    )
    tracker.start()
    client = TrackerClient(
        tracker.address, AgentStore(), ClientOptions(tls=pki.tls(), backoff_base=0.05, backoff_cap=0.5)
    )
    client.start()
    try:
        await eventually(lambda: client.snapshots_applied == 1, "the client is served over mTLS", [tracker])
        errors_before = _errors(client.target)

        # A half-done rotation (new certificate, old key) is not used: the old certificate still works.
        _install(pki.new[0], pki.cert)
        await _restart(tracker)
        await eventually(lambda: client.snapshots_applied == 2, "reconnected with the previous material", [tracker])
        assert _errors(client.target) == errors_before + 1  # logged and counted once for this change
        assert client._tls is not None and client._tls.reloads == 0

        # The rotation completes; the tracker comes back trusting only the new client CA.
        _install(pki.new[1], pki.key)
        _install(pki.new_ca.cert_path, pki.tracker_client_ca)
        await _restart(tracker)
        await eventually(
            lambda: client.snapshots_applied == 3, "reconnected with the rotated client certificate", [tracker]
        )
        assert client._tls.reloads == 1
    finally:
        await client.stop()
        await asyncio.to_thread(tracker.stop)


def test_reloader_keeps_the_last_good_files(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    tls = ReloadingClientTls(pki.server_ca.cert_path, pki.cert, pki.key, "reloader-unit")
    first = tls.credentials()
    assert tls.credentials() is first  # unchanged files are not re-read
    pki.cert.write_text("garbage")
    assert tls.credentials() is first and tls.errors == 1
    assert tls.credentials() is first and tls.errors == 1  # the same broken files are reported once
    _install(pki.new[0], pki.cert)
    assert tls.credentials() is first and tls.errors == 2  # new certificate, old key: mismatched
    _install(pki.new[1], pki.key)
    assert tls.credentials() is not first and tls.reloads == 1
    pki.key.unlink()
    assert tls.reloads == 1 and tls.credentials() is not first


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("missing-ca", "cannot read TLS CA file"),
        ("bad-ca", "holds no valid PEM certificate"),
        ("mismatch", "does not match the certificate"),
    ],
)
def test_bad_files_at_start_are_named(tmp_path: Path, what: str, message: str) -> None:
    pki = Pki(tmp_path)
    ca = pki.server_ca.cert_path
    if what == "missing-ca":
        ca = tmp_path / "nope.crt"
    elif what == "bad-ca":
        ca.write_text("not a certificate")
    else:
        _install(pki.new[0], pki.cert)
    with pytest.raises(TlsConfigError, match=message):
        TrackerClient("127.0.0.1:1", AgentStore(), ClientOptions(tls=TlsOptions(ca, pki.cert, pki.key)))
