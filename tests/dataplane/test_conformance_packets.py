"""Conformance cases on real packets: pods as network namespaces, the dataplane deciding with the evaluator.

Each case of ``<repo>/../shared/conformance/cases`` and ``.../cnp`` (ClusterNetworkPolicy and
AdminNetworkPolicy/BaselineAdminNetworkPolicy tiers, nodes peers) becomes a flat pod network whose namespaces hold
the world's pod addresses (plus one namespace per bare address a probe uses). Every destination
serves TCP and UDP echo on the probed ports; a :class:`Dataplane` enforces a :class:`PolicyEngine`
loaded from the world; each probe is a real connection attempt from the source namespace, and
"got an echo" must equal ``expect == "allow"``.

Skipped probes (with the count in the test output): pod-to-itself (``loopback``: never leaves the
pod's namespace, so no node dataplane sees it) and SCTP when the kernel has no SCTP sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from kube_ip_tracker.agent.dataplane import Dataplane, DataplaneConfig, parse_networks
from kube_ip_tracker.agent.policy.worldfile import Probe, ProbeEnd, WorldFile, decide_probe, load_world
from kube_ip_tracker.testing.netns import Pod, PodNetwork, routed

from .conftest import rules_present
from .test_dataplane_policy_root import engine_decide

pytestmark = pytest.mark.root

CONFORMANCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"
CASES_DIR = CONFORMANCE_DIR / "cases"
FOLDERS = ("cases", "cnp")
# Default run: ingress, egress, ipBlock, named ports (ingress and egress), UDP, SCTP, multi-cluster;
# Admin tier ingress/egress, priorities, Pass, node peers, Baseline tier with named ports and
# CIDRs, multi-cluster tiers, and a v1alpha1 (AdminNetworkPolicy) variant.
SAMPLE = (
    "cases/001-default-deny-ingress.json",
    "cases/025-deny-egress-by-podselector.json",
    "cases/035-egress-cidr-except.json",
    "cases/017-ingress-one-named-port.json",
    "cases/019-egress-one-named-port.json",
    "cases/043-udp-default-deny-ingress.json",
    "cases/047-sctp-ports.json",
    "cases/101-mc-default-deny-ingress-blocks-remote-client.json",
    "cases/102-mc-allow-from-cluster-1-demo-c1-not-third-cluster.json",
    "cnp/201-cnp-admin-ingress-tcp-step2.json",
    "cnp/205-cnp-admin-egress-tcp-step3.json",
    "cnp/209-cnp-admin-egress-node-peers.json",
    "cnp/213-cnp-admin-priority-step2.json",
    "cnp/217-cnp-baseline-ingress-named-port.json",
    "cnp/223-cnp-baseline-egress-inline-cidr-step2.json",
    "cnp/302-mc-cnp-admin-pass-hands-over-to-destination-np.json",
    "cnp/306-mc-cnp-egress-deny-at-source-beats-remote-ingress-accept.json",
    "cnp/307-mc-cnp-named-port-resolved-on-remote-destination.json",
    "cnp/413-anp-from-213-admin-priority-step2.json",
)
PROBE_TIMEOUT = 1.5  # a denied probe waits this long; an allowed one answers in milliseconds
RETRY_TIMEOUT = 5.0  # an expected-allow probe that got no answer is tried once more, with this timeout
# Mark bits of our own: dataplanes sharing bits on one host queue each other's packets (tests run in parallel).
# Agents' mark slots use bits 24-31 (kube_ip_tracker.agent.run.marks_for_slot); these are below them.
MARKS = {"queue_mark": 1 << 20, "verdict_mark": 1 << 21, "accepted_ct_mark": 1 << 20}
LOCK_FILE = "/run/lock/kube-ip-tracker-conformance-packets.lock"


def _sctp_supported() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError:
        return False
    return True


SCTP = _sctp_supported()


def _case_files() -> list[str]:
    return [f"{folder}/{p.name}" for folder in FOLDERS for p in sorted((CONFORMANCE_DIR / folder).glob("*.json"))]


def _params() -> list[object]:
    if not CASES_DIR.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"conformance cases not found at {CASES_DIR}"))]
    names = _case_files()
    return [name if name in SAMPLE else pytest.param(name, marks=pytest.mark.slow) for name in names]


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    """Cases use fixed addresses: runs of this test on one host take turns."""
    with open(LOCK_FILE, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the world as namespaces ----------------------------------------------------------------------


def _end_key(end: ProbeEnd) -> str:
    return end.ip or f"{end.cluster}/{end.namespace}/{end.pod}"


def _subnets(addresses: list[str]) -> list[str]:
    """Private networks covering the addresses: the /16 of each (the /24 when the /16 is not private)."""
    nets: list[str] = []
    for text in addresses:
        address = ipaddress.ip_address(text)
        plen = 16 if address.version == 4 else 112
        net = ipaddress.ip_network(f"{address}/{plen}", strict=False)
        if not net.is_private:
            net = ipaddress.ip_network(f"{address}/{plen + 8}", strict=False)
        if str(net) not in nets:
            nets.append(str(net))
    return nets


@dataclass
class WorldNetwork:
    """The namespaces of one world: one per pod (its first IP) and per bare probe address."""

    network: PodNetwork
    ends: dict[str, Pod]


def build_network(world: WorldFile) -> WorldNetwork:
    """Create a namespace per pod and per bare address; serve every probed (protocol, port) on its destination."""
    addresses: dict[str, str] = {f"{p.cluster}/{p.namespace}/{p.name}": p.ips[0] for p in world.pods if p.ips}
    for probe in world.probes:
        for end in (probe.src, probe.dst):
            if end.ip:
                addresses[end.ip] = end.ip
    busy = [ip for ip in addresses.values() if routed(ipaddress.ip_network(ip))]
    if busy:
        pytest.skip(f"addresses {', '.join(busy)} are routed by another network on this host")
    subnets = _subnets(list(addresses.values()))
    network = PodNetwork(subnets[0], prefix="kiptcf", extra_subnets=subnets[1:])
    try:
        ends = {key: network.add_pod(f"p{index}", ip) for index, (key, ip) in enumerate(addresses.items())}
        served: set[tuple[str, str, int]] = set()
        for probe in world.probes:
            target = (_end_key(probe.dst), probe.protocol, probe.port or 0)
            if probe.port and target not in served and probe.protocol in ("TCP", "UDP"):
                served.add(target)
                pod = ends[target[0]]
                (pod.serve_tcp if probe.protocol == "TCP" else pod.serve_udp)(probe.port)
    except BaseException:
        network.close()
        raise
    return WorldNetwork(network, ends)


def _skip_reason(probe: Probe) -> str | None:
    if _end_key(probe.src) == _end_key(probe.dst):
        return "loopback (pod to itself stays inside its namespace)"
    if probe.protocol == "SCTP" and not SCTP:
        return "SCTP sockets not supported by this kernel"
    if probe.port is None:
        return "probe without a port"
    return None


def _probe(src: Pod, dst: Pod, protocol: str, port: int, timeout: float) -> bool:
    """Whether a real connection attempt gets through (an echo comes back)."""
    if protocol == "TCP":
        return src.tcp_probe(dst.ip, port, timeout)
    if protocol == "UDP":
        return src.udp_probe(dst.ip, port, timeout)
    return src.sctp_probe(dst.ip, port, timeout)  # an association that opens counts as allowed


# --- the test -------------------------------------------------------------------------------------


async def _run_probes(net: WorldNetwork, probes: list[tuple[int, Probe]], wait: float) -> dict[int, bool]:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=48) as pool:
        futures = {
            index: loop.run_in_executor(
                pool,
                _probe,
                net.ends[_end_key(p.src)],
                net.ends[_end_key(p.dst)],
                p.protocol,
                p.port,
                wait,
            )
            for index, p in probes
        }
        return {index: await future for index, future in futures.items()}


@pytest.mark.parametrize("case", _params())
async def test_conformance_case_on_packets(case: str, dp_name: str, queue_id: int) -> None:
    world = load_world((CONFORMANCE_DIR / case).read_bytes())
    engine = world.engine()
    runnable = [(i, p) for i, p in enumerate(world.probes) if _skip_reason(p) is None and p.expect is not None]
    skipped = {_skip_reason(p) for p in world.probes} - {None}
    with _exclusive():
        net = build_network(world)
        config = DataplaneConfig(
            nfqueue_id=queue_id,
            name=dp_name,
            fail_open=False,
            local_pods=parse_networks(str(pod.ip) for pod in net.network.pods),
            **MARKS,
        )
        dataplane = Dataplane(config, engine_decide(engine), lambda: True)
        try:
            await dataplane.start()
            got = await _run_probes(net, runnable, PROBE_TIMEOUT)
            # Expected-allow probes that got nothing: once more, longer (a loaded host, not a verdict).
            retry = [(i, p) for i, p in runnable if p.expect == "allow" and not got[i]]
            if retry:
                got.update(await _run_probes(net, retry, RETRY_TIMEOUT))
        finally:
            try:
                await dataplane.stop()
            finally:
                net.network.close()
    assert not rules_present(dp_name), "dataplane rules left behind"
    mismatches = []
    for index, probe in runnable:
        verdict = "allow" if got[index] else "deny"
        if verdict != probe.expect:
            evaluator = decide_probe(engine, probe)
            mismatches.append(
                f"probes[{index}] {_end_key(probe.src)} -> {_end_key(probe.dst)} {probe.protocol}/{probe.port}: "
                f"expected {probe.expect}, packets {verdict} (evaluator says {evaluator}: "
                f"egress {evaluator.egress.value}, ingress {evaluator.ingress.value})"
            )
    assert not mismatches, f"{case}: {len(mismatches)} of {len(runnable)} probes differ:\n" + "\n".join(mismatches)
    if not runnable:
        pytest.skip(f"{case}: no probe can run here ({'; '.join(sorted(skipped))})")
    print(f"{case}: {len(runnable)} probes on packets, {len(world.probes) - len(runnable)} skipped {sorted(skipped)}")
