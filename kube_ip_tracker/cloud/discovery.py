"""What every provider's discovery shares: the outcome of a pass, its errors, and cluster ids.

A discovered cluster names itself when its ``kube-system`` namespace carries the label
``cluster.clusterset.k8s.io`` (the ClusterSet / About API convention for a cluster's id); otherwise
its id is the provider's default for that name (``gke_<project>_<location>_<name>``,
``eks_<region>_<name>``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import aiohttp

from kube_ip_tracker.kube.names import label_value_problem
from kube_ip_tracker.model import ClusterSpec

log = logging.getLogger(__name__)

CLUSTER_ID_LABEL = "cluster.clusterset.k8s.io"
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


class ClusterName(Protocol):
    """A provider's cluster reference (a frozen, ordered dataclass): printable, with a default id."""

    @property
    def default_cluster_id(self) -> str:
        """The id used when the cluster does not name itself."""
        ...


N = TypeVar("N", bound=ClusterName)


class DiscoveryError(Exception):
    """The provider's API answered, but the cluster cannot be used as it is (not ready, no endpoint, bad CA).

    ``status`` is set when the cluster exists but is not ready yet (e.g. ``PROVISIONING``, ``CREATING``).
    """

    provider = "cloud"

    def __init__(self, name: object, message: str, *, status: str = "") -> None:
        super().__init__(f"{self.provider} cluster {name}: {message}")
        self.name = name
        self.status = status


@dataclass
class FetchResult(Generic[N]):
    """Outcome of one discovery pass: usable specs, clusters not ready, and clusters whose fetch failed."""

    specs: dict[N, ClusterSpec] = field(default_factory=dict)
    not_running: dict[N, str] = field(default_factory=dict)
    errors: dict[N, Exception] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every cluster was fetched and is ready."""
        return not self.not_running and not self.errors


def decode_ca(encoded: str, field: str) -> bytes:
    """Decode a CA bundle as the cloud APIs return it (base64 of PEM); ``ValueError`` says what is wrong with ``field``."""
    if not encoded:
        raise ValueError(f"{field} is empty")
    try:
        pem = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{field} is not valid base64: {exc}") from exc
    if _PEM_CERT not in pem:
        raise ValueError(f"{field} does not hold a PEM certificate")
    return pem


async def fetch_all(
    names: Iterable[N],
    fetch_one: Callable[[N], Awaitable[ClusterSpec]],
    on_error: Callable[[Exception], None] = lambda exc: None,
) -> FetchResult[N]:
    """Fetch every cluster concurrently; per-cluster failures are collected (``on_error`` sees each), never raised."""
    names = list(names)
    outcomes = await asyncio.gather(*(fetch_one(n) for n in names), return_exceptions=True)
    result: FetchResult[N] = FetchResult()
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, ClusterSpec):
            result.specs[name] = outcome
        elif isinstance(outcome, DiscoveryError) and outcome.status:
            result.not_running[name] = outcome.status
        elif isinstance(outcome, Exception):
            on_error(outcome)
            result.errors[name] = outcome
        else:  # BaseException (cancellation): do not swallow it
            raise outcome
    return result


class ClusterIdResolver(Generic[N]):
    """Reads the ``cluster.clusterset.k8s.io`` label of a cluster's kube-system namespace.

    The last id read per cluster is kept: when the API server cannot be reached, the id it had
    before is used (or the default id, for a cluster never reached), so a flaky API server does not
    make the cluster change id. ``unauthorized_hint`` is added to the warning when the API server
    answers 401 (what usually causes it with this provider's tokens).
    """

    def __init__(self, provider: str, *, timeout: float = 10.0, unauthorized_hint: str = "") -> None:
        self.provider = provider
        self.timeout = timeout
        self.unauthorized_hint = unauthorized_hint
        self._known: dict[N, str] = {}

    async def resolve(self, name: N, server: str, ca_pem: bytes | None, token: str) -> str:
        """The cluster id: the kube-system label when set and valid, else the default id."""
        try:
            label = await self._read_label(server, ca_pem, token)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, ValueError) as exc:
            fallback = self._known.get(name, name.default_cluster_id)
            log.warning(
                "Could not read namespace kube-system of %s cluster %s at %s to find its id (%s); using %s",
                self.provider,
                name,
                server,
                exc,
                fallback,
            )
            return fallback
        if label is None:
            cluster_id = name.default_cluster_id
        elif label == "" or label_value_problem(label):
            log.warning(
                "%s cluster %s: label %s=%r on namespace kube-system is not a valid cluster id; using %s",
                self.provider,
                name,
                CLUSTER_ID_LABEL,
                label,
                name.default_cluster_id,
            )
            cluster_id = name.default_cluster_id
        else:
            cluster_id = label
        self._known[name] = cluster_id
        return cluster_id

    async def _read_label(self, server: str, ca_pem: bytes | None, token: str) -> str | None:
        ctx = ssl.create_default_context(cadata=ca_pem.decode()) if ca_pem else ssl.create_default_context()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{server}/api/v1/namespaces/kube-system", headers=headers, ssl=ctx) as resp,
        ):
            if resp.status != 200:
                hint = f": {self.unauthorized_hint}" if resp.status == 401 and self.unauthorized_hint else ""
                raise ValueError(f"HTTP {resp.status} reading namespace kube-system{hint}")
            body = await resp.json()
        labels = (body.get("metadata") or {}).get("labels") or {}
        value = labels.get(CLUSTER_ID_LABEL)
        return str(value) if value is not None else None
