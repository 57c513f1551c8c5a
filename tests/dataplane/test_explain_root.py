"""``kube-ip-agent explain`` agrees with the verdict the dataplane applied to real packets of the same tuple."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from kube_ip_tracker.agent.enforce import LocalEnforcement
from kube_ip_tracker.agent.explain.request import answer
from kube_ip_tracker.agent.explain.server import ExplainServer
from kube_ip_tracker.agent.policy.evaluator import PolicyEngine
from kube_ip_tracker.agent.policy.parse import parse_network_policy
from kube_ip_tracker.agent.verdict_log import VerdictLog, VerdictLogMode, VerdictLogOptions
from kube_ip_tracker.model import NamespaceRecord
from kube_ip_tracker.testing.netns import PodNetwork

from .conftest import DataplaneFactory
from .test_verdict_log_root import CLUSTER, NAMESPACE, WEB_INGRESS, pod_record

pytestmark = pytest.mark.root

AGENT_BIN = Path(sys.executable).with_name("kube-ip-agent")


def explain_cli(socket_path: Path, src: str, dst: str, port: str) -> tuple[int, dict[str, object]]:
    argv = [str(AGENT_BIN), "explain", "--socket", str(socket_path), "--from", src, "--to", dst, "--port", port]
    done = subprocess.run([*argv, "-o", "json"], capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


async def test_explain_agrees_with_the_applied_verdict(
    net: PodNetwork, make_dataplane: DataplaneFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    front, web, client = net.add_pod("front"), net.add_pod("web"), net.add_pod("client")
    for port in (80, 81):
        web.serve_tcp(port)
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(CLUSTER, NAMESPACE, {}))
    for pod, app in ((front, "front"), (web, "web"), (client, "client")):
        engine.set_pod(pod_record(pod, app))
    engine.set_policy(parse_network_policy(WEB_INGRESS, CLUSTER))
    log = VerdictLog(VerdictLogOptions(mode=VerdictLogMode.ALL, interval=3600.0, rate=1000.0))
    enforcement = LocalEnforcement(engine, CLUSTER, log)
    dp = make_dataplane(enforcement.decide)
    await dp.start()
    socket_path = tmp_path / "explain" / "agent.sock"
    server = ExplainServer(socket_path, lambda request: answer(engine, request, CLUSTER))
    await server.start()
    caplog.set_level(logging.INFO, logger="kube_ip_tracker.agent.verdicts")
    try:
        for src, port, expected in ((client, 80, "deny"), (front, 80, "allow"), (front, 81, "deny")):
            caplog.clear()
            connected = await asyncio.to_thread(src.tcp_probe, web.ip, port, 1.5)
            (applied,) = [r.fields["verdict"] for r in caplog.records if r.name.endswith("verdicts")]  # type: ignore[attr-defined]
            assert applied == ("allow" if connected else "deny") == expected
            code, trace = await asyncio.to_thread(
                explain_cli, socket_path, f"{CLUSTER}/{NAMESPACE}/{src.name}", str(web.ip), f"{port}/TCP"
            )
            assert trace["verdict"] == applied and code == (0 if connected else 1), (src.name, port, trace)
    finally:
        await server.stop()
