"""Tracker address parsing, resolution and rotation; reconnect backoff."""

from __future__ import annotations

import random

import pytest

from kube_ip_tracker.backoff import Backoff
from kube_ip_tracker.client.resolver import (
    AddressError,
    AddressRotation,
    TrackerAddress,
    parse_address,
    resolve_all,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kube-ip-tracker.kube-system.svc.cluster.local:50051",
            TrackerAddress("kube-ip-tracker.kube-system.svc.cluster.local", 50051),
        ),
        ("10.0.0.5:50051", TrackerAddress("10.0.0.5", 50051)),
        ("[fd00::5]:443", TrackerAddress("fd00::5", 443)),
        (" localhost:1 ", TrackerAddress("localhost", 1)),
    ],
)
def test_parse_address(text: str, expected: TrackerAddress) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tracker", "missing ':port'"),
        ("tracker:http", "not a number"),
        ("tracker:0", "out of range"),
        ("tracker:70000", "out of range"),
        (":50051", "empty host"),
        ("fd00::5:50051", "brackets"),
        ("[fd00::5]50051", "expected [IPv6]:port"),
    ],
)
def test_parse_address_rejects(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        parse_address(text)
    assert repr(text) in str(info.value)


def test_str_brackets_ipv6() -> None:
    assert str(TrackerAddress("fd00::5", 443)) == "[fd00::5]:443"
    assert str(TrackerAddress("10.0.0.5", 443)) == "10.0.0.5:443"


async def test_resolve_localhost_finds_loopback() -> None:
    ips = await resolve_all("localhost", 50051)
    assert "127.0.0.1" in ips or "::1" in ips
    assert len(ips) == len(set(ips))
    assert await resolve_all("192.0.2.7", 1) == ["192.0.2.7"]


class FakeDns:
    """A resolver function whose answers the test changes; counts lookups."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.lookups = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        if not self.answers:
            raise OSError(f"{host}: no such host")
        return list(self.answers)


async def test_rotation_fails_over_and_reresolves_after_a_failed_round() -> None:
    dns = FakeDns(["10.0.0.1", "10.0.0.2"])
    rotation = AddressRotation(TrackerAddress("tracker", 50051), dns, reresolve_interval=3600)
    first = await rotation.next_endpoint()
    assert first == "10.0.0.1:50051"
    rotation.mark_failed(first)
    assert not rotation.round_failed
    second = await rotation.next_endpoint()
    assert second == "10.0.0.2:50051"
    assert dns.lookups == 1
    rotation.mark_failed(second)
    assert rotation.round_failed
    dns.answers = ["10.0.0.3", "10.0.0.1"]
    third = await rotation.next_endpoint()
    assert dns.lookups == 2
    assert third == "10.0.0.3:50051"
    assert not rotation.round_failed


async def test_rotation_reresolves_periodically_and_keeps_a_healthy_endpoint() -> None:
    now = [0.0]
    dns = FakeDns(["10.0.0.1", "10.0.0.2"])
    rotation = AddressRotation(TrackerAddress("tracker", 1), dns, reresolve_interval=30, clock=lambda: now[0])
    rotation.mark_failed(await rotation.next_endpoint())
    assert await rotation.next_endpoint() == "10.0.0.2:1"
    rotation.mark_healthy()
    now[0] = 29.0
    await rotation.next_endpoint()
    assert dns.lookups == 1
    now[0] = 31.0
    dns.answers = ["10.0.0.9", "10.0.0.2"]
    assert await rotation.next_endpoint() == "10.0.0.2:1"
    assert dns.lookups == 2
    assert rotation.endpoints == ["10.0.0.9:1", "10.0.0.2:1"]


async def test_rotation_resolution_failure_raises_oserror() -> None:
    rotation = AddressRotation(TrackerAddress("tracker", 1), FakeDns([]))
    with pytest.raises(OSError, match="no such host"):
        await rotation.next_endpoint()


def test_backoff_grows_with_jitter_to_cap_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    for n, delay in enumerate(delays):
        ceiling = min(8.0, 0.5 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not fixed steps
    backoff.reset()
    assert backoff.next_delay() <= 0.5
    with pytest.raises(ValueError, match="base"):
        Backoff(0, 1)
