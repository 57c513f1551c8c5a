"""The rule texts: one nft transaction for our table, one iptables-restore transaction for the queue chain.

Packet path on a hook (forward, input, output), for packets to or from a local pod:

1. nft ``inet <name>``, priority filter-5 (after DNAT): a connection whose conntrack mark has the
   accepted bit is accepted here (stays in the kernel); any other packet is queued (nft backend)
   or gets the queue bit in its packet mark (iptables backend).
2. iptables ``security`` (iptables backend only; iptables-nft hooks it at 150, after ``filter``):
   ``<PREFIX>-QUEUE`` sends packets with the queue bit to NFQUEUE. Its ``--queue-bypass``
   (nft: ``bypass``) lets packets pass while no agent listens when ``fail_open``; without it they
   are dropped. The agent answers a packet it lets pass with NF_REPEAT and its queue bit cleared,
   not with an accept (which would skip the rest of the security chain): another agent on the same
   host, with its own mark bits and queue chain, still gets the packet.
3. nft ``inet <name>``, priority filter+200: a packet the agent accepted carries the verdict bit;
   its connection gets the accepted conntrack mark. Both packet bits are cleared again.

An accepted packet resumes with the next netfilter table, so the host's other tables (filter
and so on) still see every first packet.

Verdict cache (``verdict_cache_size`` > 0): step 3 also adds the accepted connection's
(source, destination, protocol, destination port) to the set ``verdicts4``/``verdicts6`` (TCP, UDP,
SCTP only; with the set's timeout; a full set takes no more, so those connections keep being
queued). Step 1 accepts, and marks like an accepted connection, a new connection whose tuple is in
the set, before queueing: a verdict depends on nothing else, so the kernel decides it as the agent
would. The agent flushes both sets whenever a verdict could change (see ``verdict_cache``); every
install and pod-set update flushes them in its transaction. Denied connections are not cached.

IPv6 neighbour discovery (router/neighbour solicitations and advertisements, redirects) is never
queued: conntrack leaves it untracked, so no accepted mark would ever spare it, and its source is
often the pod's own address (Linux solicits with the source of the packet waiting for the
neighbour). Policies do not govern it (like ARP for IPv4); denying it would cut a pod off entirely.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from .config import DataplaneConfig, IPNetwork

HOOKS = ("forward", "input", "output")
# ICMPv6 neighbour discovery: passes our classify chains unqueued (see the module docstring).
NEIGHBOUR_DISCOVERY = (
    "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept"
)
SETS = (("pods4", "ipv4_addr"), ("pods6", "ipv6_addr"))
# The verdict cache: (set name, address type, nft address keyword) per family.
VERDICT_SETS = (("verdicts4", "ipv4_addr", "ip"), ("verdicts6", "ipv6_addr", "ip6"))
PORTED = "meta l4proto { tcp, udp, sctp }"
IPTABLES_HOOKS = ("FORWARD", "INPUT", "OUTPUT")
# The queue rule lives in the (usually empty) security table, which iptables-nft hooks after filter:
# a verdict resumes with the next netfilter table, so this way no filter rule is skipped.
IPTABLES_TABLE = "security"
# Our commit chains run after every iptables table, including security (priority 150 with iptables-nft).
COMMIT_PRIORITY = "filter + 200"


class Backend(enum.Enum):
    """Where the NFQUEUE rule lives."""

    NFT = "nft"
    IPTABLES = "iptables"


def _elements(networks: Iterable[IPNetwork]) -> str:
    return ", ".join(str(n) for n in networks)


def split_families(networks: Iterable[IPNetwork]) -> tuple[list[IPNetwork], list[IPNetwork]]:
    """Collapse overlapping networks; return (IPv4, IPv6)."""
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return list(ipaddress.collapse_addresses(v4)), list(ipaddress.collapse_addresses(v6))


def verdict_key(keyword: str) -> str:
    """The cache key of a packet: source, destination, protocol, destination port (after DNAT)."""
    return f"{keyword} saddr . {keyword} daddr . meta l4proto . th dport"


def queue_statement(queue_num: int, bypass: bool) -> str:
    """The nft queue statement."""
    return f"queue num {queue_num}" + (" bypass" if bypass else "")


@dataclass(frozen=True)
class RuleSet:
    """Renders the rules of one config, backend and set of local pods."""

    config: DataplaneConfig
    backend: Backend

    @property
    def table(self) -> str:
        return f"inet {self.config.name}"

    @property
    def queue_chain(self) -> str:
        return f"{self.config.chain_prefix}-QUEUE"

    @property
    def cache(self) -> bool:
        """Whether the verdict cache is on."""
        return self.config.verdict_cache_size > 0

    def _verdict_set_spec(self, kind: str) -> str:
        cfg = self.config
        timeout = f"{max(1, round(cfg.verdict_cache_timeout * 1000))}ms"
        return (
            f"type {kind} . {kind} . inet_proto . inet_service; flags dynamic, timeout; "
            f"timeout {timeout}; size {cfg.verdict_cache_size};"
        )

    def _cache_lookups(self) -> list[str]:
        accepted = self.config.accepted_ct_mark
        return [
            f"{PORTED} {verdict_key(keyword)} @{name} counter ct mark set ct mark | {accepted:#010x} accept"
            for name, _kind, keyword in VERDICT_SETS
        ]

    def _cache_adds(self) -> list[str]:
        verdict = self.config.verdict_mark
        return [
            f"meta mark & {verdict:#010x} == {verdict:#010x} {PORTED} add @{name} {{ {verdict_key(keyword)} }}"
            for name, _kind, keyword in VERDICT_SETS
        ]

    def nft_flush_verdicts(self) -> str:
        """One nft transaction that empties both verdict sets (nothing when the cache is off)."""
        if not self.cache:
            return ""
        return "".join(f"flush set {self.table} {name}\n" for name, _kind, _keyword in VERDICT_SETS)

    def _chains(self) -> list[tuple[str, str | None, list[str]]]:
        """(name, base chain spec or None, rules) of every chain of our table."""
        cfg = self.config
        both = cfg.queue_mark | cfg.verdict_mark
        if self.backend is Backend.NFT:
            to_queue = queue_statement(cfg.nfqueue_id, cfg.fail_open)
        else:
            to_queue = f"meta mark set meta mark | {cfg.queue_mark:#010x}"
        chains: list[tuple[str, str | None, list[str]]] = [
            (
                "enforce",
                None,
                [
                    f"ct mark & {cfg.accepted_ct_mark:#010x} == {cfg.accepted_ct_mark:#010x} accept",
                    *(self._cache_lookups() if self.cache else []),
                    to_queue,
                ],
            )
        ]
        for hook in HOOKS:
            chains.append(
                (
                    f"classify_{hook}",
                    f"type filter hook {hook} priority filter - 5; policy accept;",
                    [
                        NEIGHBOUR_DISCOVERY,
                        "ip saddr @pods4 goto enforce",
                        "ip daddr @pods4 goto enforce",
                        "ip6 saddr @pods6 goto enforce",
                        "ip6 daddr @pods6 goto enforce",
                    ],
                )
            )
            chains.append(
                (
                    f"commit_{hook}",
                    f"type filter hook {hook} priority {COMMIT_PRIORITY}; policy accept;",
                    [
                        f"meta mark & {cfg.verdict_mark:#010x} == {cfg.verdict_mark:#010x}"
                        f" ct mark set ct mark | {cfg.accepted_ct_mark:#010x}",
                        *(self._cache_adds() if self.cache else []),
                        f"meta mark & {both:#010x} != 0 meta mark set meta mark & {~both & 0xFFFFFFFF:#010x}",
                    ],
                )
            )
        return chains

    def nft_update(self, pods: Iterable[IPNetwork]) -> str:
        """One nft transaction that brings our table to this config in place, keeping table, sets and
        base chains: chains and sets are flushed and refilled, so each chain and set switches from old
        to new contents at once. (Deleting and re-creating the table is not gapless: a packet can meet
        the old chain after the switch and the new one before it.) Fails when existing chains or sets
        differ in type, hook or priority; :meth:`nft_replace` handles that case.
        """
        table = self.table
        lines = [f"add table {table}"]
        for set_name, kind in SETS:
            lines.append(f"add set {table} {set_name} {{ type {kind}; flags interval; auto-merge; }}")
        if self.cache:
            lines += [f"add set {table} {name} {{ {self._verdict_set_spec(kind)} }}" for name, kind, _ in VERDICT_SETS]
        chains = self._chains()
        for name, base, _rules in chains:
            lines.append(f"add chain {table} {name}" + (f" {{ {base} }}" if base else ""))
        for name, _base, _rules in chains:
            lines.append(f"flush chain {table} {name}")
        lines.append(self.nft_set_pods(pods).rstrip("\n"))
        for name, _base, rules in chains:
            lines += [f"add rule {table} {name} {rule}" for rule in rules]
        return "\n".join(lines) + "\n"

    def nft_replace(self, pods: Iterable[IPNetwork]) -> str:
        """One nft transaction that deletes and re-creates our whole table (created first so the delete cannot fail)."""
        return f"table {self.table}\ndelete table {self.table}\n" + self.nft_table(pods)

    def nft_table(self, pods: Iterable[IPNetwork]) -> str:
        """Our table as one block: pod sets, the enforce chain and per-hook classify/commit base chains."""
        v4, v6 = split_families(pods)
        lines = [f"table {self.table} {{"]
        for (set_name, kind), members in zip(SETS, (v4, v6), strict=True):
            lines.append(f"  set {set_name} {{")
            lines.append(f"    type {kind}; flags interval; auto-merge;")
            if members:
                lines.append(f"    elements = {{ {_elements(members)} }}")
            lines.append("  }")
        if self.cache:
            lines += [f"  set {name} {{ {self._verdict_set_spec(kind)} }}" for name, kind, _ in VERDICT_SETS]
        for name, base, rules in self._chains():
            lines.append(f"  chain {name} {{")
            if base:
                lines.append(f"    {base}")
            lines += [f"    {rule}" for rule in rules]
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def nft_set_pods(self, pods: Iterable[IPNetwork]) -> str:
        """One nft transaction that replaces the members of both pod sets (and empties the verdict cache)."""
        v4, v6 = split_families(pods)
        lines = [f"flush set {self.table} pods4", f"flush set {self.table} pods6"]
        if v4:
            lines.append(f"add element {self.table} pods4 {{ {_elements(v4)} }}")
        if v6:
            lines.append(f"add element {self.table} pods6 {{ {_elements(v6)} }}")
        return "\n".join(lines) + "\n" + self.nft_flush_verdicts()

    def nft_delete(self) -> str:
        """Remove our table (no error when it is absent)."""
        return f"table {self.table}\ndelete table {self.table}\n"

    def iptables_install(self, existing_jumps: dict[str, int]) -> str:
        """iptables-restore --noflush input that (re)fills the queue chain and leaves one jump per hook.

        ``existing_jumps`` counts the jumps to our chain already in each hook chain (from iptables-save).
        Declaring the chain flushes it in the same transaction, so there is never a moment without the rule.
        """
        cfg = self.config
        chain = self.queue_chain
        bypass = " --queue-bypass" if cfg.fail_open else ""
        lines = [
            f"*{IPTABLES_TABLE}",
            f":{chain} - [0:0]",
            f"-A {chain} -m mark --mark {cfg.queue_mark:#x}/{cfg.queue_mark:#x}"
            f' -m comment --comment "{cfg.name}: first packets to the agent"'
            f" -j NFQUEUE --queue-num {cfg.nfqueue_id}{bypass}",
        ]
        for hook in IPTABLES_HOOKS:
            count = existing_jumps.get(hook, 0)
            if count == 0:
                lines.append(f"-I {hook} 1 -j {chain}")
            lines += [f"-D {hook} -j {chain}"] * max(0, count - 1)
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def iptables_remove(self, existing_jumps: dict[str, int]) -> str:
        """iptables-restore --noflush input that removes our jumps and chain."""
        chain = self.queue_chain
        lines = [f"*{IPTABLES_TABLE}"]
        for hook in IPTABLES_HOOKS:
            lines += [f"-D {hook} -j {chain}"] * existing_jumps.get(hook, 0)
        lines += [f"-F {chain}", f"-X {chain}", "COMMIT"]
        return "\n".join(lines) + "\n"


def parse_iptables_save(text: str, chain: str) -> tuple[bool, dict[str, int]]:
    """From ``iptables-save -t security`` output: whether ``chain`` exists and how many jumps each hook has to it."""
    exists = False
    jumps: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(f":{chain} "):
            exists = True
            continue
        parts = line.split()
        if len(parts) == 4 and parts[0] == "-A" and parts[2] == "-j" and parts[3] == chain:
            jumps[parts[1]] = jumps.get(parts[1], 0) + 1
    return exists, jumps
