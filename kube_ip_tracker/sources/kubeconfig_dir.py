"""Follow a ``--kubeconfig-dir`` directory: one kubeconfig file per cluster.

The directory is polled (cheap: a few small files). A file that appears starts its cluster, a file
that disappears stops it and removes its data, a file whose content changes restarts its
informers. Hidden entries (``.*``, e.g. the ``..data`` links of a mounted Secret) are skipped. A
file that becomes invalid is reported and its cluster keeps running with the last good content;
when two files name the same cluster id, the first in name order wins.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from kube_ip_tracker.backoff import Backoff
from kube_ip_tracker.kube.kubeconfig import KubeconfigError, spec_from_cluster_file
from kube_ip_tracker.model import ClusterSpec
from kube_ip_tracker.sources import metrics

log = logging.getLogger(__name__)


class SupervisorLike(Protocol):
    async def ensure(self, spec: ClusterSpec, *, restart: bool = False) -> None: ...

    async def remove(self, cluster_id: str, grace_seconds: float = 0.0) -> None: ...


@dataclass(frozen=True)
class _Entry:
    path: str
    digest: str
    spec: ClusterSpec


@dataclass
class _Scan:
    entries: dict[str, _Entry]  # by path
    errors: dict[str, str]  # path -> message, for files that are invalid now
    missing_dir: str = ""


class KubeconfigDirWatcher:
    """Keeps the supervisor's clusters equal to the files of one directory."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        supervisor: SupervisorLike,
        *,
        interval: float = 2.0,
        reserved: Iterable[str] = (),
    ) -> None:
        """``reserved``: cluster ids configured elsewhere (``--kubeconfig``); files naming them are refused."""
        self.directory = os.path.abspath(directory)
        self.supervisor = supervisor
        self.interval = interval
        self.reserved = frozenset(reserved)
        self._by_path: dict[str, _Entry] = {}
        self._active: dict[str, _Entry] = {}  # by cluster id
        self._reported: dict[str, str] = {}  # path -> last error logged

    def cluster_ids(self) -> set[str]:
        """Ids of the clusters the directory currently defines."""
        return set(self._active)

    def _scan(self) -> _Scan:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            return _Scan(dict(self._by_path), {}, f"kubeconfig directory {self.directory}: {exc.strerror or exc}")
        entries: dict[str, _Entry] = {}
        errors: dict[str, str] = {}
        for name in names:
            path = os.path.join(self.directory, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
            except OSError as exc:
                errors[path] = f"kubeconfig {path}: cannot read it: {exc.strerror or exc}"
                continue
            known = self._by_path.get(path)
            if known is not None and known.digest == digest:
                entries[path] = known
                continue
            try:
                entries[path] = _Entry(path, digest, spec_from_cluster_file(path))
            except KubeconfigError as exc:
                errors[path] = str(exc)
        return _Scan(entries, errors)

    async def start(self) -> None:
        """Initial load: raises KubeconfigError if the directory or any file in it is unusable."""
        scan = await asyncio.to_thread(self._scan)
        if scan.missing_dir:
            raise KubeconfigError(scan.missing_dir)
        if scan.errors:
            raise KubeconfigError("; ".join(scan.errors.values()))
        owners: dict[str, str] = {}
        for entry in scan.entries.values():
            if entry.spec.cluster_id in self.reserved:
                raise KubeconfigError(
                    f"cluster id {entry.spec.cluster_id!r} of {entry.path} is already defined by --kubeconfig"
                )
            other = owners.setdefault(entry.spec.cluster_id, entry.path)
            if other != entry.path:
                raise KubeconfigError(
                    f"cluster id {entry.spec.cluster_id!r} is defined in both {other} and {entry.path}"
                )
        await self._apply(scan)

    async def run(self) -> None:
        """Poll until cancelled."""
        backoff = Backoff(self.interval, max(self.interval, 60.0))
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = backoff.next_delay()
                log.exception("Reading kubeconfig directory %s failed; retrying in %.1fs", self.directory, delay)
                await asyncio.sleep(delay)

    async def poll(self) -> None:
        """One pass: read the directory and apply the differences."""
        await self._apply(await asyncio.to_thread(self._scan))

    async def _apply(self, scan: _Scan) -> None:
        if scan.missing_dir:
            if self._reported.get(self.directory) != scan.missing_dir:
                log.error("%s; keeping the clusters already watched", scan.missing_dir)
                self._reported[self.directory] = scan.missing_dir
            return
        self._reported.pop(self.directory, None)
        for path, message in scan.errors.items():
            if self._reported.get(path) != message:
                kept = " (its cluster keeps the previous configuration)" if path in self._by_path else ""
                log.error("Ignoring %s%s", message, kept)
                metrics.KUBECONFIG_RELOADS.labels("invalid").inc()
                self._reported[path] = message
            if path in self._by_path:
                scan.entries[path] = self._by_path[path]

        wanted: dict[str, _Entry] = {}
        refused: set[str] = set()
        for path in sorted(scan.entries):
            entry = scan.entries[path]
            if entry.spec.cluster_id in self.reserved:
                message = f"cluster id {entry.spec.cluster_id!r} of {path} is already defined by --kubeconfig"
                if self._reported.get(path) != message:
                    log.error("Ignoring %s", message)
                    self._reported[path] = message
                refused.add(path)
                continue
            first = wanted.setdefault(entry.spec.cluster_id, entry)
            if first is not entry:
                log.error(
                    "Cluster id %s is defined in both %s and %s; using %s",
                    entry.spec.cluster_id,
                    first.path,
                    entry.path,
                    first.path,
                )
        for path in [p for p in self._reported if p not in scan.errors and p not in refused and p != self.directory]:
            del self._reported[path]
        for cluster_id in [c for c in self._active if c not in wanted]:
            log.info("Kubeconfig file %s removed: stopping cluster %s", self._active[cluster_id].path, cluster_id)
            del self._active[cluster_id]
            await self.supervisor.remove(cluster_id, 0.0)
            metrics.KUBECONFIG_RELOADS.labels("applied").inc()
        for cluster_id, entry in wanted.items():
            old = self._active.get(cluster_id)
            if old is not None and old.digest == entry.digest and old.path == entry.path:
                continue
            if old is None:
                log.info("Kubeconfig file %s added: starting cluster %s", entry.path, cluster_id)
            else:
                log.info("Kubeconfig file %s changed: restarting cluster %s", entry.path, cluster_id)
            self._active[cluster_id] = entry
            await self.supervisor.ensure(entry.spec, restart=old is not None)
            metrics.KUBECONFIG_RELOADS.labels("applied").inc()
        self._by_path = dict(scan.entries)
