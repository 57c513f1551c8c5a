"""Tracker addresses: parse ``host:port``, resolve the host to all its IPs, rotate on failure.

A headless Service name such as ``kube-ip-tracker.kube-system.svc.cluster.local:50051`` resolves to
one address per tracker pod. The client connects to one of them and moves to the next on failure;
the name is resolved again once every address of the last resolution has failed, and at least every
``reresolve_interval`` seconds, so trackers that moved are found.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# (host, port) -> IP addresses, in preference order.
ResolveFn = Callable[[str, int], Awaitable[list[str]]]


class AddressError(ValueError):
    """A tracker address is not of the form ``host:port``."""


@dataclass(frozen=True, slots=True)
class TrackerAddress:
    """A tracker target as configured: a DNS name or IP literal and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around IPv6 literals (``[::1]:50051``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(address: str) -> TrackerAddress:
    """Parse ``host:port`` or ``[v6]:port``; raise :class:`AddressError` naming what is wrong."""
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise AddressError(f"tracker address {address!r}: expected [IPv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise AddressError(f"tracker address {address!r}: missing ':port'")
        if ":" in host:
            raise AddressError(f"tracker address {address!r}: put IPv6 literals in brackets, e.g. [::1]:50051")
    if not host:
        raise AddressError(f"tracker address {address!r}: empty host")
    try:
        port = int(port_text)
    except ValueError:
        raise AddressError(f"tracker address {address!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise AddressError(f"tracker address {address!r}: port {port} out of range 1-65535")
    return TrackerAddress(host, port)


def is_ip_literal(host: str) -> bool:
    """True if ``host`` is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve_all(host: str, port: int) -> list[str]:
    """All IP addresses of ``host`` for TCP (asyncio getaddrinfo), duplicates removed, order kept."""
    if is_ip_literal(host):
        return [host]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class AddressRotation:
    """The endpoints of one or more tracker addresses, handed out in turn, re-resolved when stale or exhausted.

    With several addresses (``--tracker-address`` given more than once) the endpoints of all of them
    form one rotation, in the order given; an address that does not resolve is skipped while another does.
    """

    def __init__(
        self,
        address: TrackerAddress | Sequence[TrackerAddress],
        resolve: ResolveFn = resolve_all,
        reresolve_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.addresses = [address] if isinstance(address, TrackerAddress) else list(address)
        if not self.addresses:
            raise AddressError("no tracker address given")
        self.address = self.addresses[0]
        self._resolve = resolve
        self._interval = reresolve_interval
        self._clock = clock
        self._endpoints: list[str] = []  # host:port
        self._position = 0
        self._failures_since_resolve = 0
        self._resolved_at: float | None = None

    @property
    def endpoints(self) -> list[str]:
        """The IPs of the last successful resolution (``host:port`` strings)."""
        return list(self._endpoints)

    def _needs_resolve(self) -> bool:
        if not self._endpoints or self._resolved_at is None:
            return True
        if self._failures_since_resolve >= len(self._endpoints):
            return True
        return self._clock() - self._resolved_at >= self._interval

    def _current(self) -> str:
        return self._endpoints[self._position % len(self._endpoints)]

    async def next_endpoint(self) -> str:
        """The endpoint (``ip:port``) to try now. Raises ``OSError`` if no address resolves."""
        if self._needs_resolve():
            await self._refresh()
        return self._current()

    async def _lookup(self) -> list[str]:
        found: dict[str, None] = {}
        errors: list[OSError] = []
        for address in self.addresses:
            try:
                ips = await self._resolve(address.host, address.port)
            except OSError as exc:
                if len(self.addresses) > 1:
                    log.warning("Cannot resolve tracker address %s: %s", address, exc)
                errors.append(exc)
                continue
            for ip in ips:
                found.setdefault(join_host_port(ip, address.port), None)
        if not found and errors:
            raise errors[0]
        return list(found)

    async def _refresh(self) -> None:
        current = None
        if self._endpoints and not self.round_failed:
            current = self._current()
        endpoints = await self._lookup()
        if not endpoints:
            raise OSError(f"tracker address {', '.join(map(str, self.addresses))} resolved to no IP addresses")
        if endpoints != self._endpoints:
            log.info("Tracker address %s resolved to %s", ", ".join(map(str, self.addresses)), ", ".join(endpoints))
        self._endpoints = endpoints
        self._resolved_at = self._clock()
        self._failures_since_resolve = 0
        # Stay on the endpoint in use if it is still listed (and not just failed), so a healthy choice is not churned.
        self._position = endpoints.index(current) if current in endpoints else 0

    def mark_failed(self, endpoint: str) -> None:
        """The endpoint failed: move on to the next one."""
        if self._endpoints and endpoint == self._current():
            self._position = (self._position + 1) % len(self._endpoints)
        self._failures_since_resolve += 1

    def mark_healthy(self) -> None:
        """A connection through the current endpoint worked: forget past failures."""
        self._failures_since_resolve = 0

    @property
    def round_failed(self) -> bool:
        """Every endpoint of the last resolution has failed since (time to back off)."""
        return bool(self._endpoints) and self._failures_since_resolve >= len(self._endpoints)
