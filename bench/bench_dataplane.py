"""Dataplane: new connections per second and connect latency through the agent's rules (needs root).

Network-namespace pods (``kube_ip_tracker.testing.netns``): one server pod (TCP accept-and-close,
UDP echo) and two client pods, each running two client processes that open connections as fast as
they can. The agent is the real :class:`Dataplane` deciding with the agent's
:class:`LocalEnforcement` over a :class:`PolicyEngine` (the benchmark's pods, one ingress policy
admitting the clients to the server's port), in its own process so its CPU time is its own.

Modes, side by side in each round (rounds alternate the modes, so load changes hit all alike):

- ``no rules``: no agent, the kernel alone (no rule uses conntrack, so connections are not tracked);
- ``conntrack only``: one nft rule per hook that counts new conntrack entries, so every connection
  is tracked as under the agent's rules: the share of the cost that is conntrack's;
- ``cache off``: every new connection's first packet goes to the agent over NFQUEUE;
- ``repeated`` (cache on): every connection has the same (source, destination, protocol, port)
  tuple per client process, so after the first one the kernel's verdict cache decides;
- ``first-seen`` (cache on): every connection comes from a new client address, so each one misses
  the cache and is decided by the agent (which then fills the cache);
- ``first-seen, log all``: the same with the verdict log on for every verdict (``--log-verdicts=all``
  and its default limits: one line per tuple a minute, 20 lines a second; klog text to the agent's
  stderr, here /dev/null); every other agent mode runs with ``--log-verdicts=off``. The difference to
  ``first-seen`` is the verdict log's cost.

TCP is connect + close (with a reset, so no TIME_WAIT piles up); UDP is a request and its echo from
a fresh socket (a new connection to conntrack each). Latency is per connect (TCP) or round trip (UDP)
in the client; "added" is the mode's percentile minus the no-rules one of the same round. Agent CPU
is the agent process's user+system time during the mode's run, per 1,000 connections.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
FULL = {"rounds": 5, "seconds": 2.0, "processes_per_client": 2}
QUICK = {"rounds": 1, "seconds": 0.5, "processes_per_client": 1}
CLIENT_PODS = 2
PORT = 8080
CLUSTER = "bench"
# First-seen client addresses: each client pod binds addresses of its own /18 of this /16.
SOURCE_NETWORKS = ("10.250.0.0/16", "10.251.0.0/16", "10.252.0.0/16", "10.253.0.0/16")
SOURCE_PREFIX = 18  # 16,382 addresses per client pod
REPEATED_RATIO_TARGET = 0.9
REPEATED_ADDED_P99_US = 30.0
FIRST_SEEN_RATE_TARGET = 8000.0
FIRST_SEEN_ADDED_P99_US = 300.0


@dataclass(frozen=True)
class Mode:
    name: str
    agent: bool
    cache: bool = False
    first_seen: bool = False
    conntrack: bool = False
    log_verdicts: str = "off"


MODES = (
    Mode("no rules", agent=False),
    Mode("conntrack only", agent=False, conntrack=True),
    Mode("cache off", agent=True),
    Mode("repeated", agent=True, cache=True),
    Mode("first-seen", agent=True, cache=True, first_seen=True),
    Mode("first-seen, log all", agent=True, cache=True, first_seen=True, log_verdicts="all"),
)
CACHE_SIZE = 65536
PROTOCOLS = ("tcp", "udp")


def _python(*args: str, netns: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "bench.dataplane_procs", *args]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


class Proc:
    """A child of ``bench.dataplane_procs`` speaking JSON lines."""

    def __init__(self, argv: list[str], spec: dict[str, Any], quiet: bool = False) -> None:
        """``quiet``: its stderr (log lines) goes to /dev/null."""
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if quiet else None,
            text=True,
        )
        self.send(spec)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args[-1]} process exited ({self.proc.wait()}) without replying")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SyscallCount:
    """The syscalls a process makes (all its threads) while the block runs, counted by ``perf stat``
    (``count`` stays None without perf or its tracepoint)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.count: int | None = None
        self._perf: subprocess.Popen[str] | None = None

    def __enter__(self) -> SyscallCount:
        if shutil.which("perf"):
            argv = ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(self.pid)]
            self._perf = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 10
            while not self._attached() and time.monotonic() < deadline and self._perf.poll() is None:
                time.sleep(0.02)
        return self

    def _attached(self) -> bool:
        """Whether perf has opened its counters (a SIGINT before that ends it without a count)."""
        assert self._perf is not None
        fds = Path(f"/proc/{self._perf.pid}/fd")
        try:
            return any("perf_event" in os.readlink(fd) for fd in fds.iterdir())
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self._perf is None:
            return
        self._perf.send_signal(signal.SIGINT)
        _, err = self._perf.communicate(timeout=10)
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2] == "raw_syscalls:sys_enter" and fields[0].isdigit():
                self.count = int(fields[0])


