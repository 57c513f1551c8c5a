"""The agent's packet enforcement: first packets over NFQUEUE, accepted connections marked in conntrack."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from kube_ip_tracker.backoff import Backoff

from . import metrics as m
from .config import DataplaneConfig, IPNetwork, parse_networks
from .decisions import Decide, Decision, IsReady, as_allowed
from .errors import DataplaneError
from .installer import RuleInstaller, detect_backend
from .nfq import NF_ACCEPT, NF_DROP, NF_REPEAT, QueueBindError, QueueSocket
from .packet import IPAddress, PacketInfo, PacketParseError, parse_packet
from .revalidate import Revalidation, Revalidator
from .rules import Backend
from .verdict_cache import VerdictCache, flush_left_over

log = logging.getLogger("kube_ip_tracker.agent.dataplane")


class Dataplane:
    """Enforces verdicts for connections to and from this node's pods.

    ``decide(packet)`` returns (or resolves to) True to allow the connection; it runs on the event
    loop of :meth:`start`. ``is_ready()`` says whether decisions can be trusted yet; while it is
    False, new connections are dropped (fail-closed) or accepted provisionally (``fail_open``):
    marked like allowed ones and re-checked by a revalidation pass as soon as the agent is ready.
    A failing or too slow decision gets the default verdict without a mark (asked again on the
    connection's next packet).

    With ``verdict_cache_size`` > 0 the kernel decides connections whose (source, destination,
    protocol, port) was accepted before (see :mod:`.verdict_cache`): call :meth:`invalidate_verdicts`
    (``request_revalidation`` does) in the same event-loop turn as any change that may change a verdict.
    """

    def __init__(self, config: DataplaneConfig, decide: Decide, is_ready: IsReady) -> None:
        self.config = config
        self._decide = decide
        self._is_ready = is_ready
        self._pods: tuple[IPNetwork, ...] = config.local_pods
        self._backend: Backend | None = None
        self._installer: RuleInstaller | None = None
        self._queue: QueueSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, tuple[Any, asyncio.Task[None], float]] = {}  # packet, decision, arrival
        self._rebind_task: asyncio.Task[None] | None = None
        self._revalidator = Revalidator(config, self._allowed, self._ready, lambda: self._pods)
        self._revalidation_task: asyncio.Task[None] | None = None
        self._label = str(config.nfqueue_id)
        # Metric children of the per-packet path, looked up once (labels() takes a lock and a dict lookup).
        self._queued = m.PACKETS_QUEUED.labels(self._label)
        self._decision_seconds = m.DECISION_SECONDS.labels(self._label)
        self._verdict_counters: dict[tuple[str, str], Any] = {}
        self._cache: VerdictCache | None = None
        self._generation = 0  # invalidations before start() (the install flushes the cache anyway)
        self._provisional = False  # not-ready verdicts went into the cache since the last flush
        self._repair_task: asyncio.Task[None] | None = None
        self._send: Callable[[Any, int, int | None], None] = _answer_itself  # queue.verdict once bound
        self._verdict_mark = config.verdict_mark
        self._not_queue_mark = ~config.queue_mark & 0xFFFFFFFF
        self._iptables = False
        self._debug = log.isEnabledFor(logging.DEBUG)

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def backend(self) -> Backend | None:
        """The backend chosen at :meth:`start` (None before)."""
        return self._backend

    @property
    def running(self) -> bool:
        return self._queue is not None

    async def start(self) -> None:
        """Bind the queue, then install (or atomically replace) the rules."""
        if self._queue is not None:
            raise DataplaneError("dataplane already started")
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self.forget_left_over_verdicts()
        self._backend = await detect_backend(cfg) if cfg.backend == "auto" else Backend(cfg.backend)
        self._installer = RuleInstaller(cfg, self._backend)
        self._iptables = self._backend is Backend.IPTABLES
        for backend in Backend:
            m.BACKEND.labels(self._label, backend.value).set(1 if backend is self._backend else 0)
        queue = QueueSocket(cfg.nfqueue_id, cfg.queue_max_len, self.handle_packet)
        try:
            queue.bind(cfg.fail_open)
        except QueueBindError as exc:
            raise DataplaneError(str(exc)) from exc
        self._use_queue(queue)
        try:
            self._cache = VerdictCache(self._installer.rules)
            await self.sync_rules()
        except BaseException:
            queue.poll()  # old rules may already be queueing to us: answer those packets
            self._queue = None
            self._flush_pending("error")
            queue.close()
            self._send = _answer_itself
            self._close_cache()
            raise
        if self._cache.enabled:
            m.VERDICT_CACHES.register(self._label, cfg.verdict_cache_size, self._cache.stats)
        self._revalidation_task = self._loop.create_task(self._revalidator.run())
        log.info(
            "dataplane started: backend=%s queue=%d fail_open=%s pods=%s table=inet %s",
            self._backend.value,
            cfg.nfqueue_id,
            cfg.fail_open,
            ",".join(str(p) for p in self._pods) or "(none)",
            cfg.name,
        )

    async def stop(self, remove_rules: bool = True) -> None:
        """Remove the rules (unless ``remove_rules`` is False), give every pending packet a verdict, unbind."""
        for task in (self._rebind_task, self._revalidation_task, self._repair_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._rebind_task = self._revalidation_task = self._repair_task = None
        try:
            if remove_rules:
                await self.remove_rules()
        finally:
            queue = self._queue
            if queue is not None:
                queue.poll()  # packets queued before the rules went away
            self._queue = None
            self._flush_pending("shutdown")
            if queue is not None:
                queue.close()
            self._send = _answer_itself
            self._close_cache()
            log.info(
                "dataplane stopped: queue=%d rules %s", self.config.nfqueue_id, "removed" if remove_rules else "kept"
            )

    async def sync_rules(self) -> None:
        """(Re)apply all our rules: nft in one transaction, then iptables in one; gapless for traffic.

        :meth:`start` calls it; call it again to repair rules someone else removed or changed.
        """
        if self._installer is None:
            raise DataplaneError("dataplane not started: no backend chosen yet")
        await self._installer.sync(self._pods)

    def _close_cache(self) -> None:
        if self._cache is not None:
            m.VERDICT_CACHES.unregister(self._label)
            self._generation = self._cache.generation
            self._cache.close()
            self._cache = None

    async def remove_rules(self) -> None:
        """Delete our iptables chain (if any) and nft table (by name: also when another process installed them)."""
        await (self._installer or RuleInstaller(self.config, Backend.IPTABLES)).remove()

    async def __aenter__(self) -> Dataplane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- local pods ------------------------------------------------------------------------------

    @property
    def local_pods(self) -> tuple[IPNetwork, ...]:
        return self._pods

    async def set_local_pods(self, pods: Iterable[str | IPNetwork]) -> None:
        """Replace the enforced pod addresses/CIDRs in one nft transaction."""
        networks = tuple(p if not isinstance(p, str) else parse_networks([p])[0] for p in pods)
        if self._installer is not None and self._queue is not None:
            await self._installer.set_pods(networks)
        self._pods = networks
        log.info("dataplane local pods: %s", ",".join(str(p) for p in networks) or "(none)")

    def is_local(self, ip: IPAddress) -> bool:
        """Whether ``ip`` belongs to a local pod."""
        return self._revalidator.is_local(ip)

    # --- verdicts --------------------------------------------------------------------------------

    def _use_queue(self, queue: QueueSocket) -> None:
        assert self._loop is not None
        queue.on_error = self._on_queue_error
        queue.attach(self._loop)
        self._queue = queue
        self._send = queue.verdict

    def _default_verdict(self, packet: Any, info: PacketInfo | None, reason: str, started: float) -> None:
        """The fail-open/closed verdict: accept without marking, or drop."""
        if self.config.fail_open:
            m.FAIL_OPEN_PASSES.labels(self._label, reason).inc()
            self._give(packet, info, False, True, reason, started)
        else:
            self._give(packet, info, False, False, reason, started)

    def _give(
        self, packet: Any, info: PacketInfo | None, accept: bool, fail_open: bool, reason: str, started: float
    ) -> None:
        """The verdict, counted, and the time since the packet's arrival (``started``) observed."""
        try:
            if not (accept or fail_open):
                self._send(packet, NF_DROP, None)
            elif self._iptables:
                # Repeat the security-table hook with our queue bit cleared instead of accepting: an
                # accept would skip the rest of that chain, where another agent on this host (its own
                # mark bits) may still have to see the packet. Our own rule no longer matches it.
                mark = packet.mark & self._not_queue_mark
                self._send(packet, NF_REPEAT, mark | self._verdict_mark if accept else mark)
            elif accept:
                self._send(packet, NF_ACCEPT, packet.mark | self._verdict_mark)
            else:
                self._send(packet, NF_ACCEPT, None)
        except RuntimeError as exc:  # queue unbound meanwhile: the kernel has dropped the packet
            m.QUEUE_ERRORS.labels(self._label, "verdict").inc()
            log.warning("verdict for %s failed: %s", info, exc)
            return
        if accept and self._cache is not None:
            self._cache.filled()
        result = "accept" if accept or fail_open else "drop"
        counter = self._verdict_counters.get((result, reason))
        if counter is None:
            counter = self._verdict_counters[result, reason] = m.VERDICTS.labels(self._label, result, reason)
        counter.value += 1
        self._decision_seconds.observe(time.perf_counter() - started)
        if self._debug:
            log.debug("queue %d: %s %s (%s)", self.config.nfqueue_id, result, info, reason)

    def _ready(self) -> bool:
        try:
            return bool(self._is_ready())
        except Exception:
            log.exception("is_ready callback failed; treating the agent as not ready")
            m.QUEUE_ERRORS.labels(self._label, "ready-callback").inc()
            return False

    def handle_packet(self, packet: Any) -> None:
        """Decide one queued packet (called by the queue socket on the event loop; public for tests).

        ``packet`` is a netfilterqueue Packet (``get_payload()``, ``mark``, ``id``; the verdict goes through
        the queue socket) or, without a bound queue, anything with ``get_payload()``, ``mark`` and
        ``verdict(verdict, mark)``. Never raises; always leads to exactly one verdict, now or after an
        awaitable decision.
        """
        started = time.perf_counter()
        self._queued.value += 1
        try:
            info = parse_packet(packet.get_payload())
        except (PacketParseError, RuntimeError) as exc:
            m.QUEUE_ERRORS.labels(self._label, "parse").inc()
            log.warning("queue %d: unreadable packet (%s)", self.config.nfqueue_id, exc)
            self._default_verdict(packet, None, "parse-error", started)
            return
        if not self._ready():
            if self.config.fail_open:
                # Accepted and marked, so the connection stays in the kernel; the revalidation
                # requested here re-checks it (and cuts it if denied) once the agent is ready.
                m.FAIL_OPEN_PASSES.labels(self._label, "not-ready").inc()
                self._give(packet, info, True, False, "not-ready", started)
                self._provisional = True  # cached too: flushed once ready
                self._revalidator.wanted.set()
            else:
                self._give(packet, info, False, False, "not-ready", started)
            return
        if self._provisional:
            self._provisional = False
            self._invalidate("ready")
        try:
            result = self._decide(info)
            if result is True or result is False:
                allowed = result
            elif hasattr(result, "__await__"):  # (inspect.isawaitable's ABC check costs more per packet)
                key = id(packet)
                finish = self._finish(key, packet, info, result, self.generation, started)
                task = asyncio.get_running_loop().create_task(finish)
                self._pending[key] = (packet, task, started)
                m.PENDING.labels(self._label).set(len(self._pending))
                return
            else:
                allowed = as_allowed(result)
        except Exception:
            m.QUEUE_ERRORS.labels(self._label, "decide").inc()
            log.exception("decide failed for %s", info)
            self._default_verdict(packet, info, "error", started)
            return
        self._give(packet, info, allowed, False, "decided", started)

    async def _finish(
        self, key: int, packet: Any, info: PacketInfo, result: Awaitable[Decision], generation: int, started: float
    ) -> None:
        try:
            allowed = as_allowed(await asyncio.wait_for(result, self.config.verdict_timeout))
        except TimeoutError:
            m.QUEUE_ERRORS.labels(self._label, "timeout").inc()
            log.warning("no decision for %s within %ss", info, self.config.verdict_timeout)
            if self._pending.pop(key, None) is not None:
                self._default_verdict(packet, info, "timeout", started)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            m.QUEUE_ERRORS.labels(self._label, "decide").inc()
            log.exception("decide failed for %s", info)
            if self._pending.pop(key, None) is not None:
                self._default_verdict(packet, info, "error", started)
            return
        else:
            # Absent when shutdown already gave the packet its verdict.
            if self._pending.pop(key, None) is not None:
                self._give(packet, info, allowed, False, "decided", started)
                if allowed and generation != self.generation:
                    self._invalidate("stale-decision")  # decided with what changed meanwhile: not cached
        finally:
            m.PENDING.labels(self._label).set(len(self._pending))

    def _flush_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for packet, task, started in pending.values():
            task.cancel()
            self._default_verdict(packet, None, reason, started)
        m.PENDING.labels(self._label).set(0)

    # --- queue recovery --------------------------------------------------------------------------

    def _on_queue_error(self, exc: OSError) -> None:
        m.QUEUE_ERRORS.labels(self._label, "recv").inc()
        log.error("queue %d: receive failed (%s); rebinding", self.config.nfqueue_id, exc)
        if self._loop is not None and (self._rebind_task is None or self._rebind_task.done()):
            self._rebind_task = self._loop.create_task(self._rebind())

    async def _rebind(self) -> None:
        """Rebind the queue with exponential backoff until it works or the dataplane stops."""
        backoff = Backoff(0.05, 5.0)
        while self._queue is not None:
            self._flush_pending("error")
            self._queue.close()
            queue = QueueSocket(self.config.nfqueue_id, self.config.queue_max_len, self.handle_packet)
            try:
                queue.bind(self.config.fail_open)
            except OSError as exc:
                m.QUEUE_ERRORS.labels(self._label, "rebind").inc()
                delay = backoff.next_delay()
                log.error("queue %d: rebind failed (%s); retrying in %.2fs", self.config.nfqueue_id, exc, delay)
                await asyncio.sleep(delay)
                continue
            self._use_queue(queue)
            log.info("queue %d: rebound", self.config.nfqueue_id)
            return

    # --- verdict cache ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Counts :meth:`invalidate_verdicts` calls: a decision made under an older generation may be stale."""
        return self._cache.generation if self._cache is not None else self._generation

    def forget_left_over_verdicts(self) -> None:
        """Empty the verdict cache a previous (crashed) run of our table left, at once (start does it first)."""
        flush_left_over(self.config)

    def invalidate_verdicts(self) -> None:
        """A verdict may have changed: empty the kernel's verdict cache now (synchronous, ~100 us; skipped when
        nothing was accepted since the last flush). Call it in the same event-loop turn as the change."""
        self._invalidate("change")

    def _invalidate(self, reason: str) -> None:
        if self._queue is not None:
            self._queue.flush()  # verdicts decided before the change reach the kernel (and its cache) first
        if self._cache is None:
            self._generation += 1
            return
        if not self._cache.invalidate(reason) and self._loop is not None:
            # The cache may still hold old verdicts: re-install the rules (their transaction flushes it).
            if self._repair_task is None or self._repair_task.done():
                self._repair_task = self._loop.create_task(self._repair())

    async def _repair(self) -> None:
        backoff = Backoff(0.05, 5.0)
        while self._queue is not None:
            try:
                await self.sync_rules()
                return
            except DataplaneError as exc:
                delay = backoff.next_delay()
                log.error(
                    "re-installing the rules after a failed cache flush failed (%s); retrying in %.2fs", exc, delay
                )
                await asyncio.sleep(delay)

    # --- revalidation ----------------------------------------------------------------------------

    def request_revalidation(self) -> None:
        """Ask for a revalidation pass soon (and empty the verdict cache now); cheap and coalesced, call it on
        every policy or pod change."""
        self._invalidate("change")
        self._revalidator.wanted.set()

    async def revalidate(self) -> Revalidation:
        """Re-decide every accepted connection of a local pod; delete the conntrack entries now denied.

        Bounded by ``revalidate_timeout``. A deleted TCP/UDP connection's next packet is a new
        connection to the kernel (unmarked), so it is queued and decided again.
        """
        return await self._revalidator.revalidate()

    async def _allowed(self, info: PacketInfo) -> bool:
        """The decision for an existing connection (errors count as the fail-open/closed default)."""
        try:
            result = self._decide(info)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.config.verdict_timeout)
            return as_allowed(result)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            m.QUEUE_ERRORS.labels(self._label, "timeout").inc()
            log.warning("no decision for %s within %ss during revalidation", info, self.config.verdict_timeout)
            return self.config.fail_open
        except Exception:
            m.QUEUE_ERRORS.labels(self._label, "decide").inc()
            log.exception("decide failed for %s during revalidation", info)
            return self.config.fail_open


def _answer_itself(packet: Any, verdict: int, mark: int | None) -> None:
    """Without a bound queue (tests): the packet object takes its own verdict."""
    packet.verdict(verdict, mark)
