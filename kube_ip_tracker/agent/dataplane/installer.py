"""Installing, updating and removing our rules (nft table, iptables queue chain) and choosing the backend."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Iterable
from typing import Any

from . import commands
from . import metrics as m
from .config import DataplaneConfig, IPNetwork
from .errors import DataplaneError
from .rules import IPTABLES_TABLE, SETS, Backend, RuleSet, parse_iptables_save, queue_statement, split_families

log = logging.getLogger("kube_ip_tracker.agent.dataplane")

NFT = "nft"
IPTABLES_TOOLS = (("iptables", "ipv4"), ("ip6tables", "ipv6"))


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


class RuleInstaller:
    """Applies the rules of one config and backend; every change is one transaction per tool."""

    def __init__(self, config: DataplaneConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.rules = RuleSet(config, backend)
        self._lock = asyncio.Lock()
        self._label = str(config.nfqueue_id)

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

    async def sync(self, pods: Iterable[IPNetwork]) -> None:
        """(Re)apply all our rules: nft in one transaction, then iptables in one; gapless for traffic."""
        pods = tuple(pods)
        rules = self.rules
        async with self._lock:
            try:
                try:
                    await self._nft(rules.nft_update(pods), "install")
                except commands.CommandError as exc:
                    # An existing table of another layout (older version, other marks): replace it whole.
                    log.warning("updating table inet %s in place failed (%s); replacing it", self.config.name, exc)
                    await self._nft(rules.nft_replace(pods), "replace")
                if self.backend is Backend.IPTABLES:
                    for tool, family in IPTABLES_TOOLS:
                        await self._install_iptables(tool, family, rules, pods)
                else:
                    await self._remove_iptables(rules)
            except commands.CommandError as exc:
                raise DataplaneError(f"installing dataplane rules failed: {exc}") from exc

    async def _install_iptables(self, tool: str, family: str, rules: RuleSet, pods: tuple[IPNetwork, ...]) -> None:
        # iptables-save and -restore are two steps; retry when someone changed the hook chains in between.
        for attempt in range(3):
            try:
                _, jumps = await self._iptables_state(tool, rules.queue_chain)
                await self._restore(tool, rules.iptables_install(jumps), "install")
                return
            except commands.CommandError as exc:
                if family == "ipv6" and not split_families(pods)[1]:
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

    async def set_pods(self, pods: Iterable[IPNetwork]) -> None:
        """Replace the members of the pod sets in one nft transaction."""
        async with self._lock:
            try:
                await self._nft(self.rules.nft_set_pods(pods), "pods")
            except commands.CommandError as exc:
                raise DataplaneError(f"updating the local pod sets failed: {exc}") from exc

    async def remove(self) -> None:
        """Delete our iptables chain (if any) and nft table (by name: also when another process installed them)."""
        async with self._lock:
            try:
                await self._remove_iptables(self.rules)
                await self._nft(self.rules.nft_delete(), "remove")
            except commands.CommandError as exc:
                raise DataplaneError(f"removing dataplane rules failed: {exc}") from exc


def _set_elements(elements: Iterable[Any]) -> list[IPNetwork]:
    """Networks of ``nft -j`` set elements: addresses, ``{"prefix": ...}`` and ``{"range": [...]}``."""
    networks: list[IPNetwork] = []
    for element in elements:
        if isinstance(element, dict) and "elem" in element:
            element = element["elem"].get("val")
        if isinstance(element, str):
            networks.append(ipaddress.ip_network(element))
        elif isinstance(element, dict) and "prefix" in element:
            prefix = element["prefix"]
            networks.append(ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}", strict=False))
        elif isinstance(element, dict) and "range" in element:
            low, high = (ipaddress.ip_address(x) for x in element["range"])
            networks.extend(ipaddress.summarize_address_range(low, high))  # type: ignore[arg-type]
    return networks


async def installed_pods(config: DataplaneConfig) -> tuple[IPNetwork, ...]:
    """The pod addresses in the sets of our table as an earlier run left it (empty when there is none).

    An agent that learns its pods from the tracker starts with these, so a restart does not leave
    the pods unenforced until the tracker's snapshot arrives.
    """
    found: list[IPNetwork] = []
    for set_name, _kind in SETS:
        try:
            result = await commands.run(
                [NFT, "-j", "list", "set", "inet", config.name, set_name], time_limit=config.command_timeout
            )
        except commands.CommandError:
            continue  # no such table or set
        try:
            for item in json.loads(result.stdout).get("nftables", []):
                found += _set_elements((item.get("set") or {}).get("elem") or [])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("cannot read the pod set %s of table inet %s: %s", set_name, config.name, exc)
    return tuple(found)