def _free_source_network() -> ipaddress.IPv4Network:
    from kube_ip_tracker.testing.netns import routed

    for candidate in SOURCE_NETWORKS:
        network = ipaddress.IPv4Network(candidate)
        if not routed(network):
            return network
    raise RuntimeError(f"every first-seen source network ({', '.join(SOURCE_NETWORKS)}) is routed by someone else")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Bench:
    """The pods, the server process and the source address blocks of one benchmark run."""

    def __init__(self, stack: ExitStack, shape: dict[str, Any]) -> None:
        from kube_ip_tracker.testing.netns import PodNetwork

        self.shape = shape
        self.sources_net = _free_source_network()
        net = stack.enter_context(PodNetwork(extra_subnets=[str(self.sources_net)]))
        self.server = net.add_pod("server")
        self.clients = [net.add_pod(f"client{k}") for k in range(CLIENT_PODS)]
        self.sources: list[list[str]] = []
        blocks = self.sources_net.subnets(new_prefix=SOURCE_PREFIX)
        for pod, block in zip(self.clients, blocks, strict=False):
            _ip("-n", pod.netns, "route", "add", "local", str(block), "dev", "lo")
            _ip("route", "add", str(block), "via", str(pod.ip), "dev", pod.host_if)
            self.sources.append([str(a) for a in block.hosts()])
        from kube_ip_tracker.agent.run import MARK_SLOTS, marks_for_slot

        self.name = f"kipb-{secrets.token_hex(3)}"
        self.queue = 20000 + secrets.randbelow(40000)
        # Agents (and tests) of other sessions run on this host: mark bits of our own, as theirs are.
        self.marks = marks_for_slot(secrets.randbelow(MARK_SLOTS))
        server = Proc(_python("server", netns=self.server.netns), {"address": str(self.server.ip), "port": PORT})
        stack.callback(server.close)
        server.read()
        stack.callback(self._forget_connections)

    def _forget_connections(self) -> None:
        subprocess.run(["conntrack", "-D", "-d", str(self.server.ip)], capture_output=True, check=False)

    def start_agent(self, mode: Mode) -> Proc:
        pods = [str(self.server.ip), *(str(p.ip) for p in self.clients)]
        spec = {
            "queue": self.queue,
            "name": self.name,
            "cluster": CLUSTER,
            "port": PORT,
            "server": str(self.server.ip),
            "clients": [*(str(p.ip) for p in self.clients), *(a for block in self.sources for a in block)],
            "local_pods": [*pods, str(self.sources_net)],
            "config": {**self.marks, **({"verdict_cache_size": CACHE_SIZE} if mode.cache else {})},
            "log_verdicts": mode.log_verdicts,
        }
        agent = Proc(_python("agent"), spec, quiet=mode.log_verdicts != "off")
        try:
            agent.read()
        except BaseException:
            agent.close()
            raise
        return agent

    def clients_run(self, protocol: str, mode: Mode) -> dict[str, Any]:
        """Run every client process for ``seconds``; their counts and latencies pooled."""
        per_pod = self.shape["processes_per_client"]
        procs = []
        for k, pod in enumerate(self.clients):
            for j in range(per_pod):
                share = len(self.sources[k]) // per_pod
                spec = {
                    "target": str(self.server.ip),
                    "port": PORT,
                    "protocol": protocol,
                    "sources": self.sources[k][j * share : (j + 1) * share] if mode.first_seen else [],
                }
                procs.append(Proc(_python("client", netns=pod.netns), spec))
        for p in procs:
            p.read()  # ready
        start = time.monotonic() + 0.05
        window = {"start": start, "end": start + self.shape["seconds"]}
        for p in procs:
            p.send(window)
        replies = [p.read() for p in procs]
        for p in procs:
            p.close()
        self._forget_connections()
        latencies = [x for r in replies for x in r["latencies_us"]]
        count = sum(r["count"] for r in replies)
        elapsed = max(r["elapsed"] for r in replies)
        return {
            "count": count,
            "errors": sum(r["errors"] for r in replies),
            "rate": count / elapsed if elapsed else 0.0,
            "p50_us": report.percentile(latencies, 0.5),
            "p99_us": report.percentile(latencies, 0.99),
        }

    def conntrack_table(self) -> str:
        """A table whose only rule makes conntrack track every connection (ct state new counter)."""
        chains = "".join(
            f"  chain {hook} {{ type filter hook {hook} priority filter; policy accept; ct state new counter; }}\n"
            for hook in ("forward", "input", "output")
        )
        return f"table inet {self.name}-ct {{\n{chains}}}\n"

    def measure(self, protocol: str, mode: Mode) -> dict[str, Any]:
        if mode.conntrack:
            subprocess.run(["nft", "-f", "-"], input=self.conntrack_table(), text=True, check=True)
            try:
                return {**self.clients_run(protocol, mode), "agent_cpu_ms_per_1000": 0.0, "agent_sys_ms_per_1000": 0.0}
            finally:
                subprocess.run(["nft", "delete", "table", "inet", f"{self.name}-ct"], check=False)
        if not mode.agent:
            return {**self.clients_run(protocol, mode), "agent_cpu_ms_per_1000": 0.0, "agent_sys_ms_per_1000": 0.0}
        agent = self.start_agent(mode)
        try:
            user0, sys0 = agent.ask("cpu")["cpu"]
            with SyscallCount(agent.proc.pid) as syscalls:
                result = self.clients_run(protocol, mode)
            user1, sys1 = agent.ask("cpu")["cpu"]
            agent.ask("stop")
        finally:
            agent.close()
        count = result["count"] or 1
        return {
            **result,
            "agent_cpu_ms_per_1000": round((user1 - user0 + sys1 - sys0) * 1e6 / count, 1),
            "agent_sys_ms_per_1000": round((sys1 - sys0) * 1e6 / count, 1),
            "agent_syscalls_per_conn": round(syscalls.count / count, 2) if syscalls.count is not None else None,
        }

    def profile(self, protocol: str, mode: Mode) -> dict[str, Any]:
        """cProfile of the agent during one run: the top functions (``rows``) and the shares by area (``areas``)."""
        agent = self.start_agent(mode)
        try:
            agent.ask("profile-start")
            self.clients_run(protocol, mode)
            reply = agent.ask("profile-stop")
            agent.ask("stop")
        finally:
            agent.close()
        return {"rows": reply["profile"], "areas": reply["areas"]}


