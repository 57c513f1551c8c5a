"""The readiness probe command (``python -m kube_ip_tracker.server.healthcheck``) against a real tracker process."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from kube_ip_tracker.server import healthcheck
from kube_ip_tracker.testing import certs
from kube_ip_tracker.testing.trackers import TrackerProcess, eventually


async def probe(*flags: str) -> tuple[int, str]:
    """Run the probe as the kubelet would (a new process); (exit code, its output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        healthcheck.__name__,
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def test_bad_input_is_reported_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        healthcheck.main(["--timeout", "soon"])
    assert usage.value.code == 2 and "invalid timeout 'soon'" in capsys.readouterr().err
    missing = tmp_path / "missing-ca.pem"
    assert healthcheck.main(["--address", "127.0.0.1:1", "--tls-ca-file", str(missing)]) == 1
    assert f"cannot read TLS file {missing}" in capsys.readouterr().err
    assert healthcheck.main(["--address", "127.0.0.1:1", "--timeout", "1"]) == 1
    assert "health check of 127.0.0.1:1 failed: UNAVAILABLE" in capsys.readouterr().err


async def test_probe_over_mtls(tmp_path: Path) -> None:
    """With TLS and client certificates on the tracker, the probe needs the CA and a client certificate."""
    ca = certs.TestCA(tmp_path)
    server_cert, server_key = ca.issue("tracker", hosts=["127.0.0.1", "kube-ip-tracker.kube-system.svc"])
    client_cert, client_key = ca.issue("probe", client=True)
    clusters = tmp_path / "clusters"
    clusters.mkdir()  # no clusters: serving at once
    args = ["--kubeconfig-dir", str(clusters), "--tls-cert-file", str(server_cert), "--tls-key-file", str(server_key)]
    tracker = TrackerProcess("tls", [*args, "--tls-client-ca-file", str(ca.cert_path)], tmp_path).start()
    address = f"--address={tracker.address}"
    tls = [f"--tls-ca-file={ca.cert_path}", f"--tls-cert-file={client_cert}", f"--tls-key-file={client_key}"]
    try:

        async def serving() -> bool:
            return (await probe(address, *tls))[0] == 0

        await eventually(serving, "probe with CA and client certificate exits 0", [tracker], interval=0.3)
        code, out = await probe(address, *tls, "--tls-server-name=kube-ip-tracker.kube-system.svc")
        assert (code, out.strip()) == (0, f"{tracker.address}: SERVING")
        code, out = await probe(address, "--timeout=2")
        assert code == 1 and "health check of" in out  # plaintext against TLS
        code, out = await probe(address, f"--tls-ca-file={ca.cert_path}", "--timeout=2")
        assert code == 1 and "failed" in out  # no client certificate
        code, out = await probe(address, *tls, "--service=kube_ip_tracker.api.v1.Nope", "--timeout=2")
        assert code == 1 and "NOT_FOUND" in out
    finally:
        tracker.stop()
