"""The dataplane against the real kernel: pods as network namespaces routed through this host."""

from __future__ import annotations

import asyncio
import errno
import subprocess
import threading
import time

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.dataplane import (
    Backend,
    DataplaneConfig,
    DataplaneError,
    PacketInfo,
    Protocol,
    conntrack,
    ctnetlink,
    detect_backend,
    parse_networks,
)
from kube_ip_tracker.agent.dataplane.rules import RuleSet
from kube_ip_tracker.testing.netns import PodNetwork

from .conftest import DataplaneFactory, iptables_jumps, rules_present

pytestmark = pytest.mark.root

TCP_PORT = 8080
UDP_PORT = 5353


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def allow_all(calls: list[PacketInfo]):
    def decide(packet: PacketInfo) -> bool:
        calls.append(packet)
        return True

    return decide


def deny_all(calls: list[PacketInfo]):
    def decide(packet: PacketInfo) -> bool:
        calls.append(packet)
        return False

    return decide


def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)


def iptables_save() -> str:
    return run("iptables-save", "-t", "security").stdout


def conntrack_entries(src: object, dst: object) -> list[str]:
    out = subprocess.run(
        ["conntrack", "-L", "-s", str(src), "-d", str(dst)], capture_output=True, text=True, check=False
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


async def test_allowed_tcp_and_udp_connect_and_only_first_packets_are_queued(
    net: PodNetwork, make_dataplane: DataplaneFactory, queue_id: int
) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    b.serve_tcp(TCP_PORT)
    udp_server = b.serve_udp(UDP_PORT)
    calls: list[PacketInfo] = []
    dp = make_dataplane(allow_all(calls))
    queued_before = metric("kube_ip_agent_dataplane_packets_queued_total", queue=str(queue_id))
    await dp.start()

    stream = await asyncio.to_thread(a.open_stream, b.ip, TCP_PORT)
    for _ in range(5):
        assert await asyncio.to_thread(stream.exchange, 1.0)
    sock = a.udp_socket(b.ip, UDP_PORT)
    udp_port = sock.getsockname()[1]
    try:
        sock.settimeout(1.0)
        for i in range(5):
            sock.send(b"datagram-%d" % i)
            assert await asyncio.to_thread(sock.recv, 100) == b"datagram-%d" % i
    finally:
        sock.close()

    # Dozens of packets crossed the host in both directions; exactly the two first packets were queued.
    assert [(c.protocol, c.src_ip, c.dst_ip, c.dst_port) for c in calls] == [
        (Protocol.TCP, a.ip, b.ip, TCP_PORT),
        (Protocol.UDP, a.ip, b.ip, UDP_PORT),
    ]
    assert udp_server.received == 5
    assert metric("kube_ip_agent_dataplane_packets_queued_total", queue=str(queue_id)) - queued_before == 2
    ours = [
        line
        for line in conntrack_entries(a.ip, b.ip)
        if f" sport={stream.local_port} " in line or f" sport={udp_port} " in line
    ]
    assert len(ours) == 2 and all(f"mark={dp.config.accepted_ct_mark} " in line for line in ours), ours


async def test_denied_tcp_times_out_and_udp_gets_no_answer(net: PodNetwork, make_dataplane: DataplaneFactory) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    tcp_server = b.serve_tcp(TCP_PORT)
    udp_server = b.serve_udp(UDP_PORT)
    calls: list[PacketInfo] = []
    await make_dataplane(deny_all(calls)).start()

    assert not await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 0.5)
    assert not await asyncio.to_thread(a.udp_probe, b.ip, UDP_PORT, 0.5)
    assert tcp_server.accepted == 0
    assert udp_server.received == 0
    assert {c.protocol for c in calls} == {Protocol.TCP, Protocol.UDP}


async def test_verdicts_follow_the_callback_per_connection(net: PodNetwork, make_dataplane: DataplaneFactory) -> None:
    a, b, c = net.add_pod("a"), net.add_pod("b"), net.add_pod("c")
    b.serve_tcp(TCP_PORT)

    async def decide(packet: PacketInfo) -> bool:  # the async variant
        await asyncio.sleep(0.01)
        return packet.src_ip == a.ip

    await make_dataplane(decide).start()
    assert await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 1.0)
    assert not await asyncio.to_thread(c.tcp_probe, b.ip, TCP_PORT, 0.5)


