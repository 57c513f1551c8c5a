"""Reading and deleting conntrack entries with the ``conntrack`` tool."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from . import commands
from .packet import IPAddress, PacketInfo, Protocol

CONNTRACK = "conntrack"


@dataclass(frozen=True, slots=True)
class Entry:
    """The original-direction tuple of one conntrack entry."""

    family: str  # "ipv4" or "ipv6"
    protocol_number: int
    src: IPAddress
    dst: IPAddress
    sport: int | None
    dport: int | None
    mark: int

    @property
    def packet(self) -> PacketInfo:
        """The entry as the first packet of its connection."""
        return PacketInfo(
            src_ip=self.src,
            dst_ip=self.dst,
            protocol=Protocol.from_number(self.protocol_number),
            src_port=self.sport,
            dst_port=self.dport,
            protocol_number=self.protocol_number,
        )

    def delete_argv(self) -> list[str]:
        """``conntrack -D`` arguments matching exactly this entry (and only while it is still marked)."""
        argv = [CONNTRACK, "-D", "-f", self.family, "-p", str(self.protocol_number)]
        argv += ["-s", str(self.src), "-d", str(self.dst)]
        if self.sport is not None and self.dport is not None:
            argv += ["--sport", str(self.sport), "--dport", str(self.dport)]
        argv += ["--mark", str(self.mark)]
        return argv


def parse_line(line: str, family: str) -> Entry | None:
    """One line of ``conntrack -L`` output; None for lines that are not entries."""
    fields = line.split()
    if len(fields) < 3 or not fields[1].isdigit():
        return None
    values: dict[str, str] = {}
    for token in fields[2:]:
        key, sep, value = token.partition("=")
        if sep and key not in values:  # the first src/dst/sport/dport are the original direction
            values[key] = value
    if "src" not in values or "dst" not in values:
        return None
    sport = values.get("sport")
    dport = values.get("dport")
    try:
        return Entry(
            family=family,
            protocol_number=int(fields[1]),
            src=ipaddress.ip_address(values["src"]),
            dst=ipaddress.ip_address(values["dst"]),
            sport=int(sport) if sport is not None else None,
            dport=int(dport) if dport is not None else None,
            mark=int(values.get("mark", "0"), 0),
        )
    except ValueError:
        return None


async def list_marked(mark: int, families: Iterable[str], time_limit: float) -> list[Entry]:
    """Entries whose conntrack mark has all bits of ``mark``, for each family ("ipv4", "ipv6")."""
    entries: list[Entry] = []
    for family in families:
        result = await commands.run([CONNTRACK, "-L", "-f", family, "--mark", f"{mark}/{mark}"], time_limit=time_limit)
        for line in result.stdout.splitlines():
            entry = parse_line(line, family)
            if entry is not None:
                entries.append(entry)
    return entries


async def delete(entry: Entry, time_limit: float) -> bool:
    """Delete one entry; False when it was already gone."""
    try:
        await commands.run(entry.delete_argv(), time_limit=time_limit)
    except commands.CommandError as exc:
        if exc.returncode == 1 and "0 flow entries" in exc.stderr:
            return False
        raise
    return True
