"""The agent's side of the kernel's verdict cache (the ``verdicts4``/``verdicts6`` sets of :mod:`.rules`).

The kernel fills the cache itself: every connection the agent accepts adds its tuple on its way
through our commit chain, inside the verdict's own syscall. So the cache can only hold verdicts
given since the last flush, and :meth:`VerdictCache.invalidate` empties it synchronously (one
in-process libnftables transaction, no await) in the same event-loop turn as the state change that
calls it: no connection is judged by the agent, and none by the kernel after the flush returns,
with the old state. A flush is skipped while nothing was accepted since the previous one.

``generation`` counts invalidations, so a decision that was awaited across one can be told stale.
"""

from __future__ import annotations

import logging

from . import metrics as m
from .config import DataplaneConfig
from .nftlib import Nft, NftError
from .rules import VERDICT_SETS, RuleSet

log = logging.getLogger("kube_ip_tracker.agent.dataplane")


def flush_left_over(config: DataplaneConfig) -> bool:
    """Empty the verdict sets a previous run of our table left (a crash keeps its rules, and the kernel
    keeps applying their cached verdicts); True if there were any. Synchronous and fast: call it first
    thing on start, before the slower steps that lead to the rules' re-install (which flushes them too)."""
    table = f"inet {config.name}"
    try:
        nft = Nft()
    except NftError as exc:
        log.warning("cannot empty a previous run's verdict cache: %s", exc)
        return False
    try:
        nft.run("".join(f"flush set {table} {name}\n" for name, _kind, _keyword in VERDICT_SETS))
    except NftError:  # no such table or sets: nothing left over
        return False
    finally:
        nft.close()
    log.info("emptied the verdict cache left in table %s by a previous run", table)
    return True


class VerdictCache:
    """Flushes and reads the verdict sets of one rule set (a no-op when the cache is off)."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.enabled = rules.cache
        self.generation = 0
        self.dirty = True  # whatever a previous run left (each install flushes it too)
        self._label = str(rules.config.nfqueue_id)
        self._flusher: Nft | None = None
        self._reader: Nft | None = None
        if self.enabled:
            self._flusher = Nft()
            self._reader = Nft()  # for metrics scrapes, from their own thread: never waits for a flush

    def filled(self) -> None:
        """An accepted verdict (with the verdict mark) was given: the kernel may have added its tuple."""
        self.dirty = True

    def invalidate(self, reason: str) -> bool:
        """Empty the cache now; False when the flush failed (the caller must re-install the rules)."""
        self.generation += 1
        if self._flusher is None or not self.dirty:
            return True
        try:
            self._flusher.run(self.rules.nft_flush_verdicts())
        except NftError as exc:
            m.QUEUE_ERRORS.labels(self._label, "cache-flush").inc()
            log.error("flushing the verdict cache of table %s failed: %s", self.rules.table, exc)
            return False
        self.dirty = False
        m.CACHE_FLUSHES.labels(self._label, reason).inc()
        return True

    def stats(self) -> tuple[int, int]:
        """(entries now in both sets, connections the cache accepted since the rules were installed)."""
        if self._reader is None:
            return 0, 0
        table = self.rules.table
        entries = 0
        for name, _kind, _keyword in VERDICT_SETS:
            for item in self._reader.listing(f"list set {table} {name}"):
                entries += len((item.get("set") or {}).get("elem") or [])
        hits = 0
        for item in self._reader.listing(f"list chain {table} enforce"):
            rule = item.get("rule") or {}
            expressions = rule.get("expr") or []
            if any(str((e.get("match") or {}).get("right", "")).startswith("@verdicts") for e in expressions):
                hits += sum(int(e["counter"].get("packets", 0)) for e in expressions if "counter" in e)
        return entries, hits

    def close(self) -> None:
        for nft in (self._flusher, self._reader):
            if nft is not None:
                nft.close()
        self._flusher = self._reader = None
