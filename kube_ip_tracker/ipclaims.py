"""Which pod owns an IP when several pods claim it.

Two pods can report the same IP: clusters with overlapping pod CIDRs, or an IP reused while the
old pod's deletion has not been seen yet. The rule, shared by the tracker index and the agent
store so both always agree:

- the pod with the newest ``creation_timestamp`` owns the IP;
- on equal timestamps the greater ``(cluster, namespace, name)`` owns it;
- when the owner goes away (or drops the IP) the best remaining claim owns it again.

Claims hold the object the caller already stores (the index's :class:`~kube_ip_tracker.model.PodRecord`,
the agent store's compact pod entry: anything with the :class:`Claim` attributes), so an IP with a
single claim costs one dict entry.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

PodKey = tuple[str, str, str]


class Claim(Protocol):
    """What the rule reads of a pod."""

    @property
    def cluster(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def creation_timestamp(self) -> int: ...

    @property
    def ips(self) -> tuple[Hashable, ...]:
        """The keys the claims are held under (the index: IP text; the agent store: numeric keys)."""

    @property
    def key(self) -> PodKey: ...


C = TypeVar("C", bound=Claim)


def _rank(pod: Claim) -> tuple[int, str, str, str]:
    return (pod.creation_timestamp, pod.cluster, pod.namespace, pod.name)


def wins(a: Claim, b: Claim) -> bool:
    """True when ``a`` owns an IP that ``b`` also claims."""
    return _rank(a) > _rank(b)


class IPClaims(Generic[C]):
    """IP -> claiming pods, with the owner picked by :func:`wins`.

    ``add``/``remove`` take whole claims; a claim is identified by its key, so removing the
    previous version of a pod works even if it is not the same object.
    """

    __slots__ = ("_claims", "conflicts")

    def __init__(self) -> None:
        # ip -> the claim (one claim) or a list of claims sorted best first (several claims).
        self._claims: dict[Hashable, C | list[C]] = {}
        self.conflicts = 0  # IPs that are claimed by more than one pod right now

    def __len__(self) -> int:
        return len(self._claims)

    def add(self, pod: C) -> int:
        """Record ``pod``'s claims on its IPs; returns how many of them another pod claims too."""
        contested = 0
        claims_of = self._claims
        for ip in pod.ips:
            current = claims_of.setdefault(ip, pod)  # one lookup for the common case: a new IP
            if current is pod:
                continue
            key = pod.key
            if not isinstance(current, list):
                if current.key == key:
                    claims_of[ip] = pod
                    continue
                claims = [current]
                self.conflicts += 1
            else:
                claims = [c for c in current if c.key != key]
            contested += 1
            claims.append(pod)
            claims.sort(key=_rank, reverse=True)
            claims_of[ip] = claims
        return contested

    def remove(self, pod: C) -> None:
        """Drop ``pod``'s claims (by key) on the IPs it lists."""
        key = pod.key
        for ip in pod.ips:
            current = self._claims.get(ip)
            if current is None:
                continue
            if not isinstance(current, list):
                if current.key == key:
                    del self._claims[ip]
                continue
            rest = [c for c in current if c.key != key]
            if len(rest) == 1:
                self._claims[ip] = rest[0]
                self.conflicts -= 1
            else:
                self._claims[ip] = rest

    def owner(self, ip: Hashable) -> PodKey | None:
        """Key of the pod owning ``ip``, or ``None``."""
        pod = self.owner_record(ip)
        return None if pod is None else pod.key

    def owner_record(self, ip: Hashable) -> C | None:
        """The claim (as added) of the pod owning ``ip``, or ``None``."""
        current = self._claims.get(ip)
        if current is None or not isinstance(current, list):
            return current
        return current[0]

    def claimants(self, ip: Hashable) -> list[PodKey]:
        """Keys of every pod claiming ``ip``, owner first."""
        current = self._claims.get(ip)
        if current is None:
            return []
        if not isinstance(current, list):
            return [current.key]
        return [c.key for c in current]

    def clear(self) -> None:
        """Forget every claim."""
        self._claims.clear()
        self.conflicts = 0
