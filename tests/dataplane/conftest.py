"""Fixtures for dataplane tests: pod namespaces and dataplanes that are always cleaned up."""

from __future__ import annotations

import random
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from kube_ip_tracker.agent.dataplane import Dataplane, DataplaneConfig, Decide, IsReady, parse_networks
from kube_ip_tracker.agent.run import MARK_SLOTS, marks_for_slot
from kube_ip_tracker.testing.netns import PodNetwork

DataplaneFactory = Callable[..., Dataplane]


@pytest.fixture
def net() -> Iterator[PodNetwork]:
    """A pod network removed after the test, pass or fail."""
    with PodNetwork(host_address=True) as network:
        yield network


@pytest.fixture
def dp_name() -> str:
    """A table/chain name of our own, so a test never touches the rules of a real agent."""
    return f"kipt-{secrets.token_hex(3)}"


@pytest.fixture
def queue_id() -> int:
    return random.randint(20000, 60000)


@pytest.fixture
def mark_slot() -> int:
    """The mark bits of this test's dataplanes (agents sharing a host need distinct ones)."""
    return random.randrange(MARK_SLOTS)


@pytest.fixture
async def make_dataplane(
    net: PodNetwork, dp_name: str, queue_id: int, mark_slot: int
) -> AsyncIterator[DataplaneFactory]:
    """``make_dataplane(decide, is_ready=..., **config)``: a Dataplane for the network's pods (not started).

    At the end every dataplane is stopped and our rules are removed even if a test left them behind.
    """
    made: list[Dataplane] = []

    def make(decide: Decide, is_ready: IsReady = lambda: True, **overrides: object) -> Dataplane:
        settings: dict[str, object] = {
            "nfqueue_id": queue_id,
            "name": dp_name,
            "local_pods": parse_networks(str(p.ip) for p in net.pods),
            # Other sessions run dataplanes on this host at the same time: with the same mark bits, their
            # iptables queue rule would take our packets (same queue bit) and mark them accepted.
            **marks_for_slot(mark_slot),
        }
        settings.update(overrides)
        dataplane = Dataplane(DataplaneConfig(**settings), decide, is_ready)  # type: ignore[arg-type]
        made.append(dataplane)
        return dataplane

    yield make
    for dataplane in made:
        if dataplane.running:
            await dataplane.stop(remove_rules=False)
    if made:
        await made[0].remove_rules()
    assert not rules_present(dp_name), "rules left behind after cleanup"


def rules_present(name: str) -> bool:
    """Whether our nft table or iptables chain (named after ``name``) exists."""
    nft = subprocess.run(["nft", "list", "table", "inet", name], capture_output=True, check=False)
    saved = subprocess.run(["iptables-save", "-t", "security"], capture_output=True, text=True, check=True).stdout
    return nft.returncode == 0 or f"{name.upper()}-QUEUE" in saved


def iptables_jumps(name: str) -> dict[str, int]:
    """Jumps from each hook chain to our queue chain."""
    saved = subprocess.run(["iptables-save", "-t", "security"], capture_output=True, text=True, check=True).stdout
    counts: dict[str, int] = {}
    for line in saved.splitlines():
        parts = line.split()
        if parts[:1] == ["-A"] and parts[2:] == ["-j", f"{name.upper()}-QUEUE"]:
            counts[parts[1]] = counts.get(parts[1], 0) + 1
    return counts
