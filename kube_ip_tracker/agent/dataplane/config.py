"""Dataplane settings, their command-line flags and validation."""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The agent's default (the library's DataplaneConfig default is off: its callers must invalidate).
DEFAULT_VERDICT_CACHE_SIZE = 65536
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}$")


class ConfigError(ValueError):
    """A dataplane setting is invalid."""


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``["10.244.1.0/24", "10.244.2.7"]`` -> networks (a bare address is a /32 or /128)."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"pod address or CIDR {value!r} is invalid: {exc}") from None
    return tuple(networks)


def _check_bit(name: str, value: int) -> None:
    if value <= 0 or value >= 1 << 32 or value & (value - 1):
        raise ConfigError(f"{name} must be a single bit of a 32-bit mark, got {value:#x}")


@dataclass(frozen=True)
class DataplaneConfig:
    """How the agent enforces verdicts on this node.

    ``local_pods`` are the pod addresses/CIDRs of this node: packets to or from them are enforced.
    ``revalidate_delay`` coalesces revalidation requests; ``revalidate_interval`` (0: off) adds
    periodic passes. ``name`` names the nft table (``inet <name>``) and prefixes the iptables chains (upper-cased).
    The three marks are single bits: ``queue_mark`` and ``verdict_mark`` in the packet mark
    (only between our own chains, cleared before the packet leaves them), ``accepted_ct_mark``
    in the conntrack mark of accepted connections.
    ``verdict_cache_size`` (0: off) bounds the kernel's cache of allowed (source, destination, protocol,
    port) tuples, each kept ``verdict_cache_timeout`` seconds at most; with the cache on, the caller must
    call :meth:`Dataplane.invalidate_verdicts` (or ``request_revalidation``) whenever a verdict may change.
    """

    nfqueue_id: int = 100
    fail_open: bool = True
    local_pods: tuple[IPNetwork, ...] = ()
    name: str = "kube-ip-agent"
    queue_max_len: int = 4096
    verdict_timeout: float = 1.0
    revalidate_timeout: float = 10.0
    revalidate_delay: float = 0.05
    revalidate_interval: float = 0.0
    command_timeout: float = 10.0
    queue_mark: int = 0x01000000
    verdict_mark: int = 0x02000000
    accepted_ct_mark: int = 0x01000000
    backend: str = "auto"
    verdict_cache_size: int = 0
    verdict_cache_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.nfqueue_id <= 65535:
            raise ConfigError(f"--nfqueue-id must be in 0..65535, got {self.nfqueue_id}")
        if not _NAME.match(self.name):
            raise ConfigError(f"dataplane name {self.name!r} must match {_NAME.pattern}")
        if self.queue_max_len < 1:
            raise ConfigError(f"queue_max_len must be positive, got {self.queue_max_len}")
        if self.verdict_cache_size < 0:
            raise ConfigError(f"--verdict-cache-size must not be negative, got {self.verdict_cache_size}")
        for label in ("verdict_timeout", "revalidate_timeout", "command_timeout", "verdict_cache_timeout"):
            if getattr(self, label) <= 0:
                raise ConfigError(f"{label} must be positive, got {getattr(self, label)}")
        for label in ("revalidate_delay", "revalidate_interval"):
            if getattr(self, label) < 0:
                raise ConfigError(f"{label} must not be negative, got {getattr(self, label)}")
        _check_bit("queue_mark", self.queue_mark)
        _check_bit("verdict_mark", self.verdict_mark)
        _check_bit("accepted_ct_mark", self.accepted_ct_mark)
        if self.queue_mark == self.verdict_mark:
            raise ConfigError(f"queue_mark and verdict_mark must differ, both are {self.queue_mark:#x}")
        if self.backend not in ("auto", "nft", "iptables"):
            raise ConfigError(f"backend must be auto, nft or iptables, got {self.backend!r}")
        if not all(isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) for n in self.local_pods):
            raise ConfigError("local_pods must hold ipaddress networks; use parse_networks() for strings")

    @property
    def chain_prefix(self) -> str:
        """Prefix of our iptables chains, e.g. ``KUBE-IP-AGENT``."""
        return self.name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the dataplane flags (``--nfqueue-id``, ``--fail-open`` ...)."""
    group = parser.add_argument_group("dataplane")
    group.add_argument("--nfqueue-id", type=int, default=DataplaneConfig.nfqueue_id, help="NFQUEUE number")
    group.add_argument(
        "--fail-open",
        action=argparse.BooleanOptionalAction,
        default=DataplaneConfig.fail_open,
        help="let traffic pass while the agent is not ready or its queue is full (default: on)",
    )
    group.add_argument(
        "--pod-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="pod address or CIDR of this node to enforce (repeatable)",
    )
    group.add_argument(
        "--dataplane-backend",
        choices=("auto", "nft", "iptables"),
        default="auto",
        help="where the NFQUEUE rule lives: nft when the kernel supports its queue expression, else iptables",
    )
    group.add_argument(
        "--verdict-timeout",
        type=float,
        default=DataplaneConfig.verdict_timeout,
        help="seconds a verdict may take before the fail-open/closed default applies",
    )

    group.add_argument(
        "--verdict-cache-size",
        type=int,
        default=DEFAULT_VERDICT_CACHE_SIZE,
        metavar="N",
        help="allowed (source, destination, protocol, port) tuples the kernel decides without asking the agent, "
        f"at most (0: off; default {DEFAULT_VERDICT_CACHE_SIZE}); emptied whenever a verdict may change",
    )
    group.add_argument(
        "--verdict-cache-timeout",
        type=float,
        default=DataplaneConfig.verdict_cache_timeout,
        metavar="SECONDS",
        help="seconds a cached verdict is kept at most",
    )
    group.add_argument(
        "--revalidate-interval",
        type=float,
        default=DataplaneConfig.revalidate_interval,
        help="seconds between periodic re-checks of accepted connections (0: only when asked)",
    )


def config_from_args(args: argparse.Namespace) -> DataplaneConfig:
    """Build the config from parsed flags (see :func:`add_arguments`)."""
    return DataplaneConfig(
        nfqueue_id=args.nfqueue_id,
        fail_open=args.fail_open,
        local_pods=parse_networks(args.pod_cidr),
        backend=args.dataplane_backend,
        verdict_timeout=args.verdict_timeout,
        revalidate_interval=args.revalidate_interval,
        verdict_cache_size=args.verdict_cache_size,
        verdict_cache_timeout=args.verdict_cache_timeout,
    )