async def test_not_ready_fail_open_passes_and_rechecks_once_ready(
    net: PodNetwork, make_dataplane: DataplaneFactory, queue_id: int
) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    b.serve_tcp(TCP_PORT)
    ready = threading.Event()
    calls: list[PacketInfo] = []
    passes_before = metric("kube_ip_agent_dataplane_fail_open_passes_total", queue=str(queue_id), reason="not-ready")
    await make_dataplane(deny_all(calls), is_ready=ready.is_set, fail_open=True, revalidate_delay=0.0).start()

    stream = await asyncio.to_thread(a.open_stream, b.ip, TCP_PORT)
    assert await asyncio.to_thread(stream.exchange, 1.0)
    assert await asyncio.to_thread(stream.exchange, 1.0)
    assert calls == []
    passes = metric("kube_ip_agent_dataplane_fail_open_passes_total", queue=str(queue_id), reason="not-ready")
    assert passes - passes_before == 1  # provisionally accepted and marked: later packets stay in the kernel
    ready.set()
    # The provisional connection is re-checked (and cut: deny) within the revalidation retry delay.
    deadline = time.monotonic() + 3
    while await asyncio.to_thread(stream.exchange, 0.3):
        assert time.monotonic() < deadline, "provisional connection never re-checked"
    assert any(c.dst_port == TCP_PORT for c in calls)
    assert not await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 0.5)


async def test_not_ready_fail_closed_drops(net: PodNetwork, make_dataplane: DataplaneFactory) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    b.serve_tcp(TCP_PORT)
    calls: list[PacketInfo] = []
    await make_dataplane(allow_all(calls), is_ready=lambda: False, fail_open=False).start()
    assert not await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 0.5)
    assert calls == []


@pytest.mark.parametrize("fail_open", [True, False])
async def test_full_queue_follows_fail_open(net: PodNetwork, make_dataplane: DataplaneFactory, fail_open: bool) -> None:
    """A slow decision holds the only queue slot; further first packets pass (fail-open) or are dropped."""
    a, b = net.add_pod("a"), net.add_pod("b")
    udp_server = b.serve_udp(UDP_PORT)
    release = asyncio.Event()

    async def slow(packet: PacketInfo) -> bool:
        await release.wait()
        return True

    dp = make_dataplane(slow, fail_open=fail_open, queue_max_len=1, verdict_timeout=5.0)
    await dp.start()
    blocker = a.udp_socket(b.ip, UDP_PORT)
    try:
        blocker.send(b"first")  # queued, waits for the decision
        await asyncio.sleep(0.2)
        answered = await asyncio.gather(*(asyncio.to_thread(a.udp_probe, b.ip, UDP_PORT, 0.5) for _ in range(3)))
    finally:
        release.set()
        blocker.close()
    assert answered == [fail_open] * 3
    if fail_open:
        assert udp_server.received >= 3
    else:
        assert udp_server.received <= 1  # at most the released first datagram


async def test_verdict_timeout_uses_the_default(net: PodNetwork, make_dataplane: DataplaneFactory) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    b.serve_tcp(TCP_PORT)

    async def hangs(packet: PacketInfo) -> bool:
        await asyncio.sleep(30)
        return False

    await make_dataplane(hangs, fail_open=True, verdict_timeout=0.1).start()
    # The decision hangs for 30 s: only the 0.1 s verdict timeout can let the SYN through within 5 s
    # (5 s leaves room for a loaded machine).
    assert await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 5.0)


async def test_rules_gone_after_shutdown(net: PodNetwork, make_dataplane: DataplaneFactory, dp_name: str) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    b.serve_tcp(TCP_PORT)
    dp = make_dataplane(deny_all([]), fail_open=False)
    await dp.start()
    assert rules_present(dp_name)
    assert not await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 0.3)
    await dp.stop()
    assert not rules_present(dp_name)
    assert iptables_jumps(dp_name) == {}
    assert await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 1.0)


