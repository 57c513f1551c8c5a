"""A real ``kube-ip-tracker`` child process for reliability tests (start, SIGKILL, restart, log)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from kube_ip_tracker.testing.clusters import free_port

# Run by this interpreter, so a fresh checkout tests its own code.
TRACKER_CMD = [sys.executable, "-m", "kube_ip_tracker.cli"]


class TrackerProcess:
    """``kube-ip-tracker --listen-address 127.0.0.1:PORT ...``; the port stays the same across restarts."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        metrics: bool = False,
        cmd: Sequence[str] = TRACKER_CMD,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.env = env
        self.metrics_port = free_port() if metrics else 0
        self.argv = [
            *cmd,
            "--listen-address",
            f"127.0.0.1:{self.port}",
            "--metrics-address",
            f"127.0.0.1:{self.metrics_port}" if metrics else "",
            "--shutdown-grace",
            "1s",
            *args,
        ]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TrackerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_listening(self, within: float = 30.0) -> None:
        """Wait until the gRPC port accepts TCP connections (the process may still be syncing)."""

        def accepts() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        await self.eventually(accepts, "the gRPC port accepts connections", within)

    async def eventually(
        self, check: Callable[[], object | Awaitable[object]], what: str, within: float = 30.0
    ) -> None:
        """Poll ``check`` (sync or async) until truthy; fail naming ``what`` with the log's tail."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"tracker exited ({self.proc.returncode}) before {what}:\n{self.log_tail()}")
            if loop.time() > deadline:
                raise AssertionError(f"not within {within}s: {what}; tracker log:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown."""
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
