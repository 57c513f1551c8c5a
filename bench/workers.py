"""Client processes for the gRPC benchmarks, and the parent's handle on them.

A worker is ``python -m bench.workers MODE ...`` talking JSON lines: commands on stdin, replies on
stdout. Modes:

- ``raw TARGET STREAMS``: that many Watch streams, each on its own channel (own TCP connection),
  reading raw response bytes and parsing only the header fields (kind, revision), so the client
  costs as little as possible. Replies ``ready`` (snapshot seconds per stream) once every stream got
  END_OF_SNAPSHOT; ``until R`` waits until every stream received a message at revision >= R and
  replies with every DELTA's ``[first revision, revision, receive time]`` per stream (``time.monotonic``, the same
  clock in every process on Linux).
- ``agent TARGET``: the real agent client (:class:`TrackerClient` feeding an :class:`AgentStore`).
  ``connect`` starts a fresh client (no resume point) and replies when its snapshot is applied;
  ``stop`` closes the stream but keeps the resume point; ``resume R`` reconnects (resuming) and
  replies when the store reached revision R; ``watch_pods`` then reports every pod upsert as
  ``seen`` (name, IPs, time).
- ``store TARGET CLUSTER NODE``: the agent's data path as ``agent/run.py`` wires it (a
  :class:`TrackerClient` whose sink is the :class:`AgentStore` in a :class:`PolicyEngine`, local
  pods of CLUSTER on NODE tracked). ``connect [profile]`` measures RSS, starts the client, replies
  with the seconds (wall, CPU) until the snapshot is applied and the RSS growth (optionally the
  cProfile top of that time); ``decide N POLICIES`` adds POLICIES NetworkPolicies (bench_agent's
  shapes) and replies with decisions per CPU second over N random probes.
- ``kube KUBECONFIG NAMESPACE``: a direct pod watch on an API server (kubernetes_asyncio) reporting
  every MODIFIED pod as ``seen`` (name, IPs, time), as ``watch_pods`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WATCH_METHOD = "/kubeiptracker.v1.Tracker/Watch"
END_OF_SNAPSHOT = 3
DELTA = 4


# -- parent side ------------------------------------------------------------------------------


class Worker:
    """A worker child process; ``await Worker.start(mode, *args)``, then ``ask``/``read``/``close``."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    @classmethod
    async def start(cls, mode: str, *args: str) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.workers",
            mode,
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=256 << 20,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        return cls(proc, f"{mode} worker {proc.pid}")

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    async def read(self, limit: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(limit):
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited (code {await self.proc.wait()}) without replying")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    async def ask(self, command: str, limit: float = 120.0) -> dict[str, Any]:
        await self.send(command)
        return await self.read(limit)

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.send("quit")
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# -- worker side ------------------------------------------------------------------------------


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def header(data: bytes) -> tuple[int, int, int]:
    """``(kind, first_revision, revision)`` of a serialized WatchResponse (a merged DELTA included)."""
    from kube_ip_tracker.wire import response_header

    kind, revision, first = response_header(data, whole=True)
    return kind, first or revision, revision


async def _lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def raw_mode(target: str, streams: int) -> None:
    import grpc.aio

    from kube_ip_tracker.api.v1 import tracker_pb2 as pb

    request = pb.WatchRequest(watcher_name="bench").SerializeToString()
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 256 << 20)]
    snapshot_s = [0.0] * streams
    deltas: list[list[tuple[int, int, float]]] = [[] for _ in range(streams)]
    latest = [0] * streams
    ready = [asyncio.Event() for _ in range(streams)]
    progress = asyncio.Event()
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(streams)]

    async def one(k: int) -> None:
        call = channels[k].unary_stream(WATCH_METHOD, request_serializer=None, response_deserializer=None)
        started = time.monotonic()
        monotonic = time.monotonic
        mine = deltas[k]
        async for data in call(request):
            now = monotonic()
            kind, first, revision = header(data)
            if kind == DELTA:
                mine.append((first, revision, now))
            elif kind == END_OF_SNAPSHOT and not ready[k].is_set():
                snapshot_s[k] = now - started
                ready[k].set()
            if revision > latest[k]:
                latest[k] = revision
                progress.set()

    tasks = [asyncio.create_task(one(k)) for k in range(streams)]
    stdin = await _lines()
    try:
        waiting = asyncio.gather(*(e.wait() for e in ready))
        done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            failed = next(t for t in done)
            raise RuntimeError(f"a stream ended before its snapshot: {failed.exception()!r}")
        _reply({"ready": True, "snapshot_s": snapshot_s})
        while line := (await stdin.readline()).decode().strip():
            command, _, arg = line.partition(" ")
            if command == "quit":
                break
            if command == "until":
                goal = int(arg)
                while min(latest) < goal:
                    progress.clear()
                    await progress.wait()
                _reply({"deltas": deltas})
                for d in deltas:
                    d.clear()
    finally:
        for t in tasks:
            t.cancel()
        for ch in channels:
            await ch.close()