def _summary(runs: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str, rows: list[dict[str, Any]]) -> float:
        return round(statistics.median(r[key] for r in rows), 1)

    added50 = [r["p50_us"] - b["p50_us"] for r, b in zip(runs, baseline, strict=True)]
    added99 = [r["p99_us"] - b["p99_us"] for r, b in zip(runs, baseline, strict=True)]
    return {
        "rate": med("rate", runs),
        "rate_runs": [round(r["rate"]) for r in runs],
        "ratio": round(med("rate", runs) / med("rate", baseline), 3) if med("rate", baseline) else 0.0,
        "p50_us": med("p50_us", runs),
        "p99_us": med("p99_us", runs),
        "added_p50_us": round(statistics.median(added50), 1),
        "added_p99_us": round(statistics.median(added99), 1),
        "agent_cpu_ms_per_1000": med("agent_cpu_ms_per_1000", runs),
        "agent_sys_ms_per_1000": med("agent_sys_ms_per_1000", runs),
        "agent_syscalls_per_conn": (
            round(statistics.median(r["agent_syscalls_per_conn"] for r in runs), 2)
            if runs and all(r.get("agent_syscalls_per_conn") is not None for r in runs)
            else None
        ),
        "errors": sum(r["errors"] for r in runs),
        "connections": sum(r["count"] for r in runs),
    }


