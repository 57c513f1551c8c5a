"""The NFQUEUE binding: one netlink queue socket served from the asyncio loop through its fd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import warnings
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kube_ip_tracker.agent.dataplane")

# linux/netfilter/nfnetlink.h, nfnetlink_queue.h
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_CONFIG = 2
_NLM_F_REQUEST = 1
_NFQA_CFG_MASK = 4
_NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1

# Enough of each packet for IPv4/IPv6 headers with a few extension headers and the transport ports.
COPY_RANGE = 256


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


class QueueSocket:
    """Binds one queue number and calls ``on_packet(packet)`` from the event loop for every queued packet.

    The callback must give each packet a verdict (now or later, from the loop) and must not raise.
    """

    def __init__(self, queue_num: int, max_len: int, on_packet: Callable[[Any], None]) -> None:
        self.queue_num = queue_num
        self.max_len = max_len
        self._on_packet = on_packet
        self._nfq: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
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
        """Handle every packet waiting on the socket (callbacks run here)."""
        if self._nfq is None:
            return
        try:
            self._nfq.run(block=False)
        except OSError as exc:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            if self.on_error is not None:
                self.on_error(exc)
            else:
                raise

    def close(self) -> None:
        """Stop reading and unbind (the kernel drops what is still queued; give verdicts first)."""
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
        self._loop = None
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None
        self._fd = -1

    @property
    def bound(self) -> bool:
        return self._nfq is not None
