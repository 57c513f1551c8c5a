"""The one polling helper of the tests: wait on a condition, never on a fixed sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], object | Awaitable[object]],
    what: str,
    within: float = 30.0,
    *,
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
    in_thread: bool = False,
) -> None:
    """Poll ``check()`` (sync or async) until it is truthy; fail naming ``what`` after ``within`` seconds.

    ``detail()`` adds context to the failure (a process's log, say); ``in_thread`` runs a blocking
    ``check`` off the event loop.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await asyncio.to_thread(check) if in_thread else check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"not reached within {within}s: {what}{extra}")
        await asyncio.sleep(interval)
