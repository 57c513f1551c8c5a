"""What ``explain`` asks: two ends (``cluster/namespace/pod`` or an IP address) and ``PORT[/PROTOCOL]``.

Parsed on the command line (bad input is named there) and again by the agent, which resolves the
ends in its own view of the ClusterSet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from kube_ip_tracker.agent.policy import PolicyEngine
from kube_ip_tracker.agent.policy.evaluator import Endpoint

from .trace import Explanation, explain

PROTOCOLS = ("TCP", "UDP", "SCTP")


class RequestError(ValueError):
    """A malformed or unresolvable explain request; the message names the part."""


@dataclass(frozen=True)
class ExplainRequest:
    src: str
    dst: str
    port: int | None
    protocol: str

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.src, "to": self.dst, "port": self.port, "protocol": self.protocol}

    @classmethod
    def from_dict(cls, obj: Any) -> ExplainRequest:
        if not isinstance(obj, dict):
            raise RequestError("request: expected a JSON object")
        port = obj.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool)):
            raise RequestError(f"port: expected a number, got {port!r}")
        request = cls(str(obj.get("from", "")), str(obj.get("to", "")), port, str(obj.get("protocol", "TCP")))
        check_end(request.src, "--from")
        check_end(request.dst, "--to")
        check_port(request.port, request.protocol)
        return request


def check_end(text: str, flag: str) -> None:
    """A pod ``cluster/namespace/name`` or an IP address; RequestError naming ``flag`` otherwise."""
    try:
        ipaddress.ip_address(text)
        return
    except ValueError:
        pass
    parts = text.split("/")
    if len(parts) != 3 or not all(parts):
        raise RequestError(f"{flag} {text!r}: expected cluster/namespace/pod or an IP address")


def check_port(port: int | None, protocol: str) -> None:
    if port is not None and not 0 < port < 65536:
        raise RequestError(f"--port {port}: out of range 1-65535")
    if protocol not in PROTOCOLS:
        raise RequestError(f"--port protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")


def parse_port(text: str) -> tuple[int | None, str]:
    """``80``, ``80/TCP``, ``53/udp`` -> (port, protocol); TCP when no protocol is given."""
    number, _, protocol = text.partition("/")
    protocol = (protocol or "TCP").upper()
    try:
        port = int(number)
    except ValueError:
        raise RequestError(f"--port {text!r}: expected PORT[/PROTOCOL], e.g. 80/TCP") from None
    check_port(port, protocol)
    return port, protocol


def resolve(engine: PolicyEngine, text: str, flag: str) -> Endpoint:
    """The endpoint of a pod name or an address in ``engine``'s world; RequestError for an unknown pod."""
    try:
        return engine.endpoint_for_ip(text)
    except ValueError:
        pass
    cluster, namespace, name = text.split("/")
    try:
        return engine.endpoint_for_pod(cluster, namespace, name)
    except KeyError:
        known = sum(1 for e in engine.world.pods() if e.cluster == cluster)
        raise RequestError(
            f"{flag} {text}: no such pod (this agent knows {known} pods of cluster {cluster!r})"
        ) from None


def answer(engine: PolicyEngine, request: ExplainRequest, enforced_at: str = "") -> Explanation:
    """Resolve the ends and decide with a trace."""
    src = resolve(engine, request.src, "--from")
    dst = resolve(engine, request.dst, "--to")
    return explain(engine, src, dst, request.protocol, request.port, enforced_at)[1]