async def agent_mode(target: str) -> None:
    from kube_ip_tracker.agent import events as ev
    from kube_ip_tracker.agent.store import AgentStore
    from kube_ip_tracker.client.client import ClientOptions, TrackerClient

    logging.getLogger("kube_ip_tracker").setLevel(logging.ERROR)  # retries while the tracker starts are expected
    client: TrackerClient | None = None
    mirror = AgentStore()
    revision_changed = asyncio.Event()
    report_pods = False

    def on_events(batch: list[Any]) -> None:
        revision_changed.set()
        if report_pods:
            now = time.monotonic()
            for e in batch:
                if isinstance(e, ev.PodUpserted):
                    _reply({"seen": e.pod.name, "ips": list(e.pod.ips), "t": now})

    mirror.subscribe(on_events)
    options = ClientOptions(watcher_name="bench-agent", backoff_base=0.05, backoff_cap=0.5)
    stdin = await _lines()
    while line := (await stdin.readline()).decode().strip():
        command, _, arg = line.partition(" ")
        if command == "quit":
            break
        if command == "connect":
            if client is not None:
                await client.stop()
            mirror = AgentStore()
            mirror.subscribe(on_events)
            client = TrackerClient(target, mirror, options)
            started, cpu = time.monotonic(), time.process_time()
            client.start()
            await client.wait_ready()
            _reply(
                {
                    "seconds": time.monotonic() - started,
                    "cpu_seconds": time.process_time() - cpu,
                    "revision": client.revision,
                    "pods": mirror.counts(),
                }
            )
        elif command == "stop":
            assert client is not None
            await client.stop()
            _reply({"stopped": True, "revision": client.revision})
        elif command == "resume":
            assert client is not None
            goal = int(arg)
            started = time.monotonic()
            client.start()
            # The mirror's revision is set before its listeners run: the wakeup is exact, no polling delay.
            while mirror.revision < goal:
                revision_changed.clear()
                await _wait_or(revision_changed, lambda m=mirror, g=goal: m.revision >= g)
            _reply({"seconds": time.monotonic() - started, "revision": mirror.revision})
        elif command == "watch_pods":
            report_pods = True
            _reply({"watching": True})
    if client is not None:
        await client.stop()


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def store_mode(target: str, cluster: str, node: str) -> None:
    import cProfile
    import gc

    from bench import report
    from bench.bench_agent import decision_rates, memory_breakdown
    from kube_ip_tracker.agent.enforce import LocalEnforcement
    from kube_ip_tracker.agent.policy import PolicyEngine
    from kube_ip_tracker.agent.store import AgentStore
    from kube_ip_tracker.client.client import ClientOptions, TrackerClient

    logging.getLogger("kube_ip_tracker").setLevel(logging.ERROR)
    changes = [0, 0]
    engine = PolicyEngine()
    store = AgentStore(
        engine,
        local_cluster=cluster,
        node=node,
        on_change=lambda: changes.__setitem__(0, changes[0] + 1),
        on_local_pods=lambda addresses: changes.__setitem__(1, len(addresses)),
    )
    enforcement = LocalEnforcement(engine, cluster)
    options = ClientOptions(watcher_name="bench-store", backoff_base=0.05, backoff_cap=0.5)
    client: TrackerClient | None = None
    stdin = await _lines()
    while line := (await stdin.readline()).decode().strip():
        command, _, arg = line.partition(" ")
        if command == "quit":
            break
        if command == "connect":
            gc.collect()
            before = rss_bytes()
            client = TrackerClient(target, store, options)
            profiler = cProfile.Profile() if arg == "profile" else None
            started, cpu = time.monotonic(), time.process_time()
            if profiler is not None:
                profiler.enable()
            client.start()
            await client.wait_ready()
            if profiler is not None:
                profiler.disable()
            seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu
            gc.collect()
            counts = store.counts()
            _reply(
                {
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                    "rss_growth": rss_bytes() - before,
                    "counts": counts,
                    "identities": len(store.objects.identities),
                    "local_pod_addresses": changes[1],
                    "breakdown": memory_breakdown(store.objects),
                    "profile": report.profile_rows(profiler) if profiler is not None else [],
                }
            )
        elif command == "decide":
            probes, policies = (int(a) for a in arg.split())
            _reply(decision_rates(engine, enforcement, probes, policies))
    if client is not None:
        await client.stop()


async def _wait_or(event: asyncio.Event, done: Callable[[], bool]) -> None:
    """Wait for ``event`` (or poll ``done`` every 10 ms: revisions also move without mirror events)."""
    while not done():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):
                await event.wait()
                return


async def kube_mode(kubeconfig: str, namespace: str) -> None:
    from kubernetes_asyncio import client, config, watch

    await config.load_kube_config(config_file=kubeconfig)
    async with client.ApiClient() as api:
        core = client.CoreV1Api(api)
        listed = await core.list_namespaced_pod(namespace, limit=1)
        version = listed.metadata.resource_version
        w = watch.Watch()
        _reply({"watching": True})
        async for event in w.stream(core.list_namespaced_pod, namespace, resource_version=version):
            if event["type"] != "MODIFIED":
                continue
            obj = event["raw_object"]
            ips = [p["ip"] for p in (obj.get("status") or {}).get("podIPs") or []]
            _reply({"seen": obj["metadata"]["name"], "ips": ips, "t": time.monotonic()})


def _exit_with_parent() -> None:
    """Exit when the benchmark process that started this worker is gone (its stdin may stay open)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> None:
    mode, *args = argv
    _exit_with_parent()
    try:
        if mode == "raw":
            asyncio.run(raw_mode(args[0], int(args[1])))
        elif mode == "agent":
            asyncio.run(agent_mode(args[0]))
        elif mode == "kube":
            asyncio.run(kube_mode(args[0], args[1]))
        elif mode == "store":
            asyncio.run(store_mode(args[0], args[1], args[2]))
        else:
            raise SystemExit(f"unknown worker mode {mode!r} (raw, agent, kube, store)")
    except KeyboardInterrupt:
        pass
    except Exception as e:
        _reply({"error": f"{type(e).__name__}: {e}"})
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
