"""Exponential backoff with jitter for the tracker client's reconnect loop."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double after each failure up to ``cap``, with "equal jitter".

    The n-th delay after a run of failures is uniform in ``[d/2, d]`` with ``d = min(cap, base * 2**n)``,
    so many agents that lost the same tracker do not reconnect in lockstep, yet none retries in a tight loop.
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Record one more failure and return the delay before the next attempt."""
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 62)))
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Forget past failures (after a healthy connection)."""
        self.failures = 0