async def test_restart_replaces_rules_without_a_gap(
    net: PodNetwork, make_dataplane: DataplaneFactory, dp_name: str
) -> None:
    """Fail-closed and deny-all: any new connection that got through would reveal a moment without rules."""
    a, b = net.add_pod("a"), net.add_pod("b")
    tcp_server = b.serve_tcp(TCP_PORT)
    udp_server = b.serve_udp(UDP_PORT)
    dp = make_dataplane(deny_all([]), fail_open=False)
    await dp.start()
    await dp.stop(remove_rules=False)  # a crash: rules stay, nobody listens on the queue
    assert rules_present(dp_name)

    stop = threading.Event()
    attempts: list[bool] = []
    sent = 0

    def probe_forever() -> None:
        while not stop.is_set():
            attempts.append(a.tcp_probe(b.ip, TCP_PORT, 0.05))

    def blast_udp() -> None:
        # Every dropped datagram leaves no conntrack entry, so each one is a new flow the rules must catch.
        nonlocal sent
        sock = a.udp_socket(b.ip, UDP_PORT)
        try:
            while not stop.is_set():
                sock.send(b"x")
                sent += 1
                time.sleep(0.0005)
        finally:
            sock.close()

    threads = [threading.Thread(target=probe_forever), threading.Thread(target=blast_udp)]
    for thread in threads:
        thread.start()
    try:
        # At least 4 restarts, and more until enough traffic crossed them (a slow machine probes less often).
        restarts = 0
        while restarts < 4 or ((len(attempts) < 10 or sent < 100) and restarts < 100):
            dp = make_dataplane(deny_all([]), fail_open=False)
            await dp.start()
            await asyncio.sleep(0.05)
            await dp.stop(remove_rules=False)
            restarts += 1
    finally:
        stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join)
    assert len(attempts) >= 10
    assert sent >= 100
    assert not any(attempts)
    assert tcp_server.accepted == 0
    assert udp_server.received == 0
    assert iptables_jumps(dp_name) == {"FORWARD": 1, "INPUT": 1, "OUTPUT": 1}


async def test_restart_with_another_queue_id_replaces_the_queue_rule(
    net: PodNetwork, make_dataplane: DataplaneFactory, dp_name: str, queue_id: int
) -> None:
    net.add_pod("a")
    first = make_dataplane(deny_all([]))
    await first.start()
    await first.stop(remove_rules=False)
    second = make_dataplane(deny_all([]), nfqueue_id=queue_id + 1)
    await second.start()
    if second.backend is Backend.IPTABLES:
        saved = await asyncio.to_thread(iptables_save)
        rules = [line for line in saved.splitlines() if line.startswith(f"-A {dp_name.upper()}-QUEUE ")]
        assert len(rules) == 1 and f"--queue-num {queue_id + 1} " in rules[0] + " ", rules
    else:
        listed = (await asyncio.to_thread(run, "nft", "list", "table", "inet", dp_name)).stdout
        assert f"queue to {queue_id + 1}" in listed or f"queue num {queue_id + 1}" in listed


async def test_revalidate_cuts_a_connection_that_is_no_longer_allowed(
    net: PodNetwork, make_dataplane: DataplaneFactory, queue_id: int
) -> None:
    a, b, c = net.add_pod("a"), net.add_pod("b"), net.add_pod("c")
    b.serve_tcp(TCP_PORT)
    denied_sources: set[object] = set()

    def decide(packet: PacketInfo) -> bool:
        return packet.src_ip not in denied_sources

    dp = make_dataplane(decide)
    await dp.start()
    cut = await asyncio.to_thread(a.open_stream, b.ip, TCP_PORT)
    kept = await asyncio.to_thread(c.open_stream, b.ip, TCP_PORT)
    assert await asyncio.to_thread(cut.exchange, 1.0)
    assert await asyncio.to_thread(kept.exchange, 1.0)
    assert (await dp.revalidate()).cleared == 0

    cleared_before = metric("kube_ip_agent_dataplane_conntrack_cleared_total", queue=str(queue_id))
    denied_sources.add(a.ip)
    started = time.monotonic()
    result = await dp.revalidate()
    assert result.outcome == "ok"
    assert result.cleared == 1, conntrack_entries(a.ip, b.ip)
    assert result.checked >= 2
    assert time.monotonic() - started < dp.config.revalidate_timeout
    assert metric("kube_ip_agent_dataplane_conntrack_cleared_total", queue=str(queue_id)) - cleared_before == 1
    assert not await asyncio.to_thread(cut.exchange, 0.5)
    assert await asyncio.to_thread(kept.exchange, 1.0)