def _targets(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    targets = []
    for protocol in PROTOCOLS:
        rows = summary.get(protocol, {})
        label = protocol.upper()
        if "repeated" in rows:
            r = rows["repeated"]
            targets.append(
                report.target(
                    f"{label} repeated tuples, rate / no rules",
                    f">= {REPEATED_RATIO_TARGET}",
                    r["ratio"],
                    r["ratio"] >= REPEATED_RATIO_TARGET,
                    "x",
                )
            )
            targets.append(
                report.target(
                    f"{label} repeated tuples, added p99 latency",
                    f"<= {REPEATED_ADDED_P99_US:g} us",
                    r["added_p99_us"],
                    r["added_p99_us"] <= REPEATED_ADDED_P99_US,
                    "us",
                )
            )
        first = rows.get("first-seen") or rows.get("cache off")
        if first is not None:
            which = "first-seen" if "first-seen" in rows else "cache off (every connection queued)"
            targets.append(
                report.target(
                    f"{label} {which}, new connections/s",
                    f">= {FIRST_SEEN_RATE_TARGET:,.0f}",
                    round(first["rate"]),
                    first["rate"] >= FIRST_SEEN_RATE_TARGET,
                    "conn/s",
                )
            )
            targets.append(
                report.target(
                    f"{label} {which}, added p99 latency",
                    f"<= {FIRST_SEEN_ADDED_P99_US:g} us",
                    first["added_p99_us"],
                    first["added_p99_us"] <= FIRST_SEEN_ADDED_P99_US,
                    "us",
                )
            )
    return targets


def run(quick: bool = False) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError("the dataplane benchmark needs root (network namespaces, nft, NFQUEUE)")
    shape = QUICK if quick else FULL
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p: {m.name: [] for m in MODES} for p in PROTOCOLS}
    with ExitStack() as stack:
        bench = Bench(stack, shape)
        for round_number in range(shape["rounds"]):
            for protocol in PROTOCOLS:
                for mode in MODES:
                    result = bench.measure(protocol, mode)
                    log.info("round %d %s %s: %s", round_number + 1, protocol, mode.name, result)
                    runs[protocol][mode.name].append(result)
        profiled = next(m for m in MODES if m.agent and not m.cache)
        profile = bench.profile("tcp", profiled)
    summary = {
        p: {name: _summary(rs, runs[p]["no rules"]) for name, rs in by_mode.items()} for p, by_mode in runs.items()
    }
    return {
        "shape": {**shape, "client_pods": CLIENT_PODS, "modes": [m.name for m in MODES]},
        "summary": summary,
        "runs": runs,
        "profile": {"mode": f"tcp, {profiled.name}", **profile},
        "targets": _targets(summary),
    }


