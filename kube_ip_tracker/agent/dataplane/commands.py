"""Running the netfilter tools (nft, iptables-restore, conntrack) with input, timeout and clear errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("kube_ip_tracker.agent.dataplane")


class CommandError(RuntimeError):
    """A netfilter tool failed; the message names the command and its error output."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"{' '.join(argv)} {status}: {stderr.strip() or '(no error output)'}")


@dataclass(frozen=True, slots=True)
class Result:
    """Output of a successful command."""

    stdout: str
    stderr: str


async def run(argv: Sequence[str], stdin: str | None = None, time_limit: float = 10.0) -> Result:
    """Run ``argv`` with ``stdin``; raise :class:`CommandError` on failure or timeout."""
    log.debug("running %s", " ".join(argv))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise CommandError(argv, -1, f"cannot start: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout=time_limit
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandError(argv, None, f"no answer within {time_limit}s") from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, err.decode(errors="replace"))
    return Result(out.decode(errors="replace"), err.decode(errors="replace"))
