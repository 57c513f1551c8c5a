"""IPv6 and dual-stack pods (network namespaces) through the real dataplane: ip6tables/nft queue the
first packets, verdicts and revalidation work on IPv6 connections, and the NetworkPolicy evaluator
gives a dual-stack pod the same verdict over both families."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator

import pytest

from kube_ip_tracker.agent.dataplane import Backend, PacketInfo, Protocol, parse_networks
from kube_ip_tracker.agent.policy.evaluator import PolicyEngine
from kube_ip_tracker.agent.policy.parse import parse_network_policy
from kube_ip_tracker.model import NamespaceRecord, PodRecord
from kube_ip_tracker.testing.netns import Pod, PodNetwork

from .conftest import DataplaneFactory
from .test_dataplane_policy_root import db_policy, engine_decide

pytestmark = pytest.mark.root

PORT = 8080
CLUSTER = "c1"
NAMESPACE = "shop"
SUBNET6 = "fd00:10:244::/64"
NOBODY6 = "fd00:10:245::/64"  # a routable-nowhere IPv6 block no test pod is in


@pytest.fixture
def net() -> Iterator[PodNetwork]:
    """A dual-stack pod network (IPv4 subnet with a host address, plus an IPv6 subnet); replaces conftest's."""
    with PodNetwork(host_address=True, extra_subnets=[SUBNET6]) as network:
        yield network


def dual_stack(net: PodNetwork, name: str) -> Pod:
    return net.add_pod(name, extra_ips=[net.next_ip(6)])


def all_ips(net: PodNetwork) -> list[str]:
    return [str(ip) for pod in net.pods for ip in pod.ips]


def ip6tables_security() -> str:
    return subprocess.run(["ip6tables-save", "-t", "security"], capture_output=True, text=True, check=True).stdout


def test_ipv6_pods_reach_each_other_with_no_tentative_address() -> None:
    """Without the dataplane: IPv6 pods reach each other (all.forwarding is on while a network lives)."""
    path = "/proc/sys/net/ipv6/conf/all/forwarding"
    with PodNetwork(SUBNET6) as network:
        a, b = network.add_pod("a"), network.add_pod("b")
        assert a.ip.version == 6
        with open(path) as handle:
            assert handle.read().strip() == "1"
        b.serve_tcp(PORT)
        b.serve_udp(PORT)
        assert a.tcp_probe(b.ip, PORT, 2.0)
        assert a.udp_probe(b.ip, PORT, 2.0)
        tentative = a.exec("ip", "-6", "addr", "show", "tentative").stdout
        assert not tentative.strip(), f"tentative addresses left: {tentative}"
    # What other PodNetworks on this host hold is theirs: only check our own network is gone.
    assert not network.pods and not network.host


async def test_ipv6_first_packets_are_queued_decided_and_revalidated(
    net: PodNetwork, make_dataplane: DataplaneFactory, dp_name: str, queue_id: int
) -> None:
    a, b = net.add_pod("a", ip=str(net.next_ip(6))), net.add_pod("b", ip=str(net.next_ip(6)))
    for port in (PORT, PORT + 1):
        b.serve_tcp(port)
    b.serve_udp(PORT)
    assert await asyncio.to_thread(a.tcp_probe, b.ip, PORT + 1, 2.0), "IPv6 pods connect without the dataplane"
    calls: list[PacketInfo] = []
    allowed_ports = {PORT}

    def decide(packet: PacketInfo) -> bool:
        calls.append(packet)
        return packet.dst_port in allowed_ports

    dp = make_dataplane(decide, fail_open=False)
    await dp.start()
    if dp.backend is Backend.IPTABLES:
        saved = ip6tables_security()
        chain = f"{dp_name.upper()}-QUEUE"
        assert f"--queue-num {queue_id}" in saved
        assert all(f"-A {hook} -j {chain}" in saved for hook in ("FORWARD", "INPUT", "OUTPUT")), saved

    stream = await asyncio.to_thread(a.open_stream, b.ip, PORT)
    for _ in range(3):
        assert await asyncio.to_thread(stream.exchange, 1.0)
    assert await asyncio.to_thread(a.udp_probe, b.ip, PORT, 1.0)  # decided by port only: UDP too
    assert not await asyncio.to_thread(a.tcp_probe, b.ip, PORT + 1, 0.5)
    tcp_calls = [c for c in calls if c.dst_port == PORT and c.protocol is Protocol.TCP]
    assert len(tcp_calls) == 1, "only the first packet of the IPv6 connection is queued"
    assert (tcp_calls[0].src_ip, tcp_calls[0].dst_ip) == (a.ip, b.ip)

    allowed_ports.clear()  # now nothing is allowed: revalidation cuts the open IPv6 connection
    result = await dp.revalidate()
    assert result.cleared >= 1
    assert not await asyncio.to_thread(stream.exchange, 0.5)


def record(pod: Pod, app: str) -> PodRecord:
    return PodRecord(CLUSTER, NAMESPACE, pod.name, {"app": app}, (), "node-1", tuple(str(ip) for ip in pod.ips))


def ingress_policy(peers: list[dict[str, object]]) -> dict[str, object]:
    """Ingress to app=db on TCP ``PORT`` from ``peers``."""
    manifest = db_policy("web")
    manifest["spec"]["ingress"][0].update({"from": peers, "ports": [{"protocol": "TCP", "port": PORT}]})  # type: ignore[index]
    return manifest


