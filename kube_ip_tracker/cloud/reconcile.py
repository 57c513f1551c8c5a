"""The reconcile loop of clusters discovered by name: keep the supervisor's clusters of one provider
equal to the configured, discovered ones.

Every pass fetches all configured clusters from the provider's API, then:

* a cluster seen for the first time is handed to the supervisor (its informers start);
* a cluster whose endpoint or CA changed is handed again (the supervisor restarts its informers);
* a cluster no longer configured, or deleted (the provider's API says it does not exist), is removed
  (informers stop; its data is purged after the grace period).

A cluster whose fetch failed otherwise (permission denied, unavailable, not ready) keeps whatever
it had. Passes with failures are retried sooner, with exponential backoff and jitter, up to the
normal interval. Clusters the reconciler did not add (static kubeconfig clusters, other providers'
clusters) are never touched. :class:`Provider` holds what differs between providers: names in
logs, the ready status, the metrics and which errors mean "does not exist".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol

from kube_ip_tracker.cloud.discovery import FetchResult, N
from kube_ip_tracker.cloud.metrics import ReconcileMetrics
from kube_ip_tracker.model import ClusterSpec


@dataclass(frozen=True)
class Provider:
    """What the reconcile loop needs to know about one cloud provider."""

    name: str  # in logs: "GKE", "EKS"
    ready_status: str  # the status of a usable cluster: "RUNNING", "ACTIVE"
    metrics: ReconcileMetrics
    is_not_found: Callable[[Exception], bool]  # the API says the cluster does not exist
    log: logging.Logger


class ClusterSupervisorLike(Protocol):
    """What the reconciler needs from the cluster supervisor (kube_ip_tracker.sources.supervisor)."""

    async def ensure(self, spec: ClusterSpec) -> None:
        """Start the cluster's informers, or restart them if the spec changed."""

    async def remove(self, cluster_id: str, grace_seconds: float) -> None:
        """Stop the cluster's informers; purge its data from the index after the grace period."""

    def specs(self) -> dict[str, ClusterSpec]:
        """The specs of all clusters currently supervised, by cluster id."""


class DiscoveryLike(Protocol[N]):
    """What the reconciler needs from a provider's discovery (GkeDiscovery, EksDiscovery)."""

    async def fetch(self, names: Iterable[N]) -> FetchResult[N]:
        """Fetch all clusters; per-cluster failures are in the result."""


class Backoff:
    """Exponential backoff with full jitter: ``uniform(base, min(cap, base * 2**n))``."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Record one more failure and return the delay before the next try."""
        upper = min(self.cap, self.base * (2**self.failures))
        self.failures += 1
        return self._rng.uniform(min(self.base, upper), upper)

    def reset(self) -> None:
        self.failures = 0


def _describe_change(old: ClusterSpec, new: ClusterSpec) -> str:
    changed = [what for what in ("server", "ca_pem") if getattr(old, what) != getattr(new, what)]
    return ", ".join("endpoint" if c == "server" else "CA" for c in changed) or "spec"