async def test_local_pods_update_at_run_time(net: PodNetwork, make_dataplane: DataplaneFactory) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    b.serve_tcp(TCP_PORT)
    dp = make_dataplane(deny_all([]), local_pods=())
    await dp.start()
    assert await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 1.0)  # not a local pod: not enforced
    await dp.set_local_pods([str(b.ip)])
    assert not await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 0.3)
    await dp.set_local_pods([])
    assert await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 1.0)


async def test_backend_detection_matches_the_kernel(dp_name: str, queue_id: int) -> None:
    config = DataplaneConfig(name=dp_name, nfqueue_id=queue_id)
    table = (
        f"table inet {dp_name} {{\n chain c {{\n  type filter hook forward priority filter; policy accept;\n"
        f"  meta l4proto 253 queue num {queue_id}\n }}\n}}\n"
    )
    # Load the rule for real in a throwaway namespace: that is what "the kernel supports nft queue" means.
    probe = PodNetwork(prefix=f"kipb{queue_id % 10000}")
    try:
        pod = probe.add_pod("probe")
        loaded = await asyncio.to_thread(run, "ip", "netns", "exec", pod.netns, "nft", "-f", "-", stdin=table)
    finally:
        probe.close()
    expected = Backend.NFT if loaded.returncode == 0 else Backend.IPTABLES
    assert await detect_backend(config) is expected


async def test_forcing_an_unsupported_backend_fails_cleanly(
    net: PodNetwork, make_dataplane: DataplaneFactory, dp_name: str
) -> None:
    if await detect_backend(DataplaneConfig(name=dp_name)) is Backend.NFT:
        pytest.skip("this kernel supports nft queue")
    net.add_pod("a")
    dp = make_dataplane(deny_all([]), backend="nft")
    with pytest.raises(DataplaneError, match="installing dataplane rules failed"):
        await dp.start()
    assert not dp.running
    assert not rules_present(dp_name)


async def test_requested_revalidation_runs_in_the_background(
    net: PodNetwork, make_dataplane: DataplaneFactory, queue_id: int
) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    b.serve_tcp(TCP_PORT)
    allowed = True
    dp = make_dataplane(lambda packet: allowed, revalidate_delay=0.01)
    await dp.start()
    stream = await asyncio.to_thread(a.open_stream, b.ip, TCP_PORT)
    assert await asyncio.to_thread(stream.exchange, 1.0)
    before = metric("kube_ip_agent_dataplane_conntrack_cleared_total", queue=str(queue_id))
    allowed = False
    for _ in range(5):  # a burst of changes: coalesced into few passes
        dp.request_revalidation()
    deadline = time.monotonic() + 3
    while metric("kube_ip_agent_dataplane_conntrack_cleared_total", queue=str(queue_id)) == before:
        assert time.monotonic() < deadline, "no background revalidation"
        await asyncio.sleep(0.02)
    assert not await asyncio.to_thread(stream.exchange, 0.5)


async def test_kernel_queue_metrics_show_the_bound_queue(make_dataplane: DataplaneFactory, queue_id: int) -> None:
    assert REGISTRY.get_sample_value("kube_ip_agent_dataplane_kernel_queue_length", {"queue": str(queue_id)}) is None
    dp = make_dataplane(deny_all([]))
    await dp.start()
    assert REGISTRY.get_sample_value("kube_ip_agent_dataplane_kernel_queue_dropped", {"queue": str(queue_id)}) == 0.0
    await dp.stop()
    assert REGISTRY.get_sample_value("kube_ip_agent_dataplane_kernel_queue_length", {"queue": str(queue_id)}) is None


