"""The processes of the dataplane benchmark: ``python -m bench.dataplane_procs ROLE``, its spec a JSON line on stdin.

- ``server``: run inside the server pod (``ip netns exec``): accepts TCP connections on ``port``
  and closes them; echoes every UDP datagram on ``port``. Runs until stdin closes.
- ``client``: run inside a client pod: prints ``{"ready": true}``, reads ``{"start": ..., "end": ...}``
  (``time.monotonic``, the same clock in every process), and from start to end opens TCP connections (connect, then close with a reset so no TIME_WAIT piles
  up) or sends UDP requests from a fresh socket each and waits for the echo. With ``sources``, each
  connection binds the next of these addresses (first-seen tuples; stops when they run out).
  Prints one JSON line: count, errors, elapsed seconds and the latencies in microseconds.
- ``agent``: the real :class:`Dataplane` deciding with the agent's :class:`LocalEnforcement` over a
  :class:`PolicyEngine` that holds the benchmark's pods and one ingress policy for the server; with
  ``log_verdicts`` (off, deny, all) its verdict log, writing klog lines to stderr.
  Prints ``{"ready": ...}`` once its rules are in, then answers ``cpu`` (CPU seconds so far:
  (user, system), ``profile-start``/``profile-stop`` (cProfile rows, by CPU time) and ``stop`` (removes its rules, exits).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import struct
import sys
import threading
import time
from typing import Any

LINGER_RESET = struct.pack("ii", 1, 0)
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: bind() picks the port at connect(), the fast path


def _cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


# -- server -----------------------------------------------------------------------------------


def server(spec: dict[str, Any]) -> None:
    address, port = spec["address"], spec["port"]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(4096)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, port))

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.close()

    def echo_loop() -> None:
        while True:
            try:
                data, peer = udp.recvfrom(2048)
                udp.sendto(data, peer)
            except OSError:
                continue

    for loop in (accept_loop, echo_loop):
        threading.Thread(target=loop, daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)


# -- client -----------------------------------------------------------------------------------


def client(spec: dict[str, Any]) -> None:
    target = (spec["target"], spec["port"])
    sources: list[str] = spec.get("sources") or []
    udp = spec["protocol"] == "udp"
    timeout = spec.get("timeout", 1.0)
    print(json.dumps({"ready": True}), flush=True)
    window = json.loads(sys.stdin.readline())  # every client is started (and imported) by now
    start, end = window["start"], window["end"]
    latencies: list[float] = []
    errors = 0
    count = 0
    clock = time.perf_counter_ns
    while time.monotonic() < start:
        time.sleep(0.001)
    began = time.monotonic()
    while time.monotonic() < end:
        if sources and count + errors >= len(sources):
            break
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            if sources:
                if not udp:
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((sources[count + errors], 0))
            if udp:
                t0 = clock()
                sock.sendto(b"q", target)
                sock.recv(64)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                t0 = clock()
                sock.connect(target)
            latencies.append((clock() - t0) / 1000)
            count += 1
        except OSError:
            errors += 1
        finally:
            sock.close()
    elapsed = time.monotonic() - began
    print(json.dumps({"count": count, "errors": errors, "elapsed": elapsed, "latencies_us": latencies}), flush=True)


# -- agent ------------------------------------------------------------------------------------


def _engine(spec: dict[str, Any]) -> Any:
    from kube_ip_tracker.agent.policy import PolicyEngine
    from kube_ip_tracker.agent.policy.parse import parse_network_policy
    from kube_ip_tracker.model import NamespaceRecord, PodRecord

    cluster, namespace = spec["cluster"], "bench"
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(cluster, namespace, {"team": "bench"}))
    engine.set_pod(PodRecord(cluster, namespace, "server", {"app": "server"}, (), "node-1", (spec["server"],)))
    for i, ip in enumerate(spec["clients"]):
        engine.set_pod(PodRecord(cluster, namespace, f"client-{i}", {"app": "client"}, (), "node-1", (ip,)))
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": "server-ingress"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                    "ports": [{"protocol": "TCP", "port": spec["port"]}, {"protocol": "UDP", "port": spec["port"]}],
                }
            ],
        },
    }
    engine.set_policy(parse_network_policy(policy, cluster))
    return engine


# Where a queued packet's time goes, by the code that spends it (own time; the first match wins).
AREAS = (
    ("queue: reads (compiled) and batched verdict writes, the kernel's packet work included",
     ("agent/dataplane/nfq.py", "posix.write", "netfilterqueue")),
    ("parse", ("agent/dataplane/packet.py", "ipaddress.py")),
    ("decision: evaluator and enforcement", ("agent/policy/", "agent/enforce.py", "agent/outcomes.py")),
    ("verdict log", ("agent/verdict_log.py",)),
    ("dataplane bookkeeping and its metrics", ("agent/dataplane/",)),
    ("prometheus_client", ("prometheus_client",)),
    ("event loop", ("asyncio", "selectors.py", "epoll")),
)  # fmt: skip


def profile_areas(profiler: Any) -> list[dict[str, Any]]:
    """Own time of a finished ``cProfile.Profile`` by :data:`AREAS` (builtins by their name; the rest: other)."""
    import pstats

    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values()) or 1.0
    shares: dict[str, float] = {}
    for (filename, _line, func), (_cc, _calls, tottime, _cum, _callers) in stats.items():
        where = f"{filename} {func}"
        area = next((name for name, marks in AREAS if any(mark in where for mark in marks)), None)
        if area is None:
            area = (
                "other builtins (dict, isinstance, len, ...: called from all of the above)"
                if filename == "~"
                else "other"
            )
        shares[area] = shares.get(area, 0.0) + tottime / total
    return [{"area": a, "share": round(v, 3)} for a, v in sorted(shares.items(), key=lambda kv: -kv[1])]


async def agent(spec: dict[str, Any]) -> None:
    import cProfile

    from bench.report import profile_rows
    from kube_ip_tracker.agent.dataplane import Dataplane, DataplaneConfig, parse_networks
    from kube_ip_tracker.agent.enforce import LocalEnforcement
    from kube_ip_tracker.agent.verdict_log import VerdictLog, VerdictLogMode, VerdictLogOptions
    from kube_ip_tracker.logs import configure_logging

    mode = VerdictLogMode(spec.get("log_verdicts", "off"))
    verdicts = None
    if mode is not VerdictLogMode.OFF:
        configure_logging(logging.INFO)  # as the agent's command line does
        verdicts = VerdictLog(VerdictLogOptions(mode=mode))
    enforcement = LocalEnforcement(_engine(spec), spec["cluster"], verdict_log=verdicts)
    config = DataplaneConfig(
        nfqueue_id=spec["queue"],
        name=spec["name"],
        local_pods=parse_networks(spec["local_pods"]),
        backend=spec.get("backend", "auto"),
        **spec.get("config", {}),
    )
    dataplane = Dataplane(config, enforcement.decide, lambda: True)
    await dataplane.start()
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True, "backend": dataplane.backend.value if dataplane.backend else None}), flush=True)
    profiler: cProfile.Profile | None = None
    try:
        while line := (await reader.readline()).decode().strip():
            if line == "cpu":
                reply: dict[str, Any] = {"cpu": _cpu_seconds()}
            elif line == "profile-start":
                profiler = cProfile.Profile(time.process_time)  # CPU time: the idle epoll wait does not count
                profiler.enable()
                reply = {"ok": True}
            elif line == "profile-stop":
                assert profiler is not None
                profiler.disable()
                reply = {"profile": profile_rows(profiler, 14), "areas": profile_areas(profiler)}
            elif line == "stop":
                break
            else:
                reply = {"error": f"unknown command {line!r}"}
            print(json.dumps(reply), flush=True)
    finally:
        await dataplane.stop()
    print(json.dumps({"stopped": True}), flush=True)


def main(argv: list[str]) -> None:
    role, spec = argv[0], json.loads(sys.stdin.readline())
    if role == "server":
        server(spec)
    elif role == "client":
        client(spec)
    elif role == "agent":
        asyncio.run(agent(spec))
    else:
        raise SystemExit(f"unknown role {role!r}: server, client or agent")


if __name__ == "__main__":
    main(sys.argv[1:])