class Reconciler(Generic[N]):
    """Runs one provider's discovery periodically and applies the differences to the supervisor."""

    def __init__(
        self,
        provider: Provider,
        names: Sequence[N] | Callable[[], Sequence[N]],
        discovery: DiscoveryLike[N],
        supervisor: ClusterSupervisorLike,
        *,
        interval: float = 300.0,
        removal_grace: float = 60.0,
        backoff_base: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.provider = provider
        self._names = names
        self.discovery = discovery
        self.supervisor = supervisor
        self.interval = interval
        self.removal_grace = removal_grace
        self.backoff = Backoff(backoff_base, max(backoff_base, interval), rng)
        # cluster name -> spec handed to the supervisor. Only these clusters are ever removed.
        self.managed: dict[N, ClusterSpec] = {}
        self.passes = 0
        self._wakeup = asyncio.Event()
        # Configured clusters the provider's API has not answered for yet (none, or an error other than NOT_FOUND).
        self._unanswered: list[N] | None = None
        self._answered = asyncio.Event()  # set after a pass in which the API answered for every cluster

    def names(self) -> list[N]:
        """The clusters configured right now."""
        return list(self._names() if callable(self._names) else self._names)

    def set_names(self, names: Sequence[N]) -> None:
        """Change the configured clusters and run a pass soon (e.g. after a config reload)."""
        self._names = list(names)
        self._wakeup.set()

    def cluster_ids(self) -> set[str]:
        """Ids of the clusters handed to the supervisor."""
        return {spec.cluster_id for spec in self.managed.values()}

    def unanswered(self) -> list[N]:
        """Configured clusters whose last fetch failed with an API error (all of them before the first pass)."""
        return self.names() if self._unanswered is None else list(self._unanswered)

    async def wait_discovered(self, within: float) -> list[N]:
        """Wait up to ``within`` seconds for a pass in which the API answered for every configured cluster.

        An answer is a ready cluster (handed to the supervisor), a cluster not ready, or "not found".
        Returns the clusters still without an answer (empty when all had one).
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answered.wait(), within)
        return self.unanswered()

    async def close(self) -> None:
        """Release the provider's API client (call after ``run()`` ended)."""
        close = getattr(self.discovery, "close", None)
        if close is not None:
            await close()

    async def reconcile_once(self) -> FetchResult:
        """One pass: fetch, then start, restart or stop clusters. Returns the fetch result."""
        p, log, metrics = self.provider, self.provider.log, self.provider.metrics
        names = self.names()
        log.info("Fetching details for %d %s clusters...", len(names), p.name)
        result = await self.discovery.fetch(names)
        self.passes += 1
        log.info("Successfully fetched details for %d clusters.", len(result.specs))
        for name, status in result.not_running.items():
            kept = " (keeping its current watcher)" if name in self.managed else ""
            log.warning(
                "%s cluster %s is %s, not %s; skipping it and retrying later%s",
                p.name,
                name,
                status,
                p.ready_status,
                kept,
            )
        deleted = {name for name, exc in result.errors.items() if p.is_not_found(exc)}
        for name, exc in result.errors.items():
            if name in deleted:
                if name not in self.managed:
                    log.warning("%s cluster %s does not exist (yet); will retry: %s", p.name, name, exc)
                continue
            kept = f" (keeping watcher of {self.managed[name].cluster_id})" if name in self.managed else ""
            log.error("Fetching %s cluster %s failed, will retry%s: %s", p.name, name, kept, exc)
        self._unanswered = [name for name in result.errors if name not in deleted]

        configured = set(names)
        for name in [n for n in self.managed if n not in configured]:
            spec = self.managed.pop(name)
            log.info("Cluster no longer configured: %s. Stopping watcher.", spec.cluster_id)
            await self.supervisor.remove(spec.cluster_id, self.removal_grace)
        for name in [n for n in self.managed if n in deleted]:
            spec = self.managed.pop(name)
            log.info(
                "Cluster no longer exists in %s: %s (%s not found). Stopping watcher.", p.name, spec.cluster_id, name
            )
            await self.supervisor.remove(spec.cluster_id, self.removal_grace)

        # Ids the supervisor runs with a spec this reconciler did not hand over: static clusters, or
        # a --kubeconfig-dir file or another provider's cluster that took the id of one of ours (then that source keeps it).
        handed = {spec.cluster_id: spec for spec in self.managed.values()}
        static_ids = {cid for cid, spec in self.supervisor.specs().items() if handed.get(cid) != spec}
        for name in [n for n, spec in self.managed.items() if spec.cluster_id in static_ids]:
            log.error(
                "Cluster id %s of %s cluster %s is now used by another configured cluster; "
                "the %s cluster is no longer watched",
                self.managed.pop(name).cluster_id,
                p.name,
                name,
                p.name,
            )
        claimed: dict[str, N] = {}
        # Clusters already watched first: on an id clash the existing watcher wins over a newcomer.
        for name in sorted(names, key=lambda n: n not in self.managed):
            spec = result.specs.get(name)
            if spec is None:
                continue  # failed or not ready: keep whatever it had
            if spec.cluster_id in static_ids:
                log.error(
                    "%s cluster %s has id %s, which another configured cluster already uses; not starting it",
                    p.name,
                    name,
                    spec.cluster_id,
                )
                continue
            if spec.cluster_id in claimed:
                log.error(
                    "%s clusters %s and %s both have id %s; only the first is watched",
                    p.name,
                    claimed[spec.cluster_id],
                    name,
                    spec.cluster_id,
                )
                continue
            claimed[spec.cluster_id] = name
            await self._apply(name, spec)

        metrics.clusters.labels(state="configured").set(len(names))
        metrics.clusters.labels(state="watched").set(len(self.managed))
        if not self._unanswered:
            self._answered.set()
        if result.complete:
            metrics.reconciles.labels(result="ok").inc()
            metrics.last_success.set(time.time())
        else:
            metrics.reconciles.labels(result="partial").inc()
        return result

    async def _apply(self, name: N, spec: ClusterSpec) -> None:
        log = self.provider.log
        old = self.managed.get(name)
        if old is not None and old.cluster_id != spec.cluster_id:
            log.info(
                "%s cluster %s changed id from %s to %s", self.provider.name, name, old.cluster_id, spec.cluster_id
            )
            log.info("Cluster no longer configured: %s. Stopping watcher.", old.cluster_id)
            await self.supervisor.remove(old.cluster_id, self.removal_grace)
            old = None
        if old is None:
            log.info("New cluster configured: %s. Starting watcher.", spec.cluster_id)
        elif old != spec:
            log.info("Cluster %s changed (%s). Restarting watcher.", spec.cluster_id, _describe_change(old, spec))
        # ensure() is idempotent for an unchanged spec; calling it every pass also restores a
        # cluster the supervisor lost.
        await self.supervisor.ensure(spec)
        self.managed[name] = spec

    async def run(self) -> None:
        """Reconcile until cancelled: every ``interval``, sooner with backoff after failed passes."""
        p, log, metrics = self.provider, self.provider.log, self.provider.metrics
        log.info(
            "Starting %s reconciler for %d clusters (interval %.0fs, removal grace %.0fs)",
            p.name,
            len(self.names()),
            self.interval,
            self.removal_grace,
        )
        try:
            while True:
                self._wakeup.clear()
                try:
                    result = await self.reconcile_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    metrics.reconciles.labels(result="error").inc()
                    log.exception("%s reconcile pass failed; keeping the clusters already watched", p.name)
                    delay = self.backoff.next_delay()
                else:
                    if result.complete:
                        self.backoff.reset()
                        delay = self.interval
                    else:
                        delay = self.backoff.next_delay()
                metrics.backoff_seconds.set(delay)
                log.debug("Next %s reconcile pass in %.1fs", p.name, delay)
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            log.info("%s reconciler stopped", p.name)