async def test_host_to_pod_and_pod_to_host_are_enforced(net: PodNetwork, make_dataplane: DataplaneFactory) -> None:
    """Traffic between the node itself and a local pod crosses OUTPUT/INPUT instead of FORWARD."""
    a = net.add_pod("a")
    host = net.host
    assert host is not None
    a.serve_tcp(TCP_PORT)
    host.serve_tcp(TCP_PORT + 1)
    calls: list[PacketInfo] = []

    def decide(packet: PacketInfo) -> bool:
        calls.append(packet)
        return packet.dst_port == TCP_PORT  # host -> pod allowed, pod -> host denied

    await make_dataplane(decide).start()
    assert await asyncio.to_thread(host.tcp_probe, a.ip, TCP_PORT, 1.0)
    assert not await asyncio.to_thread(a.tcp_probe, host.ip, TCP_PORT + 1, 0.5)
    assert (calls[0].src_ip, calls[0].dst_ip) == (host.ip, a.ip)
    assert (calls[1].src_ip, calls[1].dst_ip) == (a.ip, host.ip)


async def test_a_second_dataplane_on_a_bound_queue_fails_without_touching_rules(
    net: PodNetwork, make_dataplane: DataplaneFactory, dp_name: str, queue_id: int
) -> None:
    net.add_pod("a")
    first = make_dataplane(deny_all([]))
    await first.start()
    before = iptables_jumps(dp_name)
    second = make_dataplane(deny_all([]), name=dp_name + "x")
    with pytest.raises(DataplaneError, match=f"NFQUEUE {queue_id}"):
        await second.start()
    assert not rules_present(dp_name + "x")
    assert iptables_jumps(dp_name) == before


async def test_nft_backend_table_is_valid_for_nft(dp_name: str, queue_id: int) -> None:
    """``nft -c`` checks the nft-backend table (verdict cache included) against the kernel without loading it.

    On kernels without the nft queue expression only the queue statement may be refused.
    """
    config = DataplaneConfig(
        name=dp_name,
        nfqueue_id=queue_id,
        local_pods=parse_networks(["10.244.9.0/24", "fd00::9"]),
        verdict_cache_size=1024,
    )
    text = RuleSet(config, Backend.NFT).nft_replace(config.local_pods)
    checked = await asyncio.to_thread(run, "nft", "-c", "-f", "-", stdin=text)
    if checked.returncode != 0:
        errors = [line for line in checked.stderr.splitlines() if "Error" in line]
        assert errors and all("Could not process rule" in line for line in errors), checked.stderr
        assert await detect_backend(config) is Backend.IPTABLES
        failing_lines = {int(line.split(":")[1]) for line in errors}
        assert all("queue num" in text.splitlines()[n - 1] for n in failing_lines), checked.stderr
    assert not rules_present(dp_name)


async def test_queue_error_rebinds_and_keeps_deciding(
    net: PodNetwork, make_dataplane: DataplaneFactory, queue_id: int
) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    b.serve_tcp(TCP_PORT)
    calls: list[PacketInfo] = []
    dp = make_dataplane(allow_all(calls), fail_open=False)
    await dp.start()
    assert await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 1.0)
    rebinds_before = metric("kube_ip_agent_dataplane_queue_errors_total", queue=str(queue_id), kind="recv")
    dp._on_queue_error(OSError(105, "No buffer space available"))  # what a failing recv reports
    for _ in range(100):
        if dp._rebind_task is not None and dp._rebind_task.done():
            break
        await asyncio.sleep(0.02)
    assert metric("kube_ip_agent_dataplane_queue_errors_total", queue=str(queue_id), kind="recv") == rebinds_before + 1
    assert await asyncio.to_thread(a.tcp_probe, b.ip, TCP_PORT, 1.0)  # fail-closed: only a live queue lets it in
    assert len(calls) == 2


async def test_revalidation_loop_retries_until_ready(
    net: PodNetwork, make_dataplane: DataplaneFactory, queue_id: int
) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    b.serve_tcp(TCP_PORT)
    ready = threading.Event()
    ready.set()
    allowed = True
    dp = make_dataplane(lambda packet: allowed, is_ready=ready.is_set, revalidate_delay=0.0)
    await dp.start()
    stream = await asyncio.to_thread(a.open_stream, b.ip, TCP_PORT)
    assert await asyncio.to_thread(stream.exchange, 1.0)
    ready.clear()
    allowed = False
    not_ready_before = metric("kube_ip_agent_dataplane_revalidations_total", queue=str(queue_id), outcome="not-ready")
    dp.request_revalidation()
    await asyncio.sleep(0.1)
    assert (
        metric("kube_ip_agent_dataplane_revalidations_total", queue=str(queue_id), outcome="not-ready")
        > not_ready_before
    )
    assert metric("kube_ip_agent_dataplane_revalidation_retry_seconds", queue=str(queue_id)) > 0
    ready.set()  # the retry (after 0.1-0.2s of backoff) now cuts the stream
    deadline = time.monotonic() + 3
    while metric("kube_ip_agent_dataplane_revalidation_retry_seconds", queue=str(queue_id)) > 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert not await asyncio.to_thread(stream.exchange, 0.5)


