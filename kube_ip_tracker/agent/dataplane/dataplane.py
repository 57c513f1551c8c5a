"""The agent's packet enforcement: first packets over NFQUEUE, accepted connections marked in conntrack."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from kube_ip_tracker.agent.client.backoff import Backoff

from . import commands, conntrack, ctnetlink
from . import metrics as m
from .config import DataplaneConfig, IPNetwork, parse_networks
from .nfq import QueueBindError, QueueSocket
from .packet import IPAddress, PacketInfo, PacketParseError, parse_packet
from .rules import IPTABLES_TABLE, Backend, RuleSet, parse_iptables_save, queue_statement, split_families

log = logging.getLogger("kube_ip_tracker.agent.dataplane")


class HasAllowed(Protocol):
    """A verdict object, like the policy evaluator's ``Verdict``."""

    @property
    def allowed(self) -> bool: ...


Decision = bool | HasAllowed
Decide = Callable[[PacketInfo], Decision | Awaitable[Decision]]
IsReady = Callable[[], bool]

NFT = "nft"
IPTABLES_TOOLS = (("iptables", "ipv4"), ("ip6tables", "ipv6"))


class DataplaneError(RuntimeError):
    """The dataplane could not start or change its rules."""


def as_allowed(decision: object) -> bool:
    """A decision as a bool: ``True``/``False`` or an object with a bool ``allowed`` (never plain truthiness,
    so returning the wrong object cannot silently allow everything)."""
    if isinstance(decision, bool):
        return decision
    allowed = getattr(decision, "allowed", None)
    if isinstance(allowed, bool):
        return allowed
    raise TypeError(f"decide must return a bool or an object with a bool 'allowed', got {type(decision).__name__}")


@dataclass(frozen=True, slots=True)
class Revalidation:
    """Outcome of one :meth:`Dataplane.revalidate` pass."""

    outcome: str  # ok, not-ready, timeout, error
    checked: int = 0
    cleared: int = 0


async def detect_backend(config: DataplaneConfig) -> Backend:
    """nft when the kernel accepts an nft ``queue`` rule (checked with ``nft -c``, nothing is loaded), else iptables."""
    probe = (
        f"table inet {config.name}-probe {{\n  chain probe {{\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    meta l4proto 253 {queue_statement(config.nfqueue_id, True)}\n  }}\n}}\n"
    )
    try:
        await commands.run([NFT, "-c", "-f", "-"], stdin=probe, time_limit=config.command_timeout)
        return Backend.NFT
    except commands.CommandError as exc:
        errors = [line for line in exc.stderr.splitlines() if "Error" in line] or [exc.stderr.strip()]
        log.info("nft queue expression unavailable (%s); using iptables NFQUEUE", errors[0].strip())
    try:
        await commands.run(["iptables-save", "-t", IPTABLES_TABLE], time_limit=config.command_timeout)
    except commands.CommandError as exc:
        raise DataplaneError(f"neither nft queue nor iptables NFQUEUE is usable: {exc}") from exc
    return Backend.IPTABLES


