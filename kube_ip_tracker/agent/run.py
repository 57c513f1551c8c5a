"""``kube-ip-agent run``: the node agent daemon.

It ties together

* a :class:`~kube_ip_tracker.client.TrackerClient` whose apply sink is the :class:`AgentStore`:
  the pods, namespaces and nodes of every cluster, held once, in the :class:`PolicyEngine`'s world;
* a :class:`NetworkPolicyInformer` on the agent's own cluster (``--kubeconfig``, or in-cluster)
  that compiles the local NetworkPolicies into the same engine;
* with ``--pod-cidr`` and ``--node-name``, a :class:`LocalPodInformer` of this node's pods on the same API
  server (``--local-pod-watch``), so a new pod's first connections need not wait for the tracker's data;
* the :class:`Dataplane`, which asks :class:`LocalEnforcement` about the first packet of every
  connection of a local pod: egress is enforced for source pods of this cluster, ingress for
  destination pods of this cluster.

Readiness is "tracker snapshot applied AND policies listed"; until then the dataplane applies
``--fail-open``. Every policy change requests a revalidation at once, and changes of tracker data
that can alter a verdict do so at most once a second; a revalidation cuts the connections no longer
allowed. SIGTERM/SIGINT stop the agent and remove its rules.

Several agents can share a host (the demo runs one per cluster): each needs its own
``--nfqueue-id``, its own ``--name`` (default derived from ``--cluster-id``) and its own
``--mark-slot`` (0-7, default ``--nfqueue-id`` mod 4), so their rules, queues and marks never meet.
A running agent of another name whose rules use our mark bits stops the start (exit 1, naming it).
(Limitation of the iptables backend: while a crashed agent's rules are still installed with
``--fail-open``, the kernel's queue bypass for its dead queue also skips the queue rules after it in
the security chain, i.e. possibly another agent's; restarting the agent, or a clean stop, ends that.)

Exit codes: 0 after SIGTERM/SIGINT, 1 on a configuration or start-up error (named in the log), 2 on bad
flags, 3 when a part of the agent died of an internal error (it exits, keeping its rules, to be restarted).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import logging
import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from kube_ip_tracker import cluster_labels
from kube_ip_tracker.agent.audit import AUDIT_MODE, NOT_ENFORCING, add_audit_argument, audit_dataplane
from kube_ip_tracker.agent.cluster_policies import CRD_CHECK_INTERVAL, ClusterPolicyInformer
from kube_ip_tracker.agent.dataplane import (
    ConfigError,
    Dataplane,
    DataplaneConfig,
    DataplaneError,
    add_arguments,
    config_from_args,
    installed_pods,
)
from kube_ip_tracker.agent.dataplane.neighbours import MarkCollision, check_marks_free
from kube_ip_tracker.agent.enforce import LocalEnforcement
from kube_ip_tracker.agent.explain.client import SOCKET_DIR
from kube_ip_tracker.agent.explain.request import answer
from kube_ip_tracker.agent.explain.server import ExplainServer, ExplainSocketError
from kube_ip_tracker.agent.local_pods import LocalPodInformer
from kube_ip_tracker.agent.networkpolicies import NetworkPolicyInformer
from kube_ip_tracker.agent.policy import PolicyEngine
from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.agent.verdict_log import (
    VerdictLog,
    VerdictLogMode,
    VerdictLogOptions,
    add_verdict_log_arguments,
    verdict_log_options,
)
from kube_ip_tracker.backoff import Backoff
from kube_ip_tracker.client.client import ClientOptions, TlsOptions, TrackerClient
from kube_ip_tracker.client.resolver import parse_address
from kube_ip_tracker.client.token import TokenOptions
from kube_ip_tracker.client.token_flags import add_client_token_arguments, client_token_from_args
from kube_ip_tracker.cluster_labels import DEFAULT_RULE, LabelRule
from kube_ip_tracker.durations import parse_duration
from kube_ip_tracker.kube.kubeconfig import KubeconfigError, check_in_cluster, in_cluster_spec, read_kubeconfig
from kube_ip_tracker.listen import optional_listen_address
from kube_ip_tracker.logs import add_logging_arguments
from kube_ip_tracker.metrics_http import MetricsServer, start_metrics_server
from kube_ip_tracker.model import ClusterSpec

log = logging.getLogger("kube_ip_tracker.agent.run")

EXIT_CONFIG = 1
EXIT_INTERNAL = 3
DEFAULT_METRICS_ADDRESS = "0.0.0.0:9091"
DEFAULT_PER_POLICY_LIMIT = 500
MARK_SLOTS = 8
# Slots the default (--nfqueue-id mod this) picks from: the packet-mark bits of the upper byte.
DEFAULT_MARK_SLOTS = 4
# Tracker data changes are revalidated at most this often (seconds); policy changes at once.
MIRROR_REVALIDATE_INTERVAL = 1.0

READY = Gauge("kube_ip_agent_ready", "1 while the tracker snapshot is applied and local NetworkPolicies are listed.")
POD_SYNC_ERRORS = Counter(
    "kube_ip_agent_local_pod_sync_errors_total",
    "Failures to update the dataplane's local pod addresses (retried with backoff).",
)


# ----------------------------------------------------------------------------- flags


def default_name(cluster_id: str) -> str:
    """A dataplane name (nft table, iptables chain prefix) for ``cluster_id``: ``kipa-<id>``, hashed when long."""
    slug = re.sub(r"[^a-z0-9-]+", "-", cluster_id.lower()).strip("-")
    name = f"kipa-{slug}"
    if len(name) <= 16 and slug:
        return name
    digest = hashlib.sha256(cluster_id.encode()).hexdigest()[:4]
    return f"kipa-{slug[:6]}-{digest}"


def marks_for_slot(slot: int) -> dict[str, int]:
    """The mark bits of one agent on a shared host: two packet-mark bits and one conntrack-mark bit.

    Slots 0-3 use packet-mark bits 24-31, slots 4-7 bits 16-23; the conntrack-mark bit is 24 + slot.
    Slot 0 is the dataplane's default marks.
    """
    if not 0 <= slot < MARK_SLOTS:
        raise ConfigError(f"--mark-slot must be in 0..{MARK_SLOTS - 1}, got {slot}")
    first = 24 + 2 * slot if slot < 4 else 16 + 2 * (slot - 4)
    return {
        "queue_mark": 1 << first,
        "verdict_mark": 1 << (first + 1),
        "accepted_ct_mark": 1 << (24 + slot),
    }


def mark_collision_advice(exc: MarkCollision, dataplane: DataplaneConfig) -> str:
    """``exc``'s message with the flags that resolve it: a free ``--mark-slot``, or ``--name`` for a restart."""
    taken = {
        slot
        for slot in range(MARK_SLOTS)
        if any(a.collides(dataclasses.replace(dataplane, **marks_for_slot(slot))) for a in exc.installed)
    }
    free = [str(slot) for slot in range(MARK_SLOTS) if slot not in taken]
    names = ", ".join(repr(a.name) for a in exc.agents)
    return (
        f"{exc}. Agents sharing a host need distinct mark slots: start this agent with --mark-slot set to one "
        f"no other agent uses (free: {', '.join(free) or 'none'}); if {names} is this agent's previous instance, "
        f"start it with the same --name instead"
    )


