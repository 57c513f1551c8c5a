"""What the verdict callback sees of a queued packet: addresses, protocol and ports."""

from __future__ import annotations

import enum
import ipaddress
import struct
from typing import NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Protocol(enum.Enum):
    """Transport protocols NetworkPolicy knows; everything else is ``OTHER``."""

    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"
    OTHER = "OTHER"

    @classmethod
    def from_number(cls, number: int) -> Protocol:
        """IANA protocol number -> member (6 TCP, 17 UDP, 132 SCTP, else OTHER)."""
        return _BY_NUMBER.get(number, cls.OTHER)


_BY_NUMBER = {6: Protocol.TCP, 17: Protocol.UDP, 132: Protocol.SCTP}
_PORTED = frozenset({6, 17, 132})
# IPv6 extension headers we step over to find the transport header (hop-by-hop, routing, destination options).
_IPV6_SKIPPABLE = frozenset({0, 43, 60})
_IPV6_FRAGMENT = 44


class PacketParseError(ValueError):
    """The queued payload is not an IP packet we can read."""


class PacketInfo(NamedTuple):
    """The connection tuple of a packet (ports are None for protocols without ports or non-first fragments).

    A named tuple: immutable and hashable like a frozen dataclass, built in a third of its time (one per
    queued packet)."""

    src_ip: IPAddress
    dst_ip: IPAddress
    protocol: Protocol
    src_port: int | None = None
    dst_port: int | None = None
    protocol_number: int = 0

    def __str__(self) -> str:
        src = f"{self.src_ip}:{self.src_port}" if self.src_port is not None else str(self.src_ip)
        dst = f"{self.dst_ip}:{self.dst_port}" if self.dst_port is not None else str(self.dst_ip)
        return f"{self.protocol.value} {src} -> {dst}"


def _ports(data: bytes, offset: int, number: int) -> tuple[int | None, int | None]:
    if number not in _PORTED or len(data) < offset + 4:
        return None, None
    src, dst = struct.unpack_from("!HH", data, offset)
    return src, dst


# version/IHL, (5 bytes), flags/fragment offset, (TTL), protocol, (checksum), source, destination
_IPV4_HEADER = struct.Struct("!B5xHxB2xII")
_PORTS = struct.Struct("!HH")
# Address objects of recent IPv4 addresses, by number: a queued packet needs two, mostly the same few.
_V4_ADDRESSES: dict[int, ipaddress.IPv4Address] = {}
_V4_ADDRESSES_MAX = 8192


def _v4_address(number: int) -> ipaddress.IPv4Address:
    address = _V4_ADDRESSES.get(number)
    if address is None:
        address = ipaddress.IPv4Address(number)
        if len(_V4_ADDRESSES) >= _V4_ADDRESSES_MAX:
            _V4_ADDRESSES.clear()
        _V4_ADDRESSES[number] = address
    return address


def _parse_ipv4(data: bytes) -> PacketInfo:
    if len(data) < 20:
        raise PacketParseError(f"IPv4 packet of {len(data)} bytes is shorter than its 20-byte header")
    first, fragment, number, src, dst = _IPV4_HEADER.unpack_from(data)
    header_len = (first & 0x0F) * 4
    if header_len < 20 or len(data) < header_len:
        raise PacketParseError(f"IPv4 header length {header_len} is invalid for a {len(data)}-byte packet")
    if fragment & 0x1FFF or number not in _PORTED or len(data) < header_len + 4:
        src_port = dst_port = None
    else:
        src_port, dst_port = _PORTS.unpack_from(data, header_len)
    return PacketInfo(
        _v4_address(src), _v4_address(dst), _BY_NUMBER.get(number, Protocol.OTHER), src_port, dst_port, number
    )


def _parse_ipv6(data: bytes) -> PacketInfo:
    if len(data) < 40:
        raise PacketParseError(f"IPv6 packet of {len(data)} bytes is shorter than its 40-byte header")
    number = data[6]
    offset = 40
    first_fragment = True
    while number in _IPV6_SKIPPABLE or number == _IPV6_FRAGMENT:
        if len(data) < offset + 8:
            raise PacketParseError(f"IPv6 extension header {number} is truncated at offset {offset}")
        next_number = data[offset]
        if number == _IPV6_FRAGMENT:
            first_fragment = (struct.unpack_from("!H", data, offset + 2)[0] & 0xFFF8) == 0
            offset += 8
        else:
            offset += (data[offset + 1] + 1) * 8
        number = next_number
    src_port, dst_port = _ports(data, offset, number) if first_fragment else (None, None)
    return PacketInfo(
        src_ip=ipaddress.IPv6Address(data[8:24]),
        dst_ip=ipaddress.IPv6Address(data[24:40]),
        protocol=Protocol.from_number(number),
        src_port=src_port,
        dst_port=dst_port,
        protocol_number=number,
    )


def parse_packet(data: bytes) -> PacketInfo:
    """Read the connection tuple of a raw IPv4 or IPv6 packet (as NFQUEUE delivers it)."""
    if not data:
        raise PacketParseError("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _parse_ipv4(data)
    if version == 6:
        return _parse_ipv6(data)
    raise PacketParseError(f"IP version {version} is neither 4 nor 6")
