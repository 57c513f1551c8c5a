"""A second agent on the host with the same mark slot is refused at start, naming the other agent and the flag."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import secrets
from pathlib import Path

import pytest

from kube_ip_tracker.agent.cli import build_parser
from kube_ip_tracker.agent.dataplane import Dataplane, DataplaneConfig
from kube_ip_tracker.agent.dataplane.neighbours import (
    MarkCollision,
    check_marks_free,
    installed_agents,
    listening_queues,
    parse_agent_table,
)
from kube_ip_tracker.agent.dataplane.rules import Backend, RuleSet
from kube_ip_tracker.agent.run import EXIT_CONFIG, agent_config, marks_for_slot, run_agent
from kube_ip_tracker.testing.clusters import free_port

pytestmark = pytest.mark.root

# A slot no other test on a shared host uses (dataplane tests: 0; agent tests: 1, 4, 5; demo: 2, 3;
# conformance packets: slot 6's packet bits).
SLOT = 7


def _config(name: str, slot: int = SLOT, queue: int | None = None) -> DataplaneConfig:
    return DataplaneConfig(
        name=name, nfqueue_id=queue or random.randint(20000, 60000), local_pods=(), **marks_for_slot(slot)
    )


@pytest.fixture
async def running_agent() -> Dataplane:  # type: ignore[misc]
    """The dataplane of agent A (slot 7), started: its rules are installed and its queue is bound."""
    dataplane = Dataplane(_config(f"kipt-{secrets.token_hex(3)}"), lambda _: True, lambda: True)
    await dataplane.start()
    try:
        yield dataplane
    finally:
        if dataplane.running:
            await dataplane.stop()
        await dataplane.remove_rules()


def test_agent_tables_are_recognised_for_both_backends() -> None:
    config = _config("kipt-unit", queue=4242)
    for backend in Backend:
        parsed = parse_agent_table(config.name, RuleSet(config, backend).nft_table([]))
        queue = 4242 if backend is Backend.NFT else None  # iptables: the queue rule is in the security table
        assert parsed == (config.queue_mark | config.verdict_mark, config.accepted_ct_mark, queue)
    assert parse_agent_table("other", "table inet other {\n\tchain enforce {\n\t}\n}\n") is None


async def test_same_slot_is_refused_while_the_other_agent_runs(running_agent: Dataplane) -> None:
    a = running_agent.config
    assert a.nfqueue_id in listening_queues()
    ours = _config(f"kipt-{secrets.token_hex(3)}")
    with pytest.raises(MarkCollision) as raised:
        await check_marks_free(ours)
    assert [x.name for x in raised.value.agents] == [a.name]
    assert raised.value.agents[0].queue_num == a.nfqueue_id and raised.value.agents[0].listening
    assert a.name in str(raised.value)

    # Our own previous instance (same --name) is a restart, not a collision.
    await check_marks_free(dataclasses.replace(ours, name=a.name))
    # Another slot does not collide with A.
    other_slot = _config(ours.name, slot=SLOT - 4)
    found = {x.name: x for x in await installed_agents(other_slot)}
    assert a.name in found and not found[a.name].collides(other_slot)

    # A's process is gone but its rules stay (to be restarted): reported, not refused.
    await running_agent.stop(remove_rules=False)
    assert a.nfqueue_id not in listening_queues()
    found = {x.name: x for x in await check_marks_free(ours)}
    assert not found[a.name].listening


async def test_agent_run_exits_naming_the_other_agent_and_the_flag(  # type: ignore[no-untyped-def]
    tmp_path: Path, running_agent: Dataplane, caplog
) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(
        "apiVersion: v1\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    # The default slot is --nfqueue-id mod 4: pick a queue whose default is A's slot's (7 mod 4 = 3), then
    # set the slot explicitly to 7 (the defaults only reach slots 0-3, which other tests on this host use).
    name = f"kipt-{secrets.token_hex(3)}"
    argv = ["run", "--tracker-address", f"127.0.0.1:{free_port()}", "--cluster-id", "c", "--name", name]
    argv += ["--kubeconfig", str(kubeconfig), "--metrics-address", "", "--pod-cidr", "10.99.0.0/24"]
    argv += ["--nfqueue-id", str(running_agent.config.nfqueue_id + 1), "--mark-slot", str(SLOT)]
    config = agent_config(build_parser().parse_args(argv))
    with caplog.at_level(logging.ERROR):
        assert await asyncio.wait_for(run_agent(config), 30) == EXIT_CONFIG
    message = caplog.text
    assert f"agent {running_agent.config.name!r}" in message and "--mark-slot" in message
    assert "--name" in message
    listed = await installed_agents(_config("kipt-none"))
    assert name not in {x.name for x in listed}, "the refused agent installed no rules"
    assert running_agent.running


async def test_an_agent_on_our_queue_is_left_to_the_queue_bind(running_agent: Dataplane) -> None:
    """Same --nfqueue-id too: the bind refuses it, naming the queue (the first thing to fix)."""
    a = running_agent.config
    await check_marks_free(dataclasses.replace(a, name=f"kipt-{secrets.token_hex(3)}"))
