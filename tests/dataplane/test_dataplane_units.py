"""Dataplane pieces that need no privileges: packet parsing, rule texts, conntrack output, config."""

from __future__ import annotations

import argparse
import ipaddress
import struct

import pytest

from kube_ip_tracker.agent.dataplane import (
    Backend,
    ConfigError,
    DataplaneConfig,
    PacketParseError,
    Protocol,
    add_arguments,
    config_from_args,
    parse_networks,
    parse_packet,
)
from kube_ip_tracker.agent.dataplane.conntrack import parse_line
from kube_ip_tracker.agent.dataplane.metrics import read_kernel_queues
from kube_ip_tracker.agent.dataplane.nfq import NF_ACCEPT, NF_DROP, NF_REPEAT, config_flags_message, verdict_message
from kube_ip_tracker.agent.dataplane.rules import RuleSet, parse_iptables_save


def ipv4(proto: int, payload: bytes, src: str = "10.0.0.1", dst: str = "10.0.0.2", frag: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        1,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + payload


def ipv6(next_header: int, payload: bytes, src: str = "fd00::1", dst: str = "fd00::2") -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
                         ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)  # fmt: skip
    return header + payload


def test_parse_ipv4_tcp_udp_sctp_and_other() -> None:
    tcp = parse_packet(ipv4(6, struct.pack("!HH", 40000, 80) + b"\0" * 16))
    assert (str(tcp.src_ip), str(tcp.dst_ip), tcp.protocol, tcp.src_port, tcp.dst_port) == (
        "10.0.0.1",
        "10.0.0.2",
        Protocol.TCP,
        40000,
        80,
    )
    assert parse_packet(ipv4(17, struct.pack("!HH", 53, 5353) + b"\0" * 4)).protocol is Protocol.UDP
    assert parse_packet(ipv4(132, struct.pack("!HH", 1, 2) + b"\0" * 8)).dst_port == 2
    icmp = parse_packet(ipv4(1, b"\x08\0\0\0\0\0\0\0"))
    assert (icmp.protocol, icmp.src_port, icmp.dst_port, icmp.protocol_number) == (Protocol.OTHER, None, None, 1)
    assert str(tcp) == "TCP 10.0.0.1:40000 -> 10.0.0.2:80"


def test_parse_ipv4_later_fragment_has_no_ports() -> None:
    later = parse_packet(ipv4(6, struct.pack("!HH", 1, 2) + b"\0" * 16, frag=0x0010))
    assert later.protocol is Protocol.TCP and later.src_port is None


def test_parse_ipv6_with_extension_headers() -> None:
    plain = parse_packet(ipv6(17, struct.pack("!HH", 1000, 53) + b"\0" * 4))
    assert (str(plain.src_ip), plain.protocol, plain.dst_port) == ("fd00::1", Protocol.UDP, 53)
    hop_by_hop = bytes([6, 0]) + b"\0" * 6  # next header TCP, 8 bytes long
    tcp = parse_packet(ipv6(0, hop_by_hop + struct.pack("!HH", 1234, 443) + b"\0" * 16))
    assert (tcp.protocol, tcp.src_port, tcp.dst_port) == (Protocol.TCP, 1234, 443)
    later_fragment = bytes([6, 0]) + struct.pack("!H", 8 << 3) + b"\0" * 4
    assert parse_packet(ipv6(44, later_fragment + b"\0" * 20)).dst_port is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x45" + b"\0" * 10, "shorter than its 20-byte header"),
        (b"\x4f" + b"\0" * 30, "header length 60"),
        (b"\x60" + b"\0" * 20, "shorter than its 40-byte header"),
        (b"\x20" + b"\0" * 40, "IP version 2"),
    ],
)
def test_parse_rejects_garbage(data: bytes, message: str) -> None:
    with pytest.raises(PacketParseError, match=message):
        parse_packet(data)


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="--nfqueue-id"):
        DataplaneConfig(nfqueue_id=70000)
    with pytest.raises(ConfigError, match="queue_mark must be a single bit"):
        DataplaneConfig(queue_mark=3)
    with pytest.raises(ConfigError, match="must differ"):
        DataplaneConfig(queue_mark=1, verdict_mark=1)
    with pytest.raises(ConfigError, match="'not-a-cidr'"):
        parse_networks(["10.0.0.0/8", "not-a-cidr"])
    with pytest.raises(ConfigError, match="name"):
        DataplaneConfig(name="Bad Name")
    with pytest.raises(ConfigError, match="parse_networks"):
        DataplaneConfig(local_pods=("10.0.0.1",))  # type: ignore[arg-type]


def test_flags_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--nfqueue-id", "7", "--no-fail-open", "--pod-cidr", "10.244.1.0/24", "--pod-cidr", "fd00::5"]
    )
    config = config_from_args(args)
    assert (config.nfqueue_id, config.fail_open) == (7, False)
    assert [str(n) for n in config.local_pods] == ["10.244.1.0/24", "fd00::5/128"]
    assert config_from_args(parser.parse_args([])).fail_open is True