def add_run_command(commands: argparse._SubParsersAction) -> None:
    """Register ``run``."""
    parser = commands.add_parser(
        "run",
        help="run the node agent (enforces NetworkPolicies on this node's pods; needs root)",
        description=(
            "Watch the tracker and the local cluster's NetworkPolicies and enforce them on the first packet "
            "of every connection of this node's pods (NFQUEUE)."
        ),
    )
    tracker = parser.add_argument_group("tracker")
    tracker.add_argument(
        "--tracker-address",
        action="append",
        default=[],
        required=True,
        metavar="HOST:PORT",
        help="tracker gRPC address; a name resolving to several IPs (headless Service) is failed over (repeatable)",
    )
    tracker.add_argument("--tracker-ca-file", type=Path, metavar="PATH", help="CA bundle to verify the tracker (TLS)")
    tracker.add_argument("--tracker-cert-file", type=Path, metavar="PATH", help="client certificate (mTLS)")
    tracker.add_argument("--tracker-key-file", type=Path, metavar="PATH", help="client key (mTLS)")
    tracker.add_argument(
        "--tracker-server-name", metavar="NAME", help="name to verify in the tracker certificate (default: its host)"
    )
    add_client_token_arguments(tracker, "tracker", cluster_flag=False)  # --tracker-token-file (cluster: --cluster-id)
    local = parser.add_argument_group("local cluster")
    local.add_argument(
        "--kubeconfig", metavar="PATH", help="kubeconfig of this node's cluster (default: in-cluster configuration)"
    )
    local.add_argument("--context", metavar="NAME", help="kubeconfig context (default: its current context)")
    local.add_argument("--cluster-id", required=True, help="this cluster's id, as the tracker names it")
    local.add_argument(
        "--crd-check-interval",
        type=parse_duration,
        default=CRD_CHECK_INTERVAL,
        metavar="DURATION",
        help="how often to check whether the ClusterNetworkPolicy, AdminNetworkPolicy and "
        f"BaselineAdminNetworkPolicy CRDs are installed (or still are) (default {CRD_CHECK_INTERVAL:.0f}s)",
    )
    local.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or None,
        help="this node; without --pod-cidr the agent enforces the pods the tracker reports on it "
        "(default $NODE_NAME; without it, every pod of --cluster-id)",
    )
    local.add_argument(
        "--local-pod-watch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --pod-cidr and --node-name: watch this node's pods on the local API server (fieldSelector "
        "spec.nodeName), so that a new pod's first connections are decided before the tracker's data arrives; "
        "needs pods list/watch (default: on)",
    )
    labels = parser.add_argument_group("cluster labels")
    cluster_labels.add_arguments(labels, "every namespace received from the tracker")
    add_arguments(parser)
    group = parser.add_argument_group("host sharing")
    group.add_argument(
        "--name",
        default=None,
        help="nft table and iptables chain prefix of this agent (default kipa-<cluster-id>)",
    )
    group.add_argument(
        "--mark-slot",
        type=int,
        default=None,
        metavar="N",
        help=f"which packet/conntrack mark bits this agent owns, 0..{MARK_SLOTS - 1}; agents sharing a host need "
        f"distinct slots (default: --nfqueue-id mod {DEFAULT_MARK_SLOTS})",
    )
    other = parser.add_argument_group("serving")
    other.add_argument(
        "--metrics-address",
        type=optional_listen_address,
        default=DEFAULT_METRICS_ADDRESS,
        metavar="HOST:PORT",
        help=f"Prometheus /metrics listen address, '' to disable (default {DEFAULT_METRICS_ADDRESS})",
    )
    other.add_argument(
        "--metrics-per-policy",
        action="store_true",
        help="also count decisions per policy (kube_ip_agent_policy_verdicts_total; one series per policy)",
    )
    other.add_argument(
        "--metrics-per-policy-limit",
        type=int,
        default=DEFAULT_PER_POLICY_LIMIT,
        metavar="N",
        help="with --metrics-per-policy, at most N policies get their own series; the others count as "
        f'policy="(other)" (default {DEFAULT_PER_POLICY_LIMIT})',
    )
    add_audit_argument(parser.add_argument_group("audit"))
    other.add_argument(
        "--explain-socket",
        default=None,
        metavar="PATH",
        help=f"Unix socket for 'kube-ip-agent explain' (root-only; default {SOCKET_DIR}/<--name>.sock; '' disables)",
    )
    add_verdict_log_arguments(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=cmd_run)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything ``run`` needs, checked."""

    cluster_id: str
    node_name: str | None
    trackers: tuple[str, ...]
    tls: TlsOptions | None
    spec: ClusterSpec
    dataplane: DataplaneConfig
    static_pods: bool
    metrics_address: str
    verdict_log: VerdictLogOptions = dataclasses.field(default_factory=VerdictLogOptions)
    explain_socket: str = ""
    per_policy_limit: int = 0
    cluster_labels: LabelRule = DEFAULT_RULE
    crd_check_interval: float = CRD_CHECK_INTERVAL
    token: TokenOptions | None = None
    audit_mode: bool = False  # --policy-audit-mode: decide, log and count, accept everything
    local_pod_watch: bool = True

    @property
    def watches_local_pods(self) -> bool:
        """The local pod watch runs: asked for, and of use (an unknown address of --pod-cidr waits) and possible."""
        return self.local_pod_watch and self.static_pods and bool(self.node_name)


def local_pod_watch_state(config: AgentConfig) -> str:
    """Whether the local pod watch runs, and if not, why (for the start log line)."""
    if config.watches_local_pods:
        return "on"
    if not config.local_pod_watch:
        return "off (--no-local-pod-watch)"
    if not config.static_pods:
        return "off (no --pod-cidr: only the tracker's pods are enforced, none waits)"
    return "off (no --node-name)"


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """Check the flags; raises ValueError (ConfigError, KubeconfigError, AddressError) naming the problem."""
    cluster_id = args.cluster_id.strip()
    if not cluster_id:
        raise ConfigError("--cluster-id must not be empty")
    for address in args.tracker_address:
        parse_address(address)
    tls = None
    if args.tracker_ca_file or args.tracker_cert_file or args.tracker_key_file:
        if (args.tracker_cert_file is None) != (args.tracker_key_file is None):
            raise ConfigError("--tracker-cert-file and --tracker-key-file must be given together")
        tls = TlsOptions(args.tracker_ca_file, args.tracker_cert_file, args.tracker_key_file, args.tracker_server_name)
        tls.credentials()  # TlsConfigError naming an unreadable or unusable file
    token = client_token_from_args(args, "tracker", default_cluster=cluster_id)
    if args.kubeconfig:
        read_kubeconfig(args.kubeconfig)
        spec = ClusterSpec(cluster_id=cluster_id, kubeconfig=os.path.abspath(args.kubeconfig), context=args.context)
    else:
        try:
            check_in_cluster()
        except KubeconfigError as exc:  # its message names the tracker's flags
            raise KubeconfigError(
                str(exc).replace("no --kubeconfig or --kubeconfig-dir given", "no --kubeconfig given")
            ) from None
        spec = in_cluster_spec(cluster_id)
    if args.crd_check_interval <= 0:
        raise ConfigError(f"--crd-check-interval must be positive, got {args.crd_check_interval}")
    if args.metrics_per_policy_limit < 1:
        raise ConfigError(f"--metrics-per-policy-limit must be at least 1, got {args.metrics_per_policy_limit}")
    base = config_from_args(args)
    slot = args.mark_slot if args.mark_slot is not None else base.nfqueue_id % DEFAULT_MARK_SLOTS
    dataplane = dataclasses.replace(
        base, name=args.name or default_name(cluster_id), revalidate_delay=0.2, **marks_for_slot(slot)
    )
    if args.policy_audit_mode:
        dataplane = audit_dataplane(dataplane)
    return AgentConfig(
        cluster_id=cluster_id,
        node_name=args.node_name,
        trackers=tuple(args.tracker_address),
        tls=tls,
        token=token,
        spec=spec,
        dataplane=dataplane,
        static_pods=bool(dataplane.local_pods),
        metrics_address=args.metrics_address,
        verdict_log=verdict_log_options(args),
        explain_socket=str(SOCKET_DIR / f"{dataplane.name}.sock")
        if args.explain_socket is None
        else args.explain_socket,
        per_policy_limit=args.metrics_per_policy_limit if args.metrics_per_policy else 0,
        cluster_labels=cluster_labels.rule_from_args(args),
        crd_check_interval=args.crd_check_interval,
        audit_mode=args.policy_audit_mode,
        local_pod_watch=args.local_pod_watch,
    )


# ----------------------------------------------------------------------------- the agent


class Agent:
    """The running agent: tracker client, policy informer, dataplane; see the module docstring."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.engine = PolicyEngine()
        verdicts = VerdictLog(config.verdict_log) if config.verdict_log.mode is not VerdictLogMode.OFF else None
        # This node's pods from the local API server: they end the wait below early (see local_pods.py).
        self.local_pods: LocalPodInformer | None = None
        if config.watches_local_pods and config.node_name:
            self.local_pods = LocalPodInformer(
                config.spec, config.node_name, self.engine, on_change=self._pod_data_changed
            )
        # With --pod-cidr, an address of the range no pod has yet waits for its pod's data (see enforce.py).
        self.enforcement = LocalEnforcement(
            self.engine,
            config.cluster_id,
            verdicts,
            config.per_policy_limit,
            is_local=self._in_pod_range if config.static_pods else None,
            audit_mode=config.audit_mode,
            local_pods=self.local_pods.provisional if self.local_pods is not None else None,
        )
        self._tracker_changed = asyncio.Event()
        self.dataplane = Dataplane(config.dataplane, self.enforcement.decide, self.is_ready)
        self.store = AgentStore(
            self.engine,
            local_cluster=config.cluster_id,
            node=config.node_name,
            on_change=self._pod_data_changed,
            on_local_pods=None if config.static_pods else self._local_pods_changed,
            cluster_labels=config.cluster_labels,
        )
        self.informer = NetworkPolicyInformer(config.spec, self.engine, on_change=self.dataplane.request_revalidation)
        self.cluster_policies = ClusterPolicyInformer(
            config.spec,
            self.engine,
            on_change=self.dataplane.request_revalidation,
            crd_check_interval=config.crd_check_interval,
        )
        options = ClientOptions(
            watcher_name=config.node_name or socket.gethostname(), tls=config.tls, token=config.token
        )
        self.client = TrackerClient(config.trackers, self.store, options)
        self.explain: ExplainServer | None = None
        if config.explain_socket:
            self.explain = ExplainServer(config.explain_socket, lambda req: answer(self.engine, req, config.cluster_id))
        self._pods_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self.failed = asyncio.Event()  # set when a task of the agent died: exit so the agent is restarted
        READY.set(0)
        AUDIT_MODE.set(1 if config.audit_mode else 0)

    def is_ready(self) -> bool:
        """Decisions can be trusted: the tracker's snapshot is applied and local policies are listed
        (NetworkPolicies, and each cluster-scoped kind whose CRD is installed)."""
        return self.client.ready and self.informer.synced and self.cluster_policies.synced

    def _in_pod_range(self, ip: Any) -> bool:
        return self.dataplane.is_local(ip)

    def _pod_data_changed(self) -> None:
        """Pod data that can change a verdict changed (the tracker's, or the local pod watch's): no cached
        verdict outlives it, waiting connections look again, accepted ones are revalidated soon."""
        self.dataplane.invalidate_verdicts()
        self.enforcement.data_changed()
        self._tracker_changed.set()

    def _local_pods_changed(self, addresses: frozenset[str]) -> None:
        self._pods_wanted.set()

    async def _sync_local_pods(self) -> None:
        """Keep the dataplane's pod sets equal to the local pods of the store (coalesced, retried)."""
        backoff = Backoff(0.2, 10.0)
        while True:
            await self._pods_wanted.wait()
            self._pods_wanted.clear()
            addresses = sorted(self.store.local_addresses)
            try:
                await self.dataplane.set_local_pods(addresses)
                backoff.reset()
            except (DataplaneError, ValueError) as exc:
                POD_SYNC_ERRORS.inc()
                delay = backoff.next_delay()
                log.error("Cannot update the local pod addresses: %s; retrying in %.1fs", exc, delay)
                self._pods_wanted.set()
                await asyncio.sleep(delay)
                continue
            self.dataplane.request_revalidation()
            await asyncio.sleep(0.1)  # let a burst of pod changes settle into one update

    async def _revalidate_tracker_changes(self) -> None:
        """Revalidate after tracker data changes, at most once per MIRROR_REVALIDATE_INTERVAL.

        Tracker data of many clusters can change many times a second; policy changes (few, and what
        a user waits for) request a revalidation at once instead.
        """
        while True:
            await self._tracker_changed.wait()
            self._tracker_changed.clear()
            self.dataplane.request_revalidation()
            await asyncio.sleep(MIRROR_REVALIDATE_INTERVAL)

    async def _report_ready(self) -> None:
        await self.client.wait_ready()
        await self.informer.wait_synced()
        await self.cluster_policies.wait_synced()
        READY.set(1)
        log.info(
            "Agent ready: tracker snapshot applied (%s), %d local NetworkPolicies (%d invalid), "
            "%d cluster-scoped policies (%d invalid); %d of them staged (evaluated, not enforced)",
            ", ".join(f"{k}={v}" for k, v in self.store.counts().items()),
            len(self.informer.policies),
            len(self.informer.invalid),
            len(self.cluster_policies.policies),
            len(self.cluster_policies.invalid),
            self.engine.staged_policies,
        )
        if self.config.audit_mode:
            log.warning("Agent ready in %s", NOT_ENFORCING)
        statuses = self.store.cluster_statuses()
        if self.config.cluster_id not in statuses:
            log.warning(
                "The tracker knows no cluster %r (it has: %s): no pod is this cluster's, so nothing is enforced; "
                "check --cluster-id",
                self.config.cluster_id,
                ", ".join(sorted(statuses)) or "none",
            )
        self._pods_wanted.set()  # replace pod addresses kept from a previous run, even by an empty set
        self.dataplane.request_revalidation()  # re-check what fail-open let through meanwhile

    async def start(self) -> None:
        """Install the rules first (so a restart leaves no gap), then start watching.

        Refuses (``MarkCollision``) when a running agent of another name uses our mark bits.
        """
        self.dataplane.forget_left_over_verdicts()  # a crashed run's cached verdicts: not one more connection
        await check_marks_free(self.config.dataplane)
        if not self.config.static_pods:
            previous = await installed_pods(self.config.dataplane)
            if previous:
                log.info(
                    "Keeping the %d pod addresses of the previous rules until the tracker's snapshot arrives",
                    len(previous),
                )
                await self.dataplane.set_local_pods(previous)
        await self.dataplane.start()
        if self.explain is not None:
            await self.explain.start()
        self.client.start().add_done_callback(self._task_done)
        self._spawn(self.informer.run(), "networkpolicy-informer")
        self._spawn(self.cluster_policies.run(), "cluster-policy-informer")
        self._spawn(self._report_ready(), "ready", forever=False)
        self._spawn(self._revalidate_tracker_changes(), "tracker-revalidation")
        if not self.config.static_pods:
            self._spawn(self._sync_local_pods(), "local-pods")
        if self.local_pods is not None:
            self._spawn(self.local_pods.run(), "local-pod-watch")

    def _spawn(self, coro: Any, name: str, forever: bool = True) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done if forever else self._finite_task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A task meant to run until the agent stops ended: only a bug does that; the agent exits (to be restarted)."""
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None:
            log.error("Agent task %s failed", task.get_name(), exc_info=exc)
        else:
            log.error("Agent task %s ended unexpectedly", task.get_name())
        self.failed.set()

    def _finite_task_done(self, task: asyncio.Task[Any]) -> None:
        """A task that ends by design: only an exception counts."""
        if not task.cancelled() and task.exception() is not None:
            self._task_done(task)

    async def stop(self, remove_rules: bool = True) -> None:
        """Stop watching, then remove the rules (kept with ``remove_rules=False``, for a restart)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.client.stop()
        if self.explain is not None:
            await self.explain.stop()
        if self.dataplane.running:
            await self.dataplane.stop(remove_rules=remove_rules)
        READY.set(0)


