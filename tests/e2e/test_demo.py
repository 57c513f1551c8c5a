"""The demo's scenario end to end: real clusters, trackers and agent processes, pods as network namespaces.

Uses the demo's own building blocks (:class:`DemoStack`, the scenario's steps) on a subnet and
prefix of its own, probing every step over TCP (HTTP) and UDP; then checks that shutdown removed
the agents' rules, the namespaces and the working directory. A second test runs the demo command
itself as a newcomer would.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kube_ip_tracker.demo.scenario import STAGED_STEPS, STEPS
from kube_ip_tracker.demo.stack import DemoError, DemoSettings, DemoStack, namespaces_left, rules_left
from kube_ip_tracker.demo.steps import describe_result, run_step

pytestmark = [pytest.mark.root, pytest.mark.cluster]

ECHO_PORT = 8080  # an extra TCP echo server on web-c2 for a long-lived connection


async def _eventually_false(check, what: str, within: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while await asyncio.to_thread(check):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still true after {within}s: {what}")
        await asyncio.sleep(0.2)


async def test_demo_steps_on_tcp_and_udp_and_clean_shutdown() -> None:
    settings = DemoSettings(
        subnet="10.101.0.0/16",
        prefix=f"kipe{secrets.token_hex(2)}",
        agent_args=("--log-level", "debug"),
    )
    lines: list[str] = []
    stack = DemoStack(settings, say=lines.append)
    try:
        await stack.start()
        assert stack.workdir is not None and stack.workdir.is_dir()
        for name in stack.rule_names():
            assert rules_left(name), f"agent rules {name} not installed"
        # A second demo with the same settings refuses to start and leaves the running one alone.
        second = DemoStack(settings, say=lines.append)
        with pytest.raises(DemoError, match="another demo"):
            await second.start()
        await second.close()
        for name in stack.rule_names():
            assert rules_left(name), f"agent rules {name} removed by the refused second demo"
        assert len(namespaces_left(settings.prefix)) == len(stack.pods)
        web_c2 = stack.pods["web-c2"]
        web_c2.serve_tcp(ECHO_PORT)
        stream = None
        for step in STEPS + STAGED_STEPS:  # the staged steps of --staged too (they end in step f's state)
            result = await run_step(stack, step, udp=True)
            logs = "\n".join([*lines, *(a.tail(80) for a in stack.agents)])
            assert result.passed, f"step {step.key} ({step.title}): {describe_result(result)}\n{logs}"
            assert result.http.ok is step.reachable and result.udp is step.reachable
            if step.would_deny is not None:  # the would-deny line names the staged policy and its rule
                assert 'policy="ClusterNetworkPolicy/deny-web-from-cluster-1" rule=0' in result.note, result.note
            if step.key == "a":
                # A connection opened while allowed must be cut once the deny policy arrives (step b).
                stream = await asyncio.to_thread(stack.pods["client-c1"].open_stream, web_c2.ip, ECHO_PORT)
                assert await asyncio.to_thread(stream.exchange)
            if step.key == "b":
                assert stream is not None
                await _eventually_false(stream.exchange, "open connection to web-c2 after default-deny")
        workdir = stack.workdir
        agents = list(stack.agents)
    finally:
        await stack.close()
    for name in stack.rule_names():
        assert rules_left(name) == [], f"agent rules {name} left after shutdown"
    assert namespaces_left(settings.prefix) == []
    assert not workdir.exists()
    for agent in agents:
        assert agent.proc is not None and agent.proc.returncode == 0, agent.tail()
    for tracker in stack.trackers:
        assert not tracker.alive


def test_demo_command_passes_every_step_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kube_ip_tracker.demo"], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for step in STEPS:
        assert f"Step {step.key}: {step.title}" in result.stdout
    assert result.stdout.count("  PASS: ") == len(STEPS)
    assert f"{len(STEPS)} of {len(STEPS)} steps gave the expected result." in result.stdout
    assert namespaces_left("kipdemo") == []
    assert rules_left("kipdemo-c1") == [] and rules_left("kipdemo-c2") == []


def test_demo_refuses_to_run_without_root() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not found")
    argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", "pass"]
    if subprocess.run(argv, capture_output=True, check=False).returncode != 0:
        pytest.skip(f"{sys.executable} cannot run as nobody here")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    argv[-2:] = ["-m", "kube_ip_tracker.demo"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "must run as root" in result.stderr
    assert "Starting" not in result.stdout


@pytest.mark.slow
def test_demo_killed_with_sigkill_is_cleaned_up_by_the_next_run() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "kube_ip_tracker.demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert demo.stdout is not None
    seen = ""
    while "Everything is up" not in seen:
        line = demo.stdout.readline()
        assert line, f"demo ended before it was up:\n{seen}"
        seen += line
    demo.kill()
    demo.wait()
    # The agents got SIGTERM from the kernel (parent death signal) and removed their rules.
    deadline = time.monotonic() + 20
    while rules_left("kipdemo-c1") or rules_left("kipdemo-c2"):
        assert time.monotonic() < deadline, "agent rules still installed after the demo was killed"
        time.sleep(0.2)
    assert namespaces_left("kipdemo"), "expected the killed demo's namespaces to be left over"
    result = subprocess.run(
        [sys.executable, "-m", "kube_ip_tracker.demo"], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert namespaces_left("kipdemo") == []
    assert list(Path(tempfile.gettempdir()).glob("kipdemo-*")) == []
    leftovers = subprocess.run(["pgrep", "-f", f"{tempfile.gettempdir()}/kipdemo-"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "processes of the killed demo still run"