def test_nft_table_text() -> None:
    config = DataplaneConfig(nfqueue_id=9, local_pods=parse_networks(["10.244.1.0/25", "10.244.1.128/25", "fd00::1"]))
    iptables_text = RuleSet(config, Backend.IPTABLES).nft_replace(config.local_pods)
    assert iptables_text.startswith(
        "table inet kube-ip-agent\ndelete table inet kube-ip-agent\ntable inet kube-ip-agent {"
    )
    assert "elements = { 10.244.1.0/24 }" in iptables_text  # collapsed
    assert "elements = { fd00::1/128 }" in iptables_text
    assert "ct mark & 0x01000000 == 0x01000000 accept" in iptables_text
    assert "meta mark set meta mark | 0x01000000" in iptables_text
    assert "queue" not in iptables_text
    for hook in ("forward", "input", "output"):
        assert f"type filter hook {hook} priority filter - 5;" in iptables_text
        assert f"type filter hook {hook} priority filter + 200;" in iptables_text
    nft_text = RuleSet(config, Backend.NFT).nft_table([])
    assert "queue num 9 bypass" in nft_text and "elements" not in nft_text
    closed = RuleSet(DataplaneConfig(nfqueue_id=9, fail_open=False), Backend.NFT).nft_table([])
    assert "queue num 9\n" in closed


def test_iptables_install_keeps_one_jump_per_hook() -> None:
    rules = RuleSet(DataplaneConfig(nfqueue_id=3, fail_open=False), Backend.IPTABLES)
    text = rules.iptables_install({"FORWARD": 1, "INPUT": 3})
    lines = text.splitlines()
    assert lines[0] == "*security" and lines[-1] == "COMMIT"
    assert ":KUBE-IP-AGENT-QUEUE - [0:0]" in lines
    assert any(line.endswith("-j NFQUEUE --queue-num 3") for line in lines)
    assert "-I FORWARD 1 -j KUBE-IP-AGENT-QUEUE" not in lines
    assert lines.count("-D INPUT -j KUBE-IP-AGENT-QUEUE") == 2
    assert "-I OUTPUT 1 -j KUBE-IP-AGENT-QUEUE" in lines
    removal = rules.iptables_remove({"FORWARD": 1}).splitlines()
    assert removal == ["*security", "-D FORWARD -j KUBE-IP-AGENT-QUEUE", "-F KUBE-IP-AGENT-QUEUE",
                       "-X KUBE-IP-AGENT-QUEUE", "COMMIT"]  # fmt: skip


def test_parse_iptables_save() -> None:
    saved = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:KUBE-IP-AGENT-QUEUE - [0:0]
