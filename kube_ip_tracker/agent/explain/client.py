"""Ask a running agent's explain socket (``kube-ip-agent explain``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from .request import ExplainRequest

SOCKET_DIR = Path("/run/kube-ip-agent")


class ExplainClientError(Exception):
    """The agent could not be asked or refused the request (one line, naming the socket or the input)."""


def default_socket(directory: Path = SOCKET_DIR) -> Path:
    """The only agent socket in ``directory``; ExplainClientError naming them when there are none or several."""
    found = sorted(directory.glob("*.sock")) if directory.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise ExplainClientError(
            f"no agent explain socket in {directory} (is kube-ip-agent run running?); give --socket"
        )
    raise ExplainClientError(f"several agents on this host ({', '.join(p.name for p in found)}): give --socket")


def ask(path: Path, request: ExplainRequest, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's explanation (a dict, see :class:`~.trace.Explanation`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except OSError as exc:
            hint = " (the socket is root-only)" if isinstance(exc, PermissionError) else ""
            raise ExplainClientError(f"cannot reach the agent at {path}: {exc.strerror or exc}{hint}") from None
        try:
            sock.sendall(json.dumps(request.to_dict()).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise ExplainClientError(f"the agent at {path} did not answer: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ExplainClientError(f"the agent at {path} sent no valid answer ({len(data)} bytes)") from None
    if "error" in reply:
        raise ExplainClientError(str(reply["error"]))
    return reply["explanation"]
