"""The verdict callback's types: what ``decide`` may return and how it is read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from .packet import PacketInfo


class HasAllowed(Protocol):
    """A verdict object, like the policy evaluator's ``Verdict``."""

    @property
    def allowed(self) -> bool: ...


Decision = bool | HasAllowed
Decide = Callable[[PacketInfo], Decision | Awaitable[Decision]]
IsReady = Callable[[], bool]


def as_allowed(decision: object) -> bool:
    """A decision as a bool: ``True``/``False`` or an object with a bool ``allowed`` (never plain truthiness,
    so returning the wrong object cannot silently allow everything)."""
    if isinstance(decision, bool):
        return decision
    allowed = getattr(decision, "allowed", None)
    if isinstance(allowed, bool):
        return allowed
    raise TypeError(f"decide must return a bool or an object with a bool 'allowed', got {type(decision).__name__}")
