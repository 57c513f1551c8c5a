"""Fixtures of the GKE tests: a CA certificate and the fake GKE API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kube_ip_tracker.testing.certs import write_self_signed
from kube_ip_tracker.testing.fake_gke import FakeClusterManager


@pytest.fixture
def ca_pem(tmp_path: Path) -> bytes:
    """A self-signed certificate for 127.0.0.1 (PEM), used as a cluster CA."""
    write_self_signed(tmp_path / "ca.crt", tmp_path / "ca.key", hosts=["127.0.0.1"])
    return (tmp_path / "ca.crt").read_bytes()


@pytest.fixture
async def gke() -> AsyncIterator[FakeClusterManager]:
    """A fake GKE API on loopback (local credentials)."""
    async with FakeClusterManager() as server:
        yield server