class Dataplane:
    """Enforces verdicts for connections to and from this node's pods.

    ``decide(packet)`` returns (or resolves to) True to allow the connection; it runs on the event
    loop of :meth:`start`. ``is_ready()`` says whether decisions can be trusted yet; while it is
    False, new connections are dropped (fail-closed) or accepted provisionally (``fail_open``):
    marked like allowed ones and re-checked by a revalidation pass as soon as the agent is ready.
    A failing or too slow decision gets the default verdict without a mark (asked again on the
    connection's next packet).
    """

    def __init__(self, config: DataplaneConfig, decide: Decide, is_ready: IsReady) -> None:
        self.config = config
        self._decide = decide
        self._is_ready = is_ready
        self._pods: tuple[IPNetwork, ...] = config.local_pods
        self._backend: Backend | None = None
        self._rules: RuleSet | None = None
        self._queue: QueueSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, tuple[Any, asyncio.Task[None]]] = {}
        self._rule_lock = asyncio.Lock()
        self._revalidate_lock = asyncio.Lock()
        self._rebind_task: asyncio.Task[None] | None = None
        self._revalidate_wanted = asyncio.Event()
        self._revalidator: asyncio.Task[None] | None = None
        self._label = str(config.nfqueue_id)

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
        self._backend = await detect_backend(cfg) if cfg.backend == "auto" else Backend(cfg.backend)
        self._rules = RuleSet(cfg, self._backend)
        for backend in Backend:
            m.BACKEND.labels(self._label, backend.value).set(1 if backend is self._backend else 0)
        queue = QueueSocket(cfg.nfqueue_id, cfg.queue_max_len, self.handle_packet)
        try:
            queue.bind(cfg.fail_open)
        except QueueBindError as exc:
            raise DataplaneError(str(exc)) from exc
        queue.on_error = self._on_queue_error
        queue.attach(self._loop)
        self._queue = queue
        try:
            await self.sync_rules()
        except BaseException:
            self._queue = None
            queue.poll()  # old rules may already be queueing to us: answer those packets
            self._flush_pending("error")
            queue.close()
            raise
        self._revalidator = self._loop.create_task(self._revalidation_loop())
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
        for task in (self._rebind_task, self._revalidator):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._rebind_task = self._revalidator = None
        try:
            if remove_rules:
                await self.remove_rules()
        finally:
            queue, self._queue = self._queue, None
            if queue is not None:
                queue.poll()  # packets queued before the rules went away
            self._flush_pending("shutdown")
            if queue is not None:
                queue.close()
            log.info(
                "dataplane stopped: queue=%d rules %s", self.config.nfqueue_id, "removed" if remove_rules else "kept"
            )

    async def remove_rules(self) -> None:
        """Delete our iptables chain (if any) and nft table (by name: also when another process installed them)."""
        rules = self._rules or RuleSet(self.config, Backend.IPTABLES)
        async with self._rule_lock:
            try:
                await self._remove_iptables(rules)
                await self._nft(rules.nft_delete(), "remove")
            except commands.CommandError as exc:
                raise DataplaneError(f"removing dataplane rules failed: {exc}") from exc

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
        if self._rules is not None and self._queue is not None:
            async with self._rule_lock:
                try:
                    await self._nft(self._rules.nft_set_pods(networks), "pods")
                except commands.CommandError as exc:
                    raise DataplaneError(f"updating the local pod sets failed: {exc}") from exc
        self._pods = networks
        log.info("dataplane local pods: %s", ",".join(str(p) for p in networks) or "(none)")

    def is_local(self, ip: IPAddress) -> bool:
        """Whether ``ip`` belongs to a local pod."""
        return any(ip in net for net in self._pods if net.version == ip.version)

    # --- rules -----------------------------------------------------------------------------------

    async def _nft(self, text: str, op: str) -> None:
        try:
            await commands.run([NFT, "-f", "-"], stdin=text, time_limit=self.config.command_timeout)
        except commands.CommandError:
            m.RULE_SYNCS.labels(self._label, op, "error").inc()
            raise
        m.RULE_SYNCS.labels(self._label, op, "ok").inc()

    async def _iptables_state(self, tool: str, chain: str) -> tuple[bool, dict[str, int]]:
        saved = await commands.run([f"{tool}-save", "-t", IPTABLES_TABLE], time_limit=self.config.command_timeout)
        return parse_iptables_save(saved.stdout, chain)

    async def _restore(self, tool: str, text: str, op: str) -> None:
        try:
            await commands.run([f"{tool}-restore", "--noflush"], stdin=text, time_limit=self.config.command_timeout)
        except commands.CommandError:
            m.RULE_SYNCS.labels(self._label, op, "error").inc()
            raise
        m.RULE_SYNCS.labels(self._label, op, "ok").inc()

    async def sync_rules(self) -> None:
        """(Re)apply all our rules: nft in one transaction, then iptables in one; gapless for traffic.

        :meth:`start` calls it; call it again to repair rules someone else removed or changed.
        """
        if self._rules is None:
            raise DataplaneError("dataplane not started: no backend chosen yet")
        rules = self._rules
        async with self._rule_lock:
            try:
                try:
                    await self._nft(rules.nft_update(self._pods), "install")
                except commands.CommandError as exc:
                    # An existing table of another layout (older version, other marks): replace it whole.
                    log.warning("updating table inet %s in place failed (%s); replacing it", self.config.name, exc)
                    await self._nft(rules.nft_replace(self._pods), "replace")
                if self._backend is Backend.IPTABLES:
                    for tool, family in IPTABLES_TOOLS:
                        await self._install_iptables(tool, family, rules)
                else:
                    await self._remove_iptables(rules)
            except commands.CommandError as exc:
                raise DataplaneError(f"installing dataplane rules failed: {exc}") from exc

    async def _install_iptables(self, tool: str, family: str, rules: RuleSet) -> None:
        # iptables-save and -restore are two steps; retry when someone changed the hook chains in between.
        for attempt in range(3):
            try:
                _, jumps = await self._iptables_state(tool, rules.queue_chain)
                await self._restore(tool, rules.iptables_install(jumps), "install")
                return
            except commands.CommandError as exc:
                if family == "ipv6" and not split_families(self._pods)[1]:
                    log.warning("%s unusable, IPv6 pod traffic is not queued: %s", tool, exc)
                    return
                if attempt == 2:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    async def _remove_iptables(self, rules: RuleSet) -> None:
        for tool, _family in IPTABLES_TOOLS:
            try:
                exists, jumps = await self._iptables_state(tool, rules.queue_chain)
            except commands.CommandError as exc:
                log.debug("%s-save failed, nothing to remove: %s", tool, exc)
                continue
            if exists or jumps:
                await self._restore(tool, rules.iptables_remove(jumps), "remove")

    # --- verdicts --------------------------------------------------------------------------------

    def _default_verdict(self, packet: Any, info: PacketInfo | None, reason: str) -> None:
        """The fail-open/closed verdict: accept without marking, or drop."""
        if self.config.fail_open:
            m.FAIL_OPEN_PASSES.labels(self._label, reason).inc()
            self._give(packet, info, accept=False, fail_open=True, reason=reason)
        else:
            self._give(packet, info, accept=False, fail_open=False, reason=reason)

    def _give(self, packet: Any, info: PacketInfo | None, accept: bool, fail_open: bool, reason: str) -> None:
        try:
            if accept:
                packet.set_mark(packet.get_mark() | self.config.verdict_mark)
                packet.accept()
            elif fail_open:
                packet.accept()
            else:
                packet.drop()
        except RuntimeError as exc:  # queue unbound meanwhile: the kernel has dropped the packet
            m.QUEUE_ERRORS.labels(self._label, "verdict").inc()
            log.warning("verdict for %s failed: %s", info, exc)
            return
        result = "accept" if accept or fail_open else "drop"
        m.VERDICTS.labels(self._label, result, reason).inc()
        if log.isEnabledFor(logging.DEBUG):
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

        ``packet`` is a netfilterqueue Packet (get_payload, get_mark, set_mark, accept, drop).
        Never raises; always leads to exactly one verdict, now or after an awaitable decision.
        """
        m.PACKETS_QUEUED.labels(self._label).inc()
        try:
            info = parse_packet(packet.get_payload())
        except (PacketParseError, RuntimeError) as exc:
            m.QUEUE_ERRORS.labels(self._label, "parse").inc()
            log.warning("queue %d: unreadable packet (%s)", self.config.nfqueue_id, exc)
            self._default_verdict(packet, None, "parse-error")
            return
        if not self._ready():
            if self.config.fail_open:
                # Accepted and marked, so the connection stays in the kernel; the revalidation
                # requested here re-checks it (and cuts it if denied) once the agent is ready.
                m.FAIL_OPEN_PASSES.labels(self._label, "not-ready").inc()
                self._give(packet, info, accept=True, fail_open=False, reason="not-ready")
                self._revalidate_wanted.set()
            else:
                self._give(packet, info, accept=False, fail_open=False, reason="not-ready")
            return
        try:
            result = self._decide(info)
            if inspect.isawaitable(result):
                key = id(packet)
                task = asyncio.get_running_loop().create_task(self._finish(key, packet, info, result))
                self._pending[key] = (packet, task)
                m.PENDING.labels(self._label).set(len(self._pending))
                return
            allowed = as_allowed(result)
        except Exception:
            m.QUEUE_ERRORS.labels(self._label, "decide").inc()
            log.exception("decide failed for %s", info)
            self._default_verdict(packet, info, "error")
            return
        self._give(packet, info, accept=allowed, fail_open=False, reason="decided")

    async def _finish(self, key: int, packet: Any, info: PacketInfo, result: Awaitable[Decision]) -> None:
        try:
            allowed = as_allowed(await asyncio.wait_for(result, self.config.verdict_timeout))
        except TimeoutError:
            m.QUEUE_ERRORS.labels(self._label, "timeout").inc()
            log.warning("no decision for %s within %ss", info, self.config.verdict_timeout)
            if self._pending.pop(key, None) is not None:
                self._default_verdict(packet, info, "timeout")
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            m.QUEUE_ERRORS.labels(self._label, "decide").inc()
            log.exception("decide failed for %s", info)
            if self._pending.pop(key, None) is not None:
                self._default_verdict(packet, info, "error")
            return
        else:
            # Absent when shutdown already gave the packet its verdict.
            if self._pending.pop(key, None) is not None:
                self._give(packet, info, accept=allowed, fail_open=False, reason="decided")
        finally:
            m.PENDING.labels(self._label).set(len(self._pending))

    def _flush_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for packet, task in pending.values():
            task.cancel()
            self._default_verdict(packet, None, reason)
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
            queue.on_error = self._on_queue_error
            assert self._loop is not None
            queue.attach(self._loop)
            self._queue = queue
            log.info("queue %d: rebound", self.config.nfqueue_id)
            return

    # --- revalidation ----------------------------------------------------------------------------

    def request_revalidation(self) -> None:
        """Ask for a revalidation pass soon; cheap and coalesced, call it on every policy or pod change."""
        self._revalidate_wanted.set()

    async def _revalidation_loop(self) -> None:
        """Run requested (and periodic) passes; retry failed or not-ready ones with backoff and jitter."""
        cfg = self.config
        backoff = Backoff(0.2, 5.0)
        retry = m.REVALIDATION_RETRY_SECONDS.labels(self._label)
        while True:
            if cfg.revalidate_interval > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._revalidate_wanted.wait(), cfg.revalidate_interval)
            else:
                await self._revalidate_wanted.wait()
            await asyncio.sleep(cfg.revalidate_delay)  # let a burst of changes settle into one pass
            self._revalidate_wanted.clear()
            result = await self.revalidate()
            if result.outcome == "ok":
                backoff.reset()
                retry.set(0)
                continue
            self._revalidate_wanted.set()
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
        async with self._revalidate_lock:
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

    async def _allowed(self, info: PacketInfo) -> bool:
        try:
            result = self._decide(info)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.config.verdict_timeout)
            return as_allowed(result)
        except asyncio.CancelledError:
            raise
        except Exception:
            m.QUEUE_ERRORS.labels(self._label, "decide").inc()
            log.exception("decide failed for %s during revalidation", info)
            return self.config.fail_open

    async def _revalidate(self, counts: list[int]) -> None:
        v4, v6 = split_families(self._pods)
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