async def run_agent(config: AgentConfig, stop: asyncio.Event | None = None) -> int:
    """Run the agent until ``stop`` is set (or SIGTERM/SIGINT); returns the exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics: MetricsServer | None = None
    agent = Agent(config)
    try:
        if config.metrics_address not in ("", "0", "off"):
            try:
                metrics = start_metrics_server(
                    config.metrics_address, ready=agent.is_ready, ready_note=NOT_ENFORCING if config.audit_mode else ""
                )
            except (OSError, ValueError) as exc:
                log.error("Cannot serve metrics on %s: %s", config.metrics_address, exc)
                return EXIT_CONFIG
        dp = config.dataplane
        log.info(
            "Starting agent for cluster %s on node %s: trackers %s, nfqueue %d, rules %s, marks queue=%#x verdict=%#x "
            "ct=%#x, pods %s, local pod watch %s",
            config.cluster_id,
            config.node_name or "(any)",
            ", ".join(config.trackers),
            dp.nfqueue_id,
            dp.name,
            dp.queue_mark,
            dp.verdict_mark,
            dp.accepted_ct_mark,
            ",".join(str(p) for p in dp.local_pods) if config.static_pods else "from the tracker",
            local_pod_watch_state(config),
        )
        if config.audit_mode:
            log.warning("Starting in %s", NOT_ENFORCING)
        if not dp.fail_open and not config.static_pods:
            log.warning(
                "--no-fail-open without --pod-cidr: this node's pods are known once the tracker's snapshot arrives; "
                "until then only pod addresses left in the rules by a previous run are enforced. Give --pod-cidr "
                "to enforce all of them from the start."
            )
        try:
            await agent.start()
        except MarkCollision as exc:
            log.error("Cannot start the dataplane: %s", mark_collision_advice(exc, dp))
            return EXIT_CONFIG
        except DataplaneError as exc:
            log.error("Cannot start the dataplane: %s", exc)
            return EXIT_CONFIG
        except ExplainSocketError as exc:
            log.error("Cannot serve explain requests: %s (--explain-socket)", exc)
            return EXIT_CONFIG
        stopped = asyncio.ensure_future(stop.wait())
        failed = asyncio.ensure_future(agent.failed.wait())
        await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopped, failed):
            waiter.cancel()
        if agent.failed.is_set():
            log.error("Shutting down after an internal error (see above); the rules stay until the agent restarts")
            code = EXIT_INTERNAL
        else:
            log.info("Shutting down")
            code = 0
    finally:
        await agent.stop(remove_rules=not agent.failed.is_set())
        if metrics is not None:
            metrics.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("Stopped")
    return code


def cmd_run(args: argparse.Namespace, out: Any, err: Any) -> int:
    """The ``run`` subcommand."""
    try:
        config = agent_config(args)
    except (ValueError, OSError) as exc:  # ConfigError, KubeconfigError, AddressError, unreadable TLS files
        log.error("%s", exc)
        return EXIT_CONFIG
    return asyncio.run(run_agent(config))
