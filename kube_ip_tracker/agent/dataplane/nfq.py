"""The NFQUEUE binding: one netlink queue socket served from the asyncio loop, verdicts sent in batches.

netfilterqueue (libnetfilter_queue, compiled) binds the queue and reads and parses the queued
packets: each wakeup of the loop reads every packet waiting on the socket and hands it to
``on_packet``. The verdicts are ours: instead of one ``sendmsg`` per packet (netfilterqueue's
``accept``/``drop``/``repeat``), the verdicts given during a wakeup are collected and written
together on the queue's socket, as consecutive NFQNL_MSG_VERDICT messages in one ``write`` (the
kernel handles each message of a netlink write in turn, each with its own verdict and mark), when
the wakeup ends. A verdict given outside a wakeup (an awaited decision) is written at once;
:meth:`QueueSocket.flush` writes the collected ones early (the dataplane does before it empties the
verdict cache, so no verdict reaches the kernel after a change that may have made it stale).

Measured (docs/benchmarks.md, dataplane): a reader of our own over a raw netlink socket, parsing the
messages in Python, cost more CPU per packet than it saved in syscalls; the compiled reader with our
batched verdicts costs the least.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import warnings
from collections.abc import Callable
from typing import Any

from . import metrics as m

log = logging.getLogger("kube_ip_tracker.agent.dataplane")

# linux/netfilter/nfnetlink.h, nfnetlink_queue.h, netfilter.h
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_VERDICT = 1
_NFQNL_MSG_CONFIG = 2
_VERDICT_TYPE = (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_VERDICT
_NLM_F_REQUEST = 1
_NFQA_VERDICT_HDR = 2
_NFQA_MARK = 3
_NFQA_CFG_MASK = 4
_NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1

NF_DROP = 0
NF_ACCEPT = 1
NF_REPEAT = 4

# Enough of each packet for IPv4/IPv6 headers with a few extension headers and the transport ports.
COPY_RANGE = 256
_MAX_BATCH = 256  # verdicts per write (40 bytes each)

# nlmsghdr, nfgenmsg (family, version, queue: big-endian), NFQA_VERDICT_HDR (verdict, packet id: big-endian)
# [, NFQA_MARK (big-endian)]. Big-endian fields are packed native after htonl/htons: one Struct per message.
_VERDICT = struct.Struct("=IHHIIBBHHHII")
_VERDICT_MARK = struct.Struct("=IHHIIBBHHHIIHHI")


class QueueBindError(OSError):
    """The queue could not be bound (another process holds it, or netfilter queueing is unavailable)."""


def _nlattr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def config_flags_message(queue_num: int, flags: int, mask: int, seq: int = 1) -> bytes:
    """An NFQNL_MSG_CONFIG netlink message that sets queue ``flags`` under ``mask``."""
    nfgen = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue_num)
    body = nfgen + _nlattr(_NFQA_CFG_MASK, struct.pack("!I", mask)) + _nlattr(_NFQA_CFG_FLAGS, struct.pack("!I", flags))
    header = struct.pack(
        "=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_CONFIG, _NLM_F_REQUEST, seq, 0
    )
    return header + body


def verdict_message(queue_num: int, packet_id: int, verdict: int, mark: int | None = None) -> bytes:
    """An NFQNL_MSG_VERDICT for one packet: NF_ACCEPT, NF_DROP or NF_REPEAT, with a new mark or (None) its own."""
    return _verdict_bytes(socket.htons(queue_num), packet_id, verdict, mark)


def _verdict_bytes(queue_be: int, packet_id: int, verdict: int, mark: int | None) -> bytes:
    htonl = socket.htonl
    if mark is None:
        return _VERDICT.pack(
            32, _VERDICT_TYPE, _NLM_F_REQUEST, packet_id, 0, socket.AF_UNSPEC, 0, queue_be,
            12, _NFQA_VERDICT_HDR, htonl(verdict), htonl(packet_id),
        )  # fmt: skip
    return _VERDICT_MARK.pack(
        40, _VERDICT_TYPE, _NLM_F_REQUEST, packet_id, 0, socket.AF_UNSPEC, 0, queue_be,
        12, _NFQA_VERDICT_HDR, htonl(verdict), htonl(packet_id), 8, _NFQA_MARK, htonl(mark),
    )  # fmt: skip


class QueueSocket:
    """Binds one queue number and calls ``on_packet(packet)`` from the event loop for every queued packet
    (a netfilterqueue ``Packet``: ``id``, ``mark``, ``get_payload()``, the payload readable only during the
    call), then ``on_batch_end()`` once per wakeup, before the wakeup's verdicts are written.

    The callback must give each packet a verdict with :meth:`verdict` (now or later, from the loop) and
    must not raise.
    """

    def __init__(
        self,
        queue_num: int,
        max_len: int,
        on_packet: Callable[[Any], None],
        on_batch_end: Callable[[], None] | None = None,
    ) -> None:
        self.queue_num = queue_num
        self.max_len = max_len
        self._on_packet = on_packet
        self._on_batch_end = on_batch_end
        self._nfq: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._queue_be = socket.htons(queue_num)
        self._batching = False
        self._out: list[bytes] = []
        self._label = str(queue_num)
        self.on_error: Callable[[OSError], None] | None = None

    def bind(self, fail_open: bool) -> None:
        """Bind the queue; with ``fail_open`` the kernel accepts packets instead of dropping them when it is full."""
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        nfq = NetfilterQueue()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                nfq.bind(self.queue_num, self._on_packet, max_len=self.max_len, mode=COPY_PACKET, range=COPY_RANGE)
            for warning in caught:
                log.warning("NFQUEUE %d: %s", self.queue_num, warning.message)
        except OSError as exc:
            raise QueueBindError(
                exc.errno or 0, f"cannot bind NFQUEUE {self.queue_num} (held by another process?): {exc}"
            ) from exc
        fd = nfq.get_fd()
        flags = NFQA_CFG_F_FAIL_OPEN if fail_open else 0
        try:
            os.write(fd, config_flags_message(self.queue_num, flags, NFQA_CFG_F_FAIL_OPEN))
        except OSError as exc:
            nfq.unbind()
            raise QueueBindError(exc.errno or 0, f"cannot configure NFQUEUE {self.queue_num}: {exc}") from exc
        self._nfq = nfq
        self._fd = fd

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve the socket from ``loop``."""
        self._loop = loop
        loop.add_reader(self._fd, self.poll)

    def poll(self) -> None:
        """Handle every packet waiting on the socket (callbacks run here), then write their verdicts."""
        if self._nfq is None:
            return
        self._batching = True
        try:
            self._nfq.run(block=False)
            if self._on_batch_end is not None:
                self._on_batch_end()
        except OSError as exc:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            if self.on_error is None:
                raise
            self.on_error(exc)
        finally:
            self._batching = False
            self.flush()

    def verdict(self, packet: Any, verdict: int, mark: int | None = None) -> None:
        """Answer a queued packet (NF_ACCEPT, NF_DROP or NF_REPEAT; a new mark or, None, its own): written with
        the rest of the wakeup's verdicts, or at once outside a wakeup. RuntimeError once unbound (the kernel
        dropped the packet)."""
        if self._nfq is None:
            raise RuntimeError(f"NFQUEUE {self.queue_num} is not bound")
        self._out.append(_verdict_bytes(self._queue_be, packet.id, verdict, mark))
        if not self._batching or len(self._out) >= _MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the verdicts collected so far (one write for all of them)."""
        out = self._out
        if not out:
            return
        self._out = []
        if self._nfq is None:
            return
        try:
            os.write(self._fd, out[0] if len(out) == 1 else b"".join(out))
        except OSError as exc:
            m.QUEUE_ERRORS.labels(self._label, "verdict").inc(len(out))
            # Their packets would wait in the kernel forever: rebinding drops them (their connections retry).
            log.error("queue %d: writing %d verdicts failed (%s); rebinding", self.queue_num, len(out), exc)
            if self.on_error is not None and self._loop is not None:
                self._loop.call_soon(self.on_error, exc)

    def close(self) -> None:
        """Stop reading and unbind (the kernel drops what is still queued; give verdicts first)."""
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
        self._loop = None
        self.flush()
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None
        self._fd = -1

    @property
    def bound(self) -> bool:
        return self._nfq is not None