async def test_reapplying_rules_never_lets_a_packet_slip_through(
    net: PodNetwork, make_dataplane: DataplaneFactory, dp_name: str
) -> None:
    """Fail-closed, deny-all, a UDP flow whose every datagram is new: 30 rule syncs must not let one pass."""
    a, b = net.add_pod("a"), net.add_pod("b")
    udp_server = b.serve_udp(UDP_PORT)
    dp = make_dataplane(deny_all([]), fail_open=False)
    await dp.start()
    stop = threading.Event()
    sent = 0

    def blast_udp() -> None:
        nonlocal sent
        sock = a.udp_socket(b.ip, UDP_PORT)
        try:
            while not stop.is_set():
                sock.send(b"x")
                sent += 1
                time.sleep(0.0002)
        finally:
            sock.close()

    blaster = threading.Thread(target=blast_udp)
    blaster.start()
    try:
        for _ in range(30):
            await dp.sync_rules()
    finally:
        stop.set()
        await asyncio.to_thread(blaster.join)
    assert sent >= 200
    assert udp_server.received == 0
    assert iptables_jumps(dp_name) == {"FORWARD": 1, "INPUT": 1, "OUTPUT": 1}


async def test_ctnetlink_deletes_entries_in_one_batch(
    net: PodNetwork, make_dataplane: DataplaneFactory, queue_id: int
) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    b.serve_udp(UDP_PORT)
    dp = make_dataplane(allow_all([]))
    await dp.start()
    for _ in range(3):  # three flows (fresh source ports)
        assert await asyncio.to_thread(a.udp_probe, b.ip, UDP_PORT, 1.0)
    entries = [
        e
        for e in await conntrack.list_marked(dp.config.accepted_ct_mark, ["ipv4"], 5.0)
        if e.src == a.ip and e.dst == b.ip
    ]
    assert len(entries) == 3
    errors_before = metric("kube_ip_agent_dataplane_queue_errors_total", queue=str(queue_id), kind="ctnetlink")
    results = await asyncio.to_thread(ctnetlink.delete_entries, entries, 2.0)
    assert set(results.values()) == {0}
    assert conntrack_entries(a.ip, b.ip) == []
    again = await asyncio.to_thread(ctnetlink.delete_entries, entries, 2.0)
    assert set(again.values()) == {errno.ENOENT}
    assert metric("kube_ip_agent_dataplane_queue_errors_total", queue=str(queue_id), kind="ctnetlink") == errors_before


async def test_other_firewall_rules_still_see_first_packets(net: PodNetwork, make_dataplane: DataplaneFactory) -> None:
    """An accept verdict must not skip other filter rules: the host's own iptables DROP still applies."""
    a, b = net.add_pod("a"), net.add_pod("b")
    dropped_server = b.serve_udp(UDP_PORT)
    b.serve_udp(UDP_PORT + 1)
    calls: list[PacketInfo] = []
    await make_dataplane(allow_all(calls)).start()
    drop = ["FORWARD", "-s", str(a.ip), "-d", str(b.ip), "-p", "udp", "--dport", str(UDP_PORT), "-j", "DROP"]
    added = await asyncio.to_thread(run, "iptables", "-A", *drop)
    assert added.returncode == 0, added.stderr
    try:
        assert not await asyncio.to_thread(a.udp_probe, b.ip, UDP_PORT, 0.5)
        assert await asyncio.to_thread(a.udp_probe, b.ip, UDP_PORT + 1, 1.0)
    finally:
        await asyncio.to_thread(run, "iptables", "-D", *drop)
    assert dropped_server.received == 0
    # The agent was asked about the allowed flow (the dropped one too with nft, whose queue runs before filter).
    assert UDP_PORT + 1 in [c.dst_port for c in calls]
