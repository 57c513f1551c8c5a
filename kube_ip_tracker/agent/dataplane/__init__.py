"""Packet enforcement on the node: NFQUEUE for first packets, conntrack marks for accepted connections.

Use :class:`Dataplane` with a :class:`DataplaneConfig`, a ``decide(PacketInfo) -> bool`` (or awaitable)
callback and an ``is_ready() -> bool`` callback.
"""

from .config import ConfigError, DataplaneConfig, add_arguments, config_from_args, parse_networks
from .dataplane import Dataplane, DataplaneError, Decide, IsReady, Revalidation, detect_backend
from .packet import PacketInfo, PacketParseError, Protocol, parse_packet
from .rules import Backend

__all__ = [
    "Backend",
    "ConfigError",
    "Dataplane",
    "DataplaneConfig",
    "DataplaneError",
    "Decide",
    "IsReady",
    "PacketInfo",
    "PacketParseError",
    "Protocol",
    "Revalidation",
    "add_arguments",
    "config_from_args",
    "detect_backend",
    "parse_networks",
    "parse_packet",
]
