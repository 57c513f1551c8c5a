"""ipBlock matching on address keys (the decision path) agrees with matching on address objects."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from kube_ip_tracker.agent.policy.compiled import IPBlock
from kube_ip_tracker.agent.policy.objects import address_key, ip_key

v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
addresses = st.one_of(v4, v6, st.sampled_from(["10.1.2.3", "::ffff:10.1.2.3", "fd00::1"]).map(ipaddress.ip_address))


@st.composite
def blocks(draw: st.DrawFn) -> IPBlock:
    base = draw(addresses)
    bits = base.max_prefixlen
    prefix = draw(st.integers(0, bits - 1))
    cidr = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    excepts = []
    for _ in range(draw(st.integers(0, 3))):
        inner = draw(st.integers(int(cidr.network_address), int(cidr.broadcast_address)))
        length = draw(st.integers(prefix + 1, bits))
        excepts.append(ipaddress.ip_network(f"{type(base)(inner)}/{length}", strict=False))  # same version
    return IPBlock(cidr, tuple(excepts))


@given(blocks(), st.lists(addresses, min_size=1, max_size=5))
def test_contains_key_equals_contains(block: IPBlock, probes: list[ipaddress.IPv4Address]) -> None:
    near = [block.cidr.network_address, block.cidr.broadcast_address, *(e.network_address for e in block.excepts)]
    for ip in probes + near:
        assert block.contains_key(address_key(ip)) == block.contains(ip), (block, ip)
        assert block.contains_key(ip_key(str(ip))) == block.contains(ip)


def test_an_ipv4_block_never_holds_an_ipv6_key() -> None:
    block = IPBlock(ipaddress.ip_network("0.0.0.0/0"))
    assert block.contains_key(ip_key("10.0.0.1"))
    assert not block.contains_key(ip_key("::a00:1"))  # the same low 32 bits, an IPv6 address
    assert not block.contains_key(ip_key("::ffff:10.0.0.1"))
