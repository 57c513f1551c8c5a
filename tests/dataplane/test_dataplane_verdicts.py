"""Verdict logic of the Dataplane with fake queued packets (no kernel, no root)."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

from prometheus_client import REGISTRY

from kube_ip_tracker.agent.dataplane import Dataplane, DataplaneConfig, PacketInfo, Protocol
from kube_ip_tracker.agent.dataplane.nfq import NF_ACCEPT, NF_DROP, NF_REPEAT

VERDICT = DataplaneConfig().verdict_mark


def tcp_syn(src: str = "10.244.1.2", dst: str = "10.244.1.3", dport: int = 80) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)  # fmt: skip
    return ip + struct.pack("!HH", 40000, dport) + b"\0" * 16


NAMES = {NF_ACCEPT: "accept", NF_DROP: "drop", NF_REPEAT: "repeat"}


class FakePacket:
    """Stands in for a queued packet of an unbound dataplane, which answers itself; records the verdict."""

    def __init__(self, payload: bytes, mark: int = 0x01000000) -> None:
        self.payload = payload
        self.mark = mark
        self.verdicts: list[str] = []

    def get_payload(self) -> bytes:
        return self.payload

    def verdict(self, verdict: int, mark: int | None) -> None:
        self.verdicts.append(NAMES[verdict])
        if mark is not None:
            self.mark = mark


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make(decide, ready=True, **config: object) -> Dataplane:  # type: ignore[no-untyped-def]
    settings: dict[str, object] = {"nfqueue_id": 61001}
    settings.update(config)
    return Dataplane(DataplaneConfig(**settings), decide, lambda: ready)  # type: ignore[arg-type]


async def test_allow_accepts_with_the_verdict_mark_and_deny_drops() -> None:
    seen: list[PacketInfo] = []

    def decide(packet: PacketInfo) -> bool:
        seen.append(packet)
        return packet.dst_port == 80

    dp = make(decide)
    allowed, denied = FakePacket(tcp_syn(dport=80)), FakePacket(tcp_syn(dport=81), mark=0)
    dp.handle_packet(allowed)
    dp.handle_packet(denied)
    assert allowed.verdicts == ["accept"] and allowed.mark == 0x01000000 | VERDICT
    assert denied.verdicts == ["drop"] and denied.mark == 0
    assert [(p.protocol, p.dst_port) for p in seen] == [(Protocol.TCP, 80), (Protocol.TCP, 81)]


async def test_not_ready_accepts_provisionally_when_fail_open_and_drops_when_closed() -> None:
    calls: list[PacketInfo] = []
    open_packet, closed_packet = FakePacket(tcp_syn()), FakePacket(tcp_syn())
    before = counter("kube_ip_agent_dataplane_fail_open_passes_total", queue="61001", reason="not-ready")
    make(calls.append, ready=False, fail_open=True).handle_packet(open_packet)
    make(calls.append, ready=False, fail_open=False).handle_packet(closed_packet)
    assert open_packet.verdicts == ["accept"] and open_packet.mark & VERDICT  # provisional, re-checked when ready
    assert closed_packet.verdicts == ["drop"]
    assert calls == []
    assert counter("kube_ip_agent_dataplane_fail_open_passes_total", queue="61001", reason="not-ready") == before + 1


async def test_decide_errors_and_garbage_get_the_default_verdict() -> None:
    def broken(packet: PacketInfo) -> bool:
        raise KeyError("no such pod")

    errors_before = counter("kube_ip_agent_dataplane_queue_errors_total", queue="61001", kind="decide")
    failing_open, failing_closed, garbage = FakePacket(tcp_syn()), FakePacket(tcp_syn()), FakePacket(b"\x99junk")
    make(broken, fail_open=True).handle_packet(failing_open)
    make(broken, fail_open=False).handle_packet(failing_closed)
    make(lambda p: True, fail_open=False).handle_packet(garbage)
    assert failing_open.verdicts == ["accept"] and not failing_open.mark & VERDICT
    assert failing_closed.verdicts == ["drop"]
    assert garbage.verdicts == ["drop"]
    assert counter("kube_ip_agent_dataplane_queue_errors_total", queue="61001", kind="decide") == errors_before + 2


async def test_async_decisions_are_awaited_and_time_out_to_the_default() -> None:
    gate = asyncio.Event()

    async def decide(packet: PacketInfo) -> bool:
        if packet.dst_port == 80:
            return True
        await gate.wait()
        return True

    dp = make(decide, fail_open=False, verdict_timeout=0.05)
    quick, slow = FakePacket(tcp_syn(dport=80)), FakePacket(tcp_syn(dport=81))
    dp.handle_packet(quick)
    dp.handle_packet(slow)
    assert quick.verdicts == [] and slow.verdicts == []  # nothing decided synchronously
    await asyncio.sleep(0.2)
    assert quick.verdicts == ["accept"] and quick.mark & VERDICT
    assert slow.verdicts == ["drop"]


async def test_shutdown_answers_every_pending_packet_exactly_once() -> None:
    async def never(packet: PacketInfo) -> bool:
        await asyncio.Event().wait()
        return True

    dp = make(never, fail_open=True, verdict_timeout=10)
    packets = [FakePacket(tcp_syn(dport=1000 + i)) for i in range(5)]
    for packet in packets:
        dp.handle_packet(packet)
    await asyncio.sleep(0)
    await dp.stop(remove_rules=False)  # never started: only the pending verdicts matter
    await asyncio.sleep(0.01)
    assert [p.verdicts for p in packets] == [["accept"]] * 5
    assert all(not p.mark & VERDICT for p in packets)


async def test_verdict_objects_count_by_their_allowed_field_and_other_results_are_errors() -> None:
    from kube_ip_tracker.agent.policy.evaluator import Reason, Verdict

    denied_verdict = FakePacket(tcp_syn())
    make(lambda p: Verdict(False, Reason.DENIED, Reason.NOT_ISOLATED)).handle_packet(denied_verdict)
    assert denied_verdict.verdicts == ["drop"]  # a Verdict object is truthy; its allowed field decides
    allowed_verdict = FakePacket(tcp_syn())
    make(lambda p: Verdict(True, Reason.ALLOWED, Reason.NOT_A_POD)).handle_packet(allowed_verdict)
    assert allowed_verdict.verdicts == ["accept"] and allowed_verdict.mark & VERDICT
    wrong_type = FakePacket(tcp_syn())
    make(lambda p: "yes", fail_open=False).handle_packet(wrong_type)
    assert wrong_type.verdicts == ["drop"]


def decision_count() -> float:
    return counter("kube_ip_agent_dataplane_decision_seconds_count", queue="61001")


async def test_the_decision_histogram_counts_every_queued_packet() -> None:
    """Decided at once, after an awaited decision, on the verdict timeout, on an error or garbage, at shutdown."""
    gate = asyncio.Event()

    async def waits(packet: PacketInfo) -> bool:
        if packet.dst_port == 80:
            await gate.wait()
            return True
        await asyncio.Event().wait()
        return True

    before = decision_count()
    make(lambda p: True).handle_packet(FakePacket(tcp_syn()))
    make(lambda p: True).handle_packet(FakePacket(b"\x99junk"))
    assert decision_count() == before + 2
    dp = make(waits, fail_open=False, verdict_timeout=0.05)
    awaited, timed_out = FakePacket(tcp_syn(dport=80)), FakePacket(tcp_syn(dport=81))
    dp.handle_packet(awaited)
    dp.handle_packet(timed_out)
    gate.set()
    await asyncio.sleep(0.2)
    assert awaited.verdicts == ["accept"] and timed_out.verdicts == ["drop"]
    assert decision_count() == before + 4
    stopped = make(waits, fail_open=False, verdict_timeout=10)
    left = FakePacket(tcp_syn(dport=82))
    stopped.handle_packet(left)
    await asyncio.sleep(0)
    await stopped.stop(remove_rules=False)
    assert left.verdicts == ["drop"] and decision_count() == before + 5
    buckets = [
        counter("kube_ip_agent_dataplane_decision_seconds_bucket", queue="61001", le=le) for le in ("2e-05", "+Inf")
    ]
    assert buckets[0] <= buckets[1] == decision_count()
