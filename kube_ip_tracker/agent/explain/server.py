"""The agent's explain socket: a Unix stream socket, root-only (mode 0600 in a 0700 directory), no
network listener. One JSON request line in, one JSON answer line out (``{"explanation": ...}`` or
``{"error": "..."}``), then the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from .request import ExplainRequest, RequestError
from .trace import Explanation

log = logging.getLogger("kube_ip_tracker.agent.explain")

REQUESTS = Counter("kube_ip_agent_explain_requests_total", "Explain requests served, by result.", ["result"])
MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 5.0


class ExplainSocketError(OSError):
    """The socket cannot be created (the message names the path)."""


class ExplainServer:
    """Serves ``answer(request) -> Explanation`` on ``path``."""

    def __init__(self, path: str | Path, answer: Callable[[ExplainRequest], Explanation]) -> None:
        self.path = Path(path)
        self._answer = answer
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Create the directory (0700) if missing, replace a stale socket, listen, chmod 0600."""
        path = self.path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                if not stat.S_ISSOCK(path.lstat().st_mode):
                    raise ExplainSocketError(f"explain socket {path}: exists and is not a socket")
                path.unlink()
            old = os.umask(0o177)
            try:
                self._server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_REQUEST)
            finally:
                os.umask(old)
            path.chmod(0o600)
        except ExplainSocketError:
            raise
        except OSError as exc:
            raise ExplainSocketError(f"explain socket {path}: {exc.strerror or exc}") from exc
        log.info("Explain socket listening on %s (root only)", path)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._reply(reader)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _reply(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            request = ExplainRequest.from_dict(json.loads(line))
            explanation = self._answer(request)
        except (ValueError, TimeoutError) as exc:  # RequestError, JSONDecodeError, LimitOverrunError
            REQUESTS.labels("error").inc()
            message = str(exc) if isinstance(exc, RequestError) else f"malformed request: {exc or 'timeout'}"
            return {"error": message}
        except Exception as exc:  # never take the agent down for an explain request
            REQUESTS.labels("error").inc()
            log.exception("explain failed")
            return {"error": f"internal error: {type(exc).__name__}: {exc}"}
        REQUESTS.labels("ok").inc()
        return {"explanation": explanation.to_dict()}
