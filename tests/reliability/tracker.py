"""The tracker process of :mod:`kube_ip_tracker.testing.trackers`, with what reliability tests add.

- :meth:`TrackerProcess.eventually` fails at once, with the log, when the process has exited;
- :meth:`TrackerProcess.wait_listening`, :meth:`TrackerProcess.log`.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from kube_ip_tracker.testing import trackers
from kube_ip_tracker.testing.trackers import TRACKER_CMD

__all__ = ["TRACKER_CMD", "TrackerProcess"]


class TrackerProcess(trackers.TrackerProcess):
    """A tracker child process (``--tracker-id`` is its name); the port stays the same across restarts."""

    @property
    def target(self) -> str:
        return self.address

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

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

        def alive_and(check: Callable[[], object | Awaitable[object]] = check) -> object | Awaitable[object]:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"tracker exited ({self.proc.returncode}) before {what}:\n{self.log_tail(60)}")
            return check()

        await trackers.eventually(alive_and, what, [self], within)
