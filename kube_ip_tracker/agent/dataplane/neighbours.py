"""Other agents' rules on this host, and whether their mark bits collide with ours.

Each agent owns an nft table ``inet <name>`` (see :mod:`.rules`) with ``enforce`` and ``commit_*``
chains; the commit chains set the accepted conntrack-mark bit and clear both packet bits (queue and
verdict). :func:`installed_agents` reads those bits back from every other such table, with the agent's
NFQUEUE number (nft ``queue`` statement, or the iptables ``<PREFIX>-QUEUE`` chain) and whether a
process listens on that queue (``/proc/net/netfilter/nfnetlink_queue``). Two agents with a bit in
common silently interfere (one clears or sets the other's marks); :func:`check_marks_free` refuses to
start then. Rules of an agent whose queue has no listener are left over from a stopped or crashed
agent: they are only reported, since that agent restarts into them.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from . import commands
from .config import DataplaneConfig
from .errors import DataplaneError
from .rules import IPTABLES_TABLE

log = logging.getLogger("kube_ip_tracker.agent.dataplane")

NFQUEUE_PROC = Path("/proc/net/netfilter/nfnetlink_queue")
# Set statements, which nft lists as written (matches may be listed in other forms, e.g. ``0x80000000/1``).
_CT_MARK = re.compile(r"\bct mark set ct mark \| (0x[0-9a-f]+)")
_CLEAR_MASK = re.compile(r"\bmeta mark set meta mark & (0x[0-9a-f]+)")
_NFT_QUEUE = re.compile(r"\bqueue\b[^\n]*?\b(?:num|to) (\d+)")


@dataclass(frozen=True)
class InstalledAgent:
    """The rules of another agent: its name, mark bits, NFQUEUE number and whether a process listens on it."""

    name: str
    packet_marks: int  # queue and verdict bits
    ct_mark: int
    queue_num: int | None
    listening: bool

    def collides(self, config: DataplaneConfig) -> bool:
        """Whether any of its mark bits is one of ``config``'s."""
        ours = config.queue_mark | config.verdict_mark
        return bool(self.packet_marks & ours) or bool(self.ct_mark & config.accepted_ct_mark)


class MarkCollision(DataplaneError):
    """A live agent with another name uses mark bits of ours; ``agents`` are the colliding ones,
    ``installed`` every other agent's rules found (live or not)."""

    def __init__(self, config: DataplaneConfig, agents: list[InstalledAgent], installed: list[InstalledAgent]) -> None:
        self.agents = agents
        self.installed = installed
        described = "; ".join(
            f"agent {a.name!r} (nft table inet {a.name}, nfqueue {a.queue_num}, packet marks {a.packet_marks:#010x}, "
            f"ct mark {a.ct_mark:#010x})"
            for a in agents
        )
        super().__init__(
            f"the mark bits of {config.name!r} (packet marks {config.queue_mark | config.verdict_mark:#010x}, "
            f"ct mark {config.accepted_ct_mark:#010x}) are in use by another running agent: {described}"
        )


def parse_agent_table(name: str, text: str) -> tuple[int, int, int | None] | None:
    """(packet marks, ct mark, nft queue number or None) from ``nft list table`` output; None if not an agent's."""
    ct, clear = _CT_MARK.search(text), _CLEAR_MASK.search(text)
    if "chain enforce {" not in text or "chain commit_forward {" not in text or ct is None or clear is None:
        return None
    queue = _NFT_QUEUE.search(text)
    packet = ~int(clear.group(1), 16) & 0xFFFFFFFF
    return packet, int(ct.group(1), 16), int(queue.group(1)) if queue else None


def iptables_queue_num(saved: str, name: str) -> int | None:
    """The NFQUEUE number of agent ``name``'s iptables queue chain in ``iptables-save -t security`` output."""
    match = re.search(rf"^-A {re.escape(name.upper())}-QUEUE .*--queue-num (\d+)", saved, re.M)
    return int(match.group(1)) if match else None


def listening_queues(proc: Path = NFQUEUE_PROC) -> set[int]:
    """NFQUEUE numbers a process is bound to in this network namespace."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:  # nfnetlink_queue not loaded: nobody listens
        return set()
    return {int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()}


async def _run(config: DataplaneConfig, argv: list[str]) -> str | None:
    try:
        return (await commands.run(argv, time_limit=config.command_timeout)).stdout
    except commands.CommandError as exc:
        log.debug("%s", exc)
        return None


async def installed_agents(config: DataplaneConfig) -> list[InstalledAgent]:
    """The rules of every other agent on this host (tables named other than ``config.name``)."""
    listed = await _run(config, ["nft", "-j", "list", "tables"])
    if listed is None:
        return []
    names = sorted(
        item["table"]["name"]
        for item in json.loads(listed).get("nftables", [])
        if "table" in item and item["table"].get("family") == "inet" and item["table"].get("name") != config.name
    )
    saved = await _run(config, ["iptables-save", "-t", IPTABLES_TABLE]) or ""
    listening = listening_queues()
    agents = []
    for name in names:
        text = await _run(config, ["nft", "list", "table", "inet", name])
        parsed = parse_agent_table(name, text) if text is not None else None
        if parsed is None:
            continue  # gone meanwhile, or not an agent's table
        packet, ct, queue = parsed
        if queue is None:
            queue = iptables_queue_num(saved, name)
        agents.append(InstalledAgent(name, packet, ct, queue, queue is not None and queue in listening))
    return agents


async def check_marks_free(config: DataplaneConfig) -> list[InstalledAgent]:
    """Raise :class:`MarkCollision` if a running agent of another name uses our mark bits.

    Our own earlier rules (same name: a restart) never count. An agent on our own queue number is
    left to the queue bind, which fails naming the queue (the flag given twice). Returns all other
    agents found.
    """
    agents = await installed_agents(config)
    colliding = [a for a in agents if a.collides(config)]
    live = [a for a in colliding if a.listening and a.queue_num != config.nfqueue_id]
    for agent in colliding:
        if not agent.listening:
            log.warning(
                "Rules of agent %r (nft table inet %s) use mark bits of ours but nobody listens on its nfqueue %s: "
                "left by a stopped agent; they interfere with this one if that agent starts again",
                agent.name,
                agent.name,
                agent.queue_num,
            )
    if live:
        raise MarkCollision(config, live, agents)
    return agents
