"""Revalidation: re-deciding accepted connections and deleting the conntrack entries now denied."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kube_ip_tracker.backoff import Backoff

from . import commands, conntrack, ctnetlink
from . import metrics as m
from .config import DataplaneConfig, IPNetwork
from .packet import IPAddress, PacketInfo
from .rules import split_families

log = logging.getLogger("kube_ip_tracker.agent.dataplane")


@dataclass(frozen=True, slots=True)
class Revalidation:
    """Outcome of one :meth:`Dataplane.revalidate` pass."""

    outcome: str  # ok, not-ready, timeout, error
    checked: int = 0
    cleared: int = 0


class Revalidator:
    """Checks the connections carrying the accepted conntrack mark against ``allowed``.

    ``allowed(packet)`` re-decides one connection; ``is_ready()`` gates passes; ``pods()`` gives
    the local pod networks (only their connections are checked).
    """

    def __init__(
        self,
        config: DataplaneConfig,
        allowed: Callable[[PacketInfo], Awaitable[bool]],
        is_ready: Callable[[], bool],
        pods: Callable[[], tuple[IPNetwork, ...]],
    ) -> None:
        self.config = config
        self._allowed = allowed
        self._ready = is_ready
        self._pods = pods
        self._lock = asyncio.Lock()
        self.wanted = asyncio.Event()
        self._label = str(config.nfqueue_id)

    def is_local(self, ip: IPAddress) -> bool:
        """Whether ``ip`` belongs to a local pod."""
        return any(ip in net for net in self._pods() if net.version == ip.version)

    async def run(self) -> None:
        """Run requested (and periodic) passes; retry failed or not-ready ones with backoff and jitter."""
        cfg = self.config
        backoff = Backoff(0.2, 5.0)
        retry = m.REVALIDATION_RETRY_SECONDS.labels(self._label)
        while True:
            if cfg.revalidate_interval > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wanted.wait(), cfg.revalidate_interval)
            else:
                await self.wanted.wait()
            await asyncio.sleep(cfg.revalidate_delay)  # let a burst of changes settle into one pass
            self.wanted.clear()
            result = await self.revalidate()
            if result.outcome == "ok":
                backoff.reset()
                retry.set(0)
                continue
            self.wanted.set()
            delay = backoff.next_delay()
            retry.set(delay)
            await asyncio.sleep(delay)

    async def revalidate(self) -> Revalidation:
        """Re-decide every accepted connection of a local pod; delete the conntrack entries now denied.

        Bounded by ``revalidate_timeout``. A deleted TCP/UDP connection's next packet is a new
        connection to the kernel (unmarked), so it is queued and decided again.
        """
        label = self._label
        if not self._ready():
            m.REVALIDATIONS.labels(label, "not-ready").inc()
            return Revalidation("not-ready")
        async with self._lock:
            started = time.monotonic()
            counts = [0, 0]
            try:
                await asyncio.wait_for(self._revalidate(counts), self.config.revalidate_timeout)
                outcome = "ok"
            except TimeoutError:
                outcome = "timeout"
                log.warning("revalidation stopped after %ss: checked=%d", self.config.revalidate_timeout, counts[0])
            except commands.CommandError as exc:
                outcome = "error"
                log.error("revalidation failed: %s", exc)
            except Exception:
                outcome = "error"
                log.exception("revalidation failed")
            m.REVALIDATIONS.labels(label, outcome).inc()
            m.REVALIDATION_SECONDS.labels(label).observe(time.monotonic() - started)
            if counts[1]:
                log.info("revalidation: checked %d connections, cleared %d", counts[0], counts[1])
            return Revalidation(outcome, counts[0], counts[1])

    async def _revalidate(self, counts: list[int]) -> None:
        v4, v6 = split_families(self._pods())
        families = [f for f, nets in (("ipv4", v4), ("ipv6", v6)) if nets]
        entries = await conntrack.list_marked(self.config.accepted_ct_mark, families, self.config.command_timeout)
        denied: list[conntrack.Entry] = []
        for entry in entries:
            if not (self.is_local(entry.src) or self.is_local(entry.dst)):
                continue
            counts[0] += 1
            if not await self._allowed(entry.packet):
                denied.append(entry)
        await self._delete_entries(denied, counts)

    def _cleared(self, entry: conntrack.Entry, counts: list[int]) -> None:
        counts[1] += 1
        m.CONNTRACK_CLEARED.labels(self._label).inc()
        log.info("revalidation: cut %s", entry.packet)

    async def _delete_entries(self, denied: list[conntrack.Entry], counts: list[int]) -> None:
        """Delete over ctnetlink in batches; entries it cannot express (or all, if it fails) with the tool."""
        by_tool = [e for e in denied if not ctnetlink.can_delete(e)]
        batched = [e for e in denied if ctnetlink.can_delete(e)]
        if batched:
            try:
                results = await asyncio.to_thread(ctnetlink.delete_entries, batched, self.config.command_timeout)
            except OSError as exc:
                m.QUEUE_ERRORS.labels(self._label, "ctnetlink").inc()
                log.warning("ctnetlink delete failed (%s); using the conntrack tool", exc)
                by_tool += batched
            else:
                for entry, error in results.items():
                    if error == 0:
                        self._cleared(entry, counts)
                    elif error != errno.ENOENT:
                        m.QUEUE_ERRORS.labels(self._label, "ctnetlink").inc()
                        log.warning("ctnetlink delete of %s failed: %s", entry.packet, os.strerror(error))
        limit = asyncio.Semaphore(8)

        async def delete(entry: conntrack.Entry) -> None:
            async with limit:
                if await conntrack.delete(entry, self.config.command_timeout):
                    self._cleared(entry, counts)

        await asyncio.gather(*(delete(e) for e in by_tool))