async def reaches(src: Pod, dst: Pod, version: int, wait: float) -> bool:
    return await asyncio.to_thread(src.tcp_probe, dst.ip_of(version), PORT, wait)


async def test_evaluator_enforces_ipv6_ip_blocks_and_dual_stack_pods(
    net: PodNetwork, make_dataplane: DataplaneFactory
) -> None:
    web, db, other = dual_stack(net, "web"), dual_stack(net, "db"), dual_stack(net, "other")
    for ip in db.ips:
        db.serve_tcp(PORT, ip)
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(CLUSTER, NAMESPACE, {}))
    for pod, app in ((web, "web"), (db, "db"), (other, "other")):
        engine.set_pod(record(pod, app))
    engine.set_policy(parse_network_policy(ingress_policy([{"ipBlock": {"cidr": NOBODY6}}]), CLUSTER))
    dp = make_dataplane(engine_decide(engine), local_pods=parse_networks(all_ips(net)))
    await dp.start()

    # Deny: db is isolated and no IPv6 block admits web.
    assert not await reaches(web, db, 6, 0.5)

    # Allow: an IPv6 block holding web but excepting other. It admits web over IPv6 only (the block
    # says nothing of web's IPv4 address); other stays denied.
    block = {"cidr": SUBNET6, "except": [f"{other.ip_of(6)}/128"]}
    engine.set_policy(parse_network_policy(ingress_policy([{"ipBlock": block}]), CLUSTER))
    assert await reaches(web, db, 6, 2.0)
    assert not await reaches(other, db, 6, 0.5)
    assert not await reaches(web, db, 4, 0.5)

    # A pod selector: the dual-stack pod web gets the same verdict over both families, and so does other.
    engine.set_policy(parse_network_policy(ingress_policy([{"podSelector": {"matchLabels": {"app": "web"}}}]), CLUSTER))
    await dp.revalidate()
    verdicts = {
        (src.name, version): await reaches(src, db, version, 1.0 if src is web else 0.5)
        for src in (web, other)
        for version in (4, 6)
    }
    assert verdicts == {("web", 4): True, ("web", 6): True, ("other", 4): False, ("other", 6): False}


async def test_neighbour_discovery_is_never_queued_so_denials_do_not_cut_a_pod_off(
    net: PodNetwork, make_dataplane: DataplaneFactory
) -> None:
    """IPv6 pods resolve their gateway with ICMPv6 neighbour discovery (conntrack leaves it untracked,
    and its source is the pod's address): the rules let it pass, so a policy that denies a pod's
    other traffic does not also break the allowed connections."""
    a, b = net.add_pod("a", ip=str(net.next_ip(6))), net.add_pod("b", ip=str(net.next_ip(6)))
    b.serve_tcp(PORT)
    # Pod a resolves its gateway dynamically: the host answers for fe80::1 on a's veth.
    await asyncio.to_thread(subprocess.run, ["ip", "addr", "add", "fe80::1/64", "dev", a.host_if, "nodad"], check=True)
    a.exec("ip", "-6", "neigh", "del", "fe80::1", "dev", "eth0")
    assert await asyncio.to_thread(a.tcp_probe, b.ip, PORT, 3.0), "dynamic resolution works without the dataplane"
    a.exec("ip", "-6", "neigh", "del", "fe80::1", "dev", "eth0")  # resolve it again, through the rules
    calls: list[PacketInfo] = []

    def decide(packet: PacketInfo) -> bool:
        calls.append(packet)
        return packet.protocol is Protocol.TCP and packet.dst_port == PORT

    dp = make_dataplane(decide, fail_open=False)
    await dp.start()
    assert await asyncio.to_thread(a.tcp_probe, b.ip, PORT, 3.0), calls
    neighbour = a.exec("ip", "-6", "neigh", "show", "fe80::1", "dev", "eth0").stdout
    assert "lladdr" in neighbour and "PERMANENT" not in neighbour, neighbour
    assert [c for c in calls if c.protocol is not Protocol.TCP] == [], "neighbour discovery reached the agent"


def nft_list_set(table: str, name: str) -> str:
    return subprocess.run(
        ["nft", "list", "set", "inet", table, name], capture_output=True, text=True, check=True
    ).stdout


async def test_ipv6_repeated_tuples_are_decided_from_the_verdict_cache(
    net: PodNetwork, make_dataplane: DataplaneFactory, dp_name: str
) -> None:
    a, b = dual_stack(net, "a"), dual_stack(net, "b")
    b.serve_tcp(PORT, ip=b.ip_of(6))
    calls: list[PacketInfo] = []
    allowed = True

    def decide(packet: PacketInfo) -> bool:
        calls.append(packet)
        return allowed

    dp = make_dataplane(decide, local_pods=parse_networks(all_ips(net)), verdict_cache_size=128, fail_open=False)
    await dp.start()
    for _ in range(3):
        assert await asyncio.to_thread(a.tcp_probe, b.ip_of(6), PORT, 1.0)
    assert len(calls) == 1, "repeated IPv6 tuples are decided in the kernel"
    listed = await asyncio.to_thread(nft_list_set, dp_name, "verdicts6")
    assert str(a.ip_of(6)) in listed, listed
    allowed = False
    dp.invalidate_verdicts()
    assert not await asyncio.to_thread(a.tcp_probe, b.ip_of(6), PORT, 0.5)
