"""Packet enforcement on the node: NFQUEUE for first packets, conntrack marks for accepted connections.

Use :class:`Dataplane` with a :class:`DataplaneConfig`, a ``decide(PacketInfo) -> bool`` (or awaitable)
callback and an ``is_ready() -> bool`` callback, inside the agent's asyncio loop::

    config = config_from_args(args)  # --nfqueue-id, --fail-open, --pod-cidr ... (see add_arguments)
    dataplane = Dataplane(config, decide=lambda p: engine.decide(...).allowed, is_ready=mirror.is_ready)
    await dataplane.start()                      # bind the queue, then swap the rules in atomically
    await dataplane.set_local_pods(["10.244.1.0/24"])   # when this node's pods change
    dataplane.request_revalidation()             # on every policy / pod change: cut what is now denied
    dataplane.invalidate_verdicts()              # with verdict_cache_size > 0: in the same turn as any change
    await dataplane.stop()                       # remove the rules (stop(remove_rules=False) keeps them)

The rule layout is described in :mod:`.rules`. ``decide`` runs on the event loop: keep it fast (an
awaitable is awaited up to ``verdict_timeout``, then the fail-open/closed default applies).
"""

from .config import ConfigError, DataplaneConfig, add_arguments, config_from_args, parse_networks
from .dataplane import Dataplane
from .decisions import Decide, Decision, IsReady, as_allowed
from .errors import DataplaneError
from .installer import detect_backend, installed_pods
from .packet import PacketInfo, PacketParseError, Protocol, parse_packet
from .revalidate import Revalidation
from .rules import Backend

__all__ = [
    "Backend",
    "ConfigError",
    "Dataplane",
    "DataplaneConfig",
    "DataplaneError",
    "Decide",
    "Decision",
    "IsReady",
    "PacketInfo",
    "PacketParseError",
    "Protocol",
    "Revalidation",
    "add_arguments",
    "as_allowed",
    "config_from_args",
    "detect_backend",
    "installed_pods",
    "parse_networks",
    "parse_packet",
]