def _verdict_log_cost(results: dict[str, Any]) -> list[str]:
    """The verdict log's overhead: first-seen with ``--log-verdicts=all`` against ``off``, same run."""
    lines = []
    for protocol in PROTOCOLS:
        rows = results["summary"].get(protocol, {})
        off, on = rows.get("first-seen"), rows.get("first-seen, log all")
        if off is None or on is None:
            continue
        cpu_off, cpu_on = off["agent_cpu_ms_per_1000"], on["agent_cpu_ms_per_1000"]
        share = f" ({(cpu_on - cpu_off) / cpu_off:+.0%})" if cpu_off else ""
        lines.append(
            f"- {protocol.upper()}: {cpu_on:g} us of agent CPU per connection with the log on, {cpu_off:g} us "
            f"off: {cpu_on - cpu_off:+.1f} us{share}; {on['rate']:,.0f} vs {off['rate']:,.0f} conn/s, added p50 "
            f"{on['added_p50_us']:g} vs {off['added_p50_us']:g} us."
        )
    if not lines:
        return []
    return [
        "Verdict log overhead (`--log-verdicts=all` against `off`, first-seen tuples: every connection is decided "
        "and offered to the log; the log's default limits write at most 20 lines a second, so the cost is its "
        "per-decision bookkeeping, a tuple remembered per decision, plus those lines):",
        "",
        *lines,
        "",
    ]


def _queue_path_lines(results: dict[str, Any]) -> list[str]:
    """What the profile below says about the queue path (verdict writes per packet, the largest areas)."""
    profile = results.get("profile") or {}
    calls = {r["function"].split(" (")[0]: r["calls"] for r in profile.get("rows", [])}
    writes, packets = calls.get("<built-in method posix.write>"), calls.get("handle_packet")
    lines = []
    if writes and packets:
        lines.append(
            f"- Verdicts are written a wakeup at a time: {packets:,} queued packets took {writes:,} verdict writes "
            f"({packets / writes:.1f} packets a write) in the profiled run. Reading stays one `recv` per packet "
            "(libnetfilter_queue's loop, compiled); the kernel's work of carrying an accepted packet on through the "
            "stack runs inside the verdict write and is counted as the agent's."
        )
    areas = profile.get("areas")
    if areas:
        top = ", ".join(f"{a['area'].split(':')[0]} {a['share']:.0%}" for a in areas[:4])
        lines.append(
            f"- By area (second profile table): {top}. What is left is spread over the compiled queue reads, the "
            "decision (the evaluator's endpoint lookups and direction checks, the enforcement's counting) and "
            "the per-packet bookkeeping, none of them dominant; reaching the first-seen target on a shared 2-core "
            "node would need the decision path compiled, or the work spread over several cores (several queues, "
            "e.g. nft `queue num A-B fanout`, one agent process each), neither done here."
        )
    return lines


def _what_remains(results: dict[str, Any]) -> list[str]:
    """Where the missed targets' time goes, from this run's figures."""
    if not report.missed(results):
        return []
    lines = []
    for protocol in PROTOCOLS:
        rows = results["summary"].get(protocol, {})
        first = rows.get("first-seen")
        if first is None:
            continue
        cpu, kernel = first["agent_cpu_ms_per_1000"], first["agent_sys_ms_per_1000"]
        lines.append(
            f"- {protocol.upper()} first-seen: each connection costs the agent {cpu:g} us of CPU ({kernel:g} us of "
            f"it in the kernel); at {FIRST_SEEN_RATE_TARGET:,.0f} new connections/s that is "
            f"{FIRST_SEEN_RATE_TARGET * cpu / 1e6:.0%} of a core for the agent alone."
        )
    return [
        "What remains where a target is missed:",
        "",
        *lines,
        *_queue_path_lines(results),
        "- Percentiles of milliseconds in every mode, no rules included, are scheduling delays of a machine "
        "whose load average (below) is several times its 2 cores: client processes wait for a core. They make "
        'the per-round "added" p99 noisy, sometimes negative; the added p50 is the steadier figure of what '
        "the rules cost per connection.",
        *(
            [
                "- `conntrack only` shows the share of the cost that is conntrack's: the no-rules mode tracks no "
                "connection, every mode with rules tracks each one."
            ]
            if "conntrack only" in results["summary"].get("tcp", {})
            else []
        ),
        "",
    ]