-A FORWARD -j KUBE-IP-AGENT-QUEUE
-A FORWARD -j KUBE-IP-AGENT-QUEUE
-A FORWARD -s 10.0.0.0/8 -j KUBE-IP-AGENT-QUEUE
-A INPUT -j KUBE-IP-AGENT-QUEUE-OTHER
COMMIT
"""
    assert parse_iptables_save(saved, "KUBE-IP-AGENT-QUEUE") == (True, {"FORWARD": 2})
    assert parse_iptables_save("*filter\nCOMMIT\n", "KUBE-IP-AGENT-QUEUE") == (False, {})


def test_parse_conntrack_lines() -> None:
    tcp = parse_line(
        "tcp      6 431999 ESTABLISHED src=10.244.1.2 dst=10.244.1.3 sport=39372 dport=8080 "
        "src=10.244.1.3 dst=10.244.1.2 sport=8080 dport=39372 [ASSURED] mark=16777216 use=1",
        "ipv4",
    )
    assert tcp is not None
    assert (str(tcp.src), str(tcp.dst), tcp.sport, tcp.dport, tcp.mark) == (
        "10.244.1.2",
        "10.244.1.3",
        39372,
        8080,
        1 << 24,
    )
    assert tcp.packet.protocol is Protocol.TCP
    argv = tcp.delete_argv()
    assert argv[:6] == ["conntrack", "-D", "-f", "ipv4", "-p", "6"]
    assert argv[-2:] == ["--mark", str(1 << 24)]
    icmp = parse_line(
        "icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=7 mark=1 use=1",
        "ipv4",
    )
    assert icmp is not None and icmp.sport is None and "--sport" not in icmp.delete_argv()
    assert parse_line("conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.", "ipv4") is None
    assert parse_line("tcp 6 1 src=bogus dst=10.0.0.1", "ipv4") is None


def test_fail_open_config_message_layout() -> None:
    message = config_flags_message(queue_num=300, flags=1, mask=1, seq=5)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", message)
    assert (length, kind, flags, seq, pid) == (len(message), (3 << 8) | 2, 1, 5, 0)
    assert struct.unpack_from("!BBH", message, 16) == (0, 0, 300)
    # Two 8-byte attributes: NFQA_CFG_MASK (4) then NFQA_CFG_FLAGS (5), values big-endian.
    assert struct.unpack_from("=HH", message, 20) == (8, 4) and struct.unpack_from("!I", message, 24) == (1,)
    assert struct.unpack_from("=HH", message, 28) == (8, 5) and struct.unpack_from("!I", message, 32) == (1,)
    assert len(message) == 36


def test_verdict_message_layout_with_and_without_a_mark() -> None:
    plain = verdict_message(queue_num=300, packet_id=0x01020304, verdict=NF_DROP)
    assert struct.unpack_from("=IHHII", plain) == (32, (3 << 8) | 1, 1, 0x01020304, 0)  # the id is the seq
    assert struct.unpack_from("!BBH", plain, 16) == (0, 0, 300)
    # NFQA_VERDICT_HDR (2): verdict, packet id, big-endian.
    assert struct.unpack_from("=HH", plain, 20) == (12, 2) and struct.unpack_from("!II", plain, 24) == (0, 0x01020304)
    marked = verdict_message(queue_num=300, packet_id=7, verdict=NF_REPEAT, mark=0x02000001)
    assert len(marked) == 40 and struct.unpack_from("!II", marked, 24) == (4, 7)
    # NFQA_MARK (3), big-endian.
    assert struct.unpack_from("=HH", marked, 32) == (8, 3) and struct.unpack_from("!I", marked, 36) == (0x02000001,)
    assert verdict_message(300, 7, NF_ACCEPT, 0)[:4] == struct.pack("=I", 40)  # mark 0 is a mark, None is none


def test_read_kernel_queues(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "nfnetlink_queue"
    path.write_text("  100  12345     2 2   256  7 1 99 1\nbad line\n")
    assert read_kernel_queues(str(path)) == [
        {"queue": 100, "portid": 12345, "length": 2, "dropped": 7, "user_dropped": 1}
    ]
    assert read_kernel_queues(str(path) + ".missing") == []


def test_conntrack_entry_of_a_service_connection_names_the_backend_pod() -> None:
    """A client connected to a Service VIP that was DNATed to a pod: the policy concerns the pod."""
    entry = parse_line(
        "tcp 6 86399 ESTABLISHED src=10.244.1.2 dst=10.96.0.10 sport=40000 dport=53 "
        "src=10.244.2.7 dst=10.244.1.2 sport=5353 dport=40000 [ASSURED] mark=16777216 use=1",
        "ipv4",
    )
    assert entry is not None
    assert (str(entry.packet.src_ip), str(entry.packet.dst_ip), entry.packet.dst_port) == (
        "10.244.1.2",
        "10.244.2.7",
        5353,
    )
    assert entry.delete_argv()[6:10] == ["-s", "10.244.1.2", "-d", "10.96.0.10"]  # deletion matches the original tuple


def test_nft_update_refills_in_place_without_deleting() -> None:
    config = DataplaneConfig(nfqueue_id=9, local_pods=parse_networks(["10.244.1.2"]))
    lines = RuleSet(config, Backend.NFT).nft_update(config.local_pods).splitlines()
    assert not any(line.startswith("delete") for line in lines)
    assert lines[0] == "add table inet kube-ip-agent"
    first_rule = next(i for i, line in enumerate(lines) if line.startswith("add rule"))
    flushes = [i for i, line in enumerate(lines) if line.startswith("flush chain")]
    assert len(flushes) == 7 and max(flushes) < first_rule  # every chain emptied before any rule is added
    assert "add element inet kube-ip-agent pods4 { 10.244.1.2/32 }" in lines
    assert "add rule inet kube-ip-agent enforce queue num 9 bypass" in lines
    assert (
        "add chain inet kube-ip-agent classify_input { type filter hook input priority filter - 5; policy accept; }"
        in lines
    )


def test_ctnetlink_delete_message_and_acks() -> None:
    from kube_ip_tracker.agent.dataplane import ctnetlink

    entry = parse_line("udp 17 29 src=10.244.1.2 dst=10.244.1.3 sport=4000 dport=53 mark=1 use=1", "ipv4")
    assert entry is not None and ctnetlink.can_delete(entry)
    message = ctnetlink.delete_message(entry, seq=42)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", message)
    assert (length, kind, flags, seq) == (len(message), (1 << 8) | 2, 0x5, 42)
    assert ipaddress.IPv4Address("10.244.1.2").packed in message and struct.pack("!H", 53) in message
    icmp = parse_line("icmp 1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 mark=1 use=1", "ipv4")
    assert icmp is not None and not ctnetlink.can_delete(icmp)
    acks = (
        struct.pack("=IHHIIi", 36, 2, 0, 42, 0, 0)
        + b"\0" * 16
        + struct.pack("=IHHIIi", 36, 2, 0, 43, 0, -2)
        + b"\0" * 16
    )
    assert ctnetlink.parse_acks(acks) == {42: 0, 43: 2}
