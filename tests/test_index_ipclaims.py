"""The IP ownership rule shared by the index and the agent store."""

from __future__ import annotations

import itertools

from kube_ip_tracker.ipclaims import IPClaims
from kube_ip_tracker.model import PodRecord


def pod(name: str, ips: tuple[str, ...], ts: int, cluster: str = "a") -> PodRecord:
    return PodRecord(cluster, "default", name, {}, (), "n", ips, ts)


def test_newest_wins_and_older_claim_returns() -> None:
    claims = IPClaims()
    old, new = pod("old", ("10.0.0.1",), 100), pod("new", ("10.0.0.1",), 200)
    assert claims.add(old) == 0
    assert claims.add(new) == 1 and claims.conflicts == 1
    assert claims.owner("10.0.0.1") == new.key
    claims.remove(new)
    assert claims.owner("10.0.0.1") == old.key and claims.conflicts == 0
    claims.remove(old)
    assert claims.owner("10.0.0.1") is None and len(claims) == 0


def test_older_pod_arriving_later_does_not_take_the_ip() -> None:
    claims = IPClaims()
    claims.add(pod("new", ("10.0.0.1",), 200))
    claims.add(pod("older", ("10.0.0.1",), 50, cluster="b"))
    assert claims.owner("10.0.0.1") == ("a", "default", "new")
    assert claims.claimants("10.0.0.1") == [("a", "default", "new"), ("b", "default", "older")]


def test_order_of_arrival_does_not_matter() -> None:
    pods = [pod("x", ("10.0.0.1",), 100), pod("y", ("10.0.0.1",), 100), pod("z", ("10.0.0.1",), 100, cluster="b")]
    owners = set()
    for order in itertools.permutations(pods):
        claims = IPClaims()
        for p in order:
            claims.add(p)
        owners.add(claims.owner("10.0.0.1"))
    assert owners == {("b", "default", "z")}


def test_updating_a_pod_replaces_its_claim_by_key() -> None:
    claims = IPClaims()
    first = pod("p", ("10.0.0.1", "fd00::1"), 100)
    claims.add(first)
    moved = pod("p", ("10.0.0.2",), 100)
    claims.remove(first)
    claims.add(moved)
    assert claims.owner("10.0.0.1") is None and claims.owner("fd00::1") is None
    assert claims.owner("10.0.0.2") == moved.key
    # Re-adding the same key without remove does not create a conflict with itself.
    assert claims.add(pod("p", ("10.0.0.2",), 100)) == 0 and claims.conflicts == 0