# The queue path before its verdicts were batched and its per-packet metrics made lock-free (main at 1920d0a),
# measured by this benchmark in the same session as the change, at a load average of 9.9-14.9.
BEFORE = (
    "Before the batched queue path (issue 14: one verdict syscall per packet, locked metric updates, the "
    "IPv4 parse building two address objects per packet; main at 1920d0a, `python -m bench dataplane` at "
    "10:06 UTC, load average 9.9-14.9), agent CPU per 1,000 connections: TCP cache off 89.4 ms (37.3 in the "
    "kernel), TCP first-seen 80.4 ms (39.7), UDP cache off 44.4 ms (13.7), UDP first-seen 51.8 ms (17.4); "
    "first-seen rates 4,398 (TCP) and 7,030 (UDP) conn/s."
)


def markdown(results: dict[str, Any]) -> str:
    shape = results["shape"]
    out = [
        "## Dataplane: new connections through the agent",
        "",
        f"{shape['client_pods']} client pods x {shape['processes_per_client']} client processes against one "
        f"server pod, {shape['seconds']} s per mode, {shape['rounds']} rounds alternating the modes "
        "(`bench/bench_dataplane.py` says how). Rates are medians over the rounds; latency percentiles are "
        'over all connections of a run (median over the rounds); "added" is a mode\'s percentile minus the '
        "no-rules one of the same round. The clients, the server, the agent and the kernel's packet work "
        "share the machine's 2 cores, so every rate is bounded by CPU, not by the network; the machine is "
        "shared with other sessions: when its load average (below) is well above 2, rates and percentiles "
        "swing by several times between rounds and modes, and the agent's CPU per 1,000 connections is the "
        "steadier figure.",
        "",
        report.targets_table(results["targets"]),
        "",
        BEFORE,
        "",
    ]
    rows = []
    for protocol, by_mode in results["summary"].items():
        for name, s in by_mode.items():
            rows.append(
                (
                    protocol.upper(),
                    name,
                    f"{s['rate']:,.0f}",
                    f"{s['ratio']:.2f}",
                    s["p50_us"],
                    s["p99_us"],
                    s["added_p50_us"],
                    s["added_p99_us"],
                    s["agent_cpu_ms_per_1000"],
                    s["agent_sys_ms_per_1000"],
                    "" if s.get("agent_syscalls_per_conn") is None else s["agent_syscalls_per_conn"],
                    s["errors"],
                )
            )
    header = (
        "protocol",
        "mode",
        "conn/s",
        "x no rules",
        "p50 us",
        "p99 us",
        "added p50 us",
        "added p99 us",
        "agent CPU ms / 1k conn",
        "of it in the kernel",
        "agent syscalls / conn",
        "errors",
    )
    out += [report.table(header, rows), ""]
    out += _verdict_log_cost(results)
    out += _what_remains(results)
    profile = results.get("profile")
    if profile:
        out += [
            f"Where the agent's CPU time goes on the queue path ({profile['mode']}; cProfile of the agent process "
            "by CPU time, own time per function; cProfile inflates small Python functions, so shares are "
            "indicative). A verdict call (`repeat`, `accept`) includes the kernel's work of taking the packet "
            "on through the rest of the stack, which runs in the agent's syscall:",
            "",
            report.profile_table(profile["rows"]),
            "",
        ]
        if profile.get("areas"):
            out += [
                "The same profile by area (own time of every function, grouped by the code it belongs to):",
                "",
                report.table(("area", "share"), [(a["area"], f"{a['share']:.0%}") for a in profile["areas"]]),
                "",
            ]
    return "\n".join(out)
