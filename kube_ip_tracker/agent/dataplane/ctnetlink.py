"""Deleting many conntrack entries at once over ctnetlink (one netlink batch instead of a process per entry)."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence

from .conntrack import Entry

NETLINK_NETFILTER = 12
_NFNL_SUBSYS_CTNETLINK = 1
_IPCTNL_MSG_CT_DELETE = 2
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLMSG_ERROR = 0x2
_NLA_F_NESTED = 0x8000
_CTA_TUPLE_ORIG = 1
_CTA_TUPLE_IP = 1
_CTA_TUPLE_PROTO = 2
_CTA_IP_V4_SRC, _CTA_IP_V4_DST, _CTA_IP_V6_SRC, _CTA_IP_V6_DST = 1, 2, 3, 4
_CTA_PROTO_NUM, _CTA_PROTO_SRC_PORT, _CTA_PROTO_DST_PORT = 1, 2, 3
_PORTED = frozenset({6, 17, 132, 33, 136})  # TCP, UDP, SCTP, DCCP, UDPLite


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nested(kind: int, *children: bytes) -> bytes:
    return _attr(kind | _NLA_F_NESTED, b"".join(children))


def can_delete(entry: Entry) -> bool:
    """Whether :func:`delete_message` can express the entry (port-based protocols only)."""
    return entry.protocol_number in _PORTED and entry.sport is not None and entry.dport is not None


def delete_message(entry: Entry, seq: int) -> bytes:
    """An IPCTNL_MSG_CT_DELETE request for the entry's original tuple, asking for an acknowledgement."""
    if not can_delete(entry):
        raise ValueError(f"cannot express {entry.packet} as a ctnetlink tuple")
    v6 = entry.src.version == 6
    ip = _nested(
        _CTA_TUPLE_IP,
        _attr(_CTA_IP_V6_SRC if v6 else _CTA_IP_V4_SRC, entry.src.packed),
        _attr(_CTA_IP_V6_DST if v6 else _CTA_IP_V4_DST, entry.dst.packed),
    )
    proto = _nested(
        _CTA_TUPLE_PROTO,
        _attr(_CTA_PROTO_NUM, struct.pack("B", entry.protocol_number)),
        _attr(_CTA_PROTO_SRC_PORT, struct.pack("!H", entry.sport or 0)),
        _attr(_CTA_PROTO_DST_PORT, struct.pack("!H", entry.dport or 0)),
    )
    body = struct.pack("!BBH", socket.AF_INET6 if v6 else socket.AF_INET, 0, 0) + _nested(_CTA_TUPLE_ORIG, ip, proto)
    kind = (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_DELETE
    return struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK, seq, 0) + body


def parse_acks(data: bytes) -> dict[int, int]:
    """seq -> errno (0 for success) of the NLMSG_ERROR acknowledgements in ``data``."""
    acks: dict[int, int] = {}
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        if kind == _NLMSG_ERROR and length >= 20:
            (error,) = struct.unpack_from("=i", data, offset + 16)
            acks[seq] = -error
        offset += (length + 3) & ~3
    return acks


def delete_entries(entries: Sequence[Entry], time_limit: float, batch: int = 256) -> dict[Entry, int]:
    """Delete ``entries`` (blocking; run it in a thread). Returns each entry's errno: 0 deleted, ENOENT gone.

    Raises OSError when the netlink socket fails; entries without an answer are reported as ETIMEDOUT.
    """
    results: dict[Entry, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        sock.settimeout(time_limit)
        for start in range(0, len(entries), batch):
            chunk = entries[start : start + batch]
            by_seq = {start + i + 1: entry for i, entry in enumerate(chunk)}
            sock.sendall(b"".join(delete_message(entry, seq) for seq, entry in by_seq.items()))
            while by_seq:
                try:
                    data = sock.recv(1 << 16)
                except TimeoutError:
                    break
                for seq, error in parse_acks(data).items():
                    entry = by_seq.pop(seq, None)
                    if entry is not None:
                        results[entry] = error
            for entry in by_seq.values():
                results[entry] = errno.ETIMEDOUT
    return results
