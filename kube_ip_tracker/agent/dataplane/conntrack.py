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
    """One conntrack entry: its original-direction tuple and where its replies come from."""

    family: str  # "ipv4" or "ipv6"
    protocol_number: int
    src: IPAddress
    dst: IPAddress
    sport: int | None
    dport: int | None
    mark: int
    reply_src: IPAddress | None = None
    reply_sport: int | None = None

    @property
    def packet(self) -> PacketInfo:
        """The first packet as our filter hooks saw it: after destination NAT, before source NAT.

        The real destination is where replies come from (a Service VIP in ``dst`` was DNATed to a pod).
        """
        dst = self.reply_src if self.reply_src is not None else self.dst
        dport = self.reply_sport if self.reply_src is not None else self.dport
        return PacketInfo(
            src_ip=self.src,
            dst_ip=dst,
            protocol=Protocol.from_number(self.protocol_number),
            src_port=self.sport,
            dst_port=dport,
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
    reply: dict[str, str] = {}
    for token in fields[2:]:
        key, sep, value = token.partition("=")
        if not sep:
            continue
        if key not in values:  # the first src/dst/sport/dport are the original direction
            values[key] = value
        elif key not in reply:
            reply[key] = value
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
            reply_src=ipaddress.ip_address(reply["src"]) if "src" in reply else None,
            reply_sport=int(reply["sport"]) if "sport" in reply else None,
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
