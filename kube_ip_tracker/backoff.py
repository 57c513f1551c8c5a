"""Exponential backoff with jitter for the source loops."""

from __future__ import annotations

import random


class Backoff:
    """Delays doubling from ``base`` to ``cap``; each delay is uniform in ``[d/2, d]`` ("equal jitter")."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before retrying."""
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 40)))
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Forget the failures after a success."""
        self.failures = 0
