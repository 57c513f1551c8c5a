"""Two agents' dataplanes on one host (the demo runs one agent per cluster): each must see the first
packet of a connection between their pods, and either one denying must drop it."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable

import pytest

from kube_ip_tracker.agent.dataplane import Dataplane, DataplaneConfig, PacketInfo, parse_networks
from kube_ip_tracker.agent.run import MARK_SLOTS, default_name, marks_for_slot
from kube_ip_tracker.testing.netns import PodNetwork

pytestmark = pytest.mark.root

PORT = 7070
# Mark slots no other test on a shared host uses (dataplane tests: slot 0's default marks; the demo:
# slots 2 and 3; conformance packets: bits 20-21, slot 6's packet bits).
TEST_SLOTS = (4, 5)


def rules_left(name: str) -> bool:
    saved = subprocess.run(["iptables-save", "-t", "security"], capture_output=True, text=True, check=True).stdout
    nft = subprocess.run(["nft", "list", "table", "inet", name], capture_output=True, check=False)
    return nft.returncode == 0 or f"{name.upper()}-QUEUE" in saved


@pytest.fixture
async def two_dataplanes() -> AsyncIterator[Callable[..., tuple[Dataplane, Dataplane]]]:
    made: list[Dataplane] = []

    def make(net: PodNetwork, decide_a, decide_b) -> tuple[Dataplane, Dataplane]:  # type: ignore[no-untyped-def]
        first_queue = random.randint(20000, 60000)
        pods = parse_networks(str(p.ip) for p in net.pods)
        for index, decide in enumerate((decide_a, decide_b)):
            queue = first_queue + index
            config = DataplaneConfig(
                nfqueue_id=queue,
                name=f"kipt-{secrets.token_hex(3)}",
                local_pods=pods,
                **marks_for_slot(TEST_SLOTS[index]),
            )
            made.append(Dataplane(config, decide, lambda: True))
        return made[-2], made[-1]

    yield make
    for dataplane in made:
        if dataplane.running:
            await dataplane.stop()
        else:
            await dataplane.remove_rules()
        assert not rules_left(dataplane.config.name)


def test_mark_slots_are_disjoint_and_names_are_valid() -> None:
    used_packet, used_ct = 0, 0
    for slot in range(MARK_SLOTS):
        marks = marks_for_slot(slot)
        packet_bits = marks["queue_mark"] | marks["verdict_mark"]
        assert used_packet & packet_bits == 0 and used_ct & marks["accepted_ct_mark"] == 0
        used_packet |= packet_bits
        used_ct |= marks["accepted_ct_mark"]
        DataplaneConfig(**marks)  # valid single bits
    assert marks_for_slot(0) == {
        "queue_mark": DataplaneConfig.queue_mark,
        "verdict_mark": DataplaneConfig.verdict_mark,
        "accepted_ct_mark": DataplaneConfig.accepted_ct_mark,
    }
    with pytest.raises(ValueError, match="--mark-slot"):
        marks_for_slot(MARK_SLOTS)
    long_ids = ["cluster-1", "Cluster_2", "a-very-long-cluster-identifier-1", "a-very-long-cluster-identifier-2", "--"]
    names = [default_name(cluster) for cluster in long_ids]
    assert names[0] == "kipa-cluster-1"
    assert len(set(names)) == len(names)
    for name in names:
        DataplaneConfig(name=name)  # accepted by the dataplane's name check


@pytest.mark.parametrize("second_allows", [True, False])
@pytest.mark.parametrize("b_starts_first", [True, False])
async def test_both_agents_decide_each_new_connection_and_either_can_deny(
    two_dataplanes: Callable[..., tuple[Dataplane, Dataplane]], second_allows: bool, b_starts_first: bool
) -> None:
    """The agent started last has its jump first in the hook chains; both orders are checked."""
    with PodNetwork(host_address=True) as net:
        client, server = net.add_pod("client"), net.add_pod("server")
        server.serve_tcp(PORT)
        server.serve_udp(PORT)
        seen_a: list[PacketInfo] = []
        seen_b: list[PacketInfo] = []

        def decide_a(packet: PacketInfo) -> bool:
            seen_a.append(packet)
            return True

        def decide_b(packet: PacketInfo) -> bool:
            seen_b.append(packet)
            return second_allows

        a, b = two_dataplanes(net, decide_a, decide_b)
        for dataplane in (b, a) if b_starts_first else (a, b):
            await dataplane.start()
        assert dataclasses.astuple(a.config) != dataclasses.astuple(b.config)

        # Probes run in a thread: the dataplanes answer the queue from this event loop.
        assert await asyncio.to_thread(client.tcp_probe, server.ip, PORT) is second_allows
        assert await asyncio.to_thread(client.udp_probe, server.ip, PORT) is second_allows
        # Whoever denies has seen the connection (an allowing agent first in line passed it on).
        for seen in (seen_a, seen_b) if second_allows or b_starts_first else (seen_b,):
            assert {(p.protocol.value, p.dst_port) for p in seen} >= {("TCP", PORT), ("UDP", PORT)}, seen
        if second_allows:
            # Accepted by both: each decided every connection once; later packets stayed in the kernel.
            assert len(seen_a) == len(seen_b) == 2, (seen_a, seen_b)
            stream = await asyncio.to_thread(client.open_stream, server.ip, PORT)
            for _ in range(3):
                assert await asyncio.to_thread(stream.exchange)
            assert len(seen_a) == len(seen_b) == 3
