"""The verdict log: one line per decided connection tuple, rate-limited and de-duplicated.

``--log-verdicts=deny`` (the default) logs denied connections, ``all`` allowed ones too, ``off``
nothing. A tuple (source, destination, protocol, destination port, verdict) is logged at most once
per ``--log-verdicts-interval``; its repeats meanwhile are counted and reported on its next line
(``suppressed=N``). Over all tuples at most ``--log-verdicts-rate`` lines a second are written (a
token bucket with that many tokens). The tuples remembered are bounded (the oldest are forgotten
first). Everything not written counts in ``kube_ip_agent_verdict_log_suppressed_total{reason}``.

Lines carry structured fields (see :mod:`kube_ip_tracker.logs`), in klog text or JSON with
``--logging-format``.

Staged policies: a connection whose verdict here would differ with the staged policies applied gets a
``would-deny`` or ``would-allow`` line (with ``deny`` or ``all``; not with ``off``), de-duplicated per
tuple and rate-limited like the others but with a budget of its own, so a flood of denials never hides
what a staged policy would do.
"""

from __future__ import annotations

import argparse
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from kube_ip_tracker.agent.dataplane.loop_metrics import LoopCounter
from kube_ip_tracker.durations import parse_duration

log = logging.getLogger("kube_ip_tracker.agent.verdicts")

LINES = Counter(
    "kube_ip_agent_verdict_log_lines_total",
    "Verdict log lines written, by verdict (allow, deny; would-allow, would-deny for staged policies).",
    ["verdict"],
)
# Counted per decision on the event loop: a lock-free counter (see dataplane.loop_metrics).
SUPPRESSED = LoopCounter(
    "kube_ip_agent_verdict_log_suppressed_total",
    "Verdicts not logged: duplicate (same tuple within --log-verdicts-interval) or rate (over --log-verdicts-rate).",
    ["reason"],
)
ERRORS = Counter("kube_ip_agent_verdict_log_errors_total", "Verdicts that could not be described (not logged).")
_DUPLICATE = SUPPRESSED.labels("duplicate")
_RATE = SUPPRESSED.labels("rate")

DEFAULT_INTERVAL = 60.0
DEFAULT_RATE = 20.0
DEFAULT_MAX_TUPLES = 10_000


class VerdictLogMode(enum.Enum):
    OFF = "off"
    DENY = "deny"
    ALL = "all"


@dataclass(frozen=True)
class VerdictLogOptions:
    """What is logged and how often."""

    mode: VerdictLogMode = VerdictLogMode.DENY
    interval: float = DEFAULT_INTERVAL
    rate: float = DEFAULT_RATE
    max_tuples: int = DEFAULT_MAX_TUPLES


class Limiter:
    """Admits the first event of a key per ``interval`` and at most ``rate`` events a second overall.

    :meth:`admit` returns None when the event is suppressed, else how many events of the key were
    suppressed as duplicates since its last admitted one. At most ``max_tuples`` keys are remembered.
    """

    def __init__(self, interval: float, rate: float, max_tuples: int, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.rate = rate
        self.burst = max(1.0, rate)
        self.max_tuples = max_tuples
        self._clock = clock
        self._tokens = self.burst
        self._refilled = clock()
        self._seen: OrderedDict[Hashable, list[float]] = OrderedDict()  # key -> [last admitted, duplicates since]

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, key: Hashable) -> int | None:
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            _DUPLICATE.inc()
            return None
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens < 1.0:
            _RATE.inc()
            return None
        self._tokens -= 1.0
        repeats = int(seen[1]) if seen is not None else 0
        if seen is not None:
            seen[0], seen[1] = now, 0
            self._seen.move_to_end(key)
        else:
            self._seen[key] = [now, 0]
            if len(self._seen) > self.max_tuples:
                self._seen.popitem(last=False)
        return repeats


class VerdictLog:
    """Writes verdict lines: ``record(allowed, key, fields)`` where ``fields()`` builds the line's fields."""

    def __init__(self, options: VerdictLogOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self._log_allowed = options.mode is VerdictLogMode.ALL
        self._log_denied = options.mode is not VerdictLogMode.OFF
        self.limiter = Limiter(options.interval, options.rate, options.max_tuples, clock)
        self.staged_limiter = Limiter(options.interval, options.rate, options.max_tuples, clock)

    def wants(self, allowed: bool) -> bool:
        """Whether verdicts like this are logged at all (cheap; check before building anything)."""
        return self._log_allowed if allowed else self._log_denied

    def record(self, allowed: bool, key: Hashable, fields: Callable[[], dict[str, Any]]) -> bool:
        """Log one verdict unless suppressed; True when a line was written."""
        if not self.wants(allowed):
            return False
        message = "Connection allowed" if allowed else "Connection denied"
        return self._write(self.limiter, "allow" if allowed else "deny", message, key, fields)

    def record_staged(self, would_allow: bool, key: Hashable, fields: Callable[[], dict[str, Any]]) -> bool:
        """Log that the staged policies would change this verdict (would-allow or would-deny) unless suppressed."""
        if not self._log_denied:
            return False
        message = "Connection would be allowed" if would_allow else "Connection would be denied"
        return self._write(self.staged_limiter, "would-allow" if would_allow else "would-deny", message, key, fields)

    def _write(
        self, limiter: Limiter, verdict: str, message: str, key: Hashable, fields: Callable[[], dict[str, Any]]
    ) -> bool:
        repeats = limiter.admit((key, verdict))
        if repeats is None:
            return False
        try:
            line = fields()
        except Exception:  # a line that cannot be built must never change the verdict
            ERRORS.inc()
            log.exception("Cannot describe the verdict for %s; it is enforced, not logged", key)
            return False
        if repeats:
            line["suppressed"] = repeats
        LINES.labels(verdict).inc()
        log.info(message, extra={"fields": line})
        return True


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: expected lines per second") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: must be positive")
    return value


def _mode(text: str) -> VerdictLogMode:
    try:
        return VerdictLogMode(text)
    except ValueError:
        choices = ", ".join(m.value for m in VerdictLogMode)
        raise argparse.ArgumentTypeError(f"invalid verdict log mode {text!r}: choose from {choices}") from None


def add_verdict_log_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-verdicts``, ``--log-verdicts-interval``, ``--log-verdicts-rate``."""
    group = parser.add_argument_group("verdict log")
    group.add_argument(
        "--log-verdicts",
        type=_mode,
        default=VerdictLogMode.DENY,
        metavar="off|deny|all",
        help="log denied connections (deny, the default), every decided connection (all), or none (off)",
    )
    group.add_argument(
        "--log-verdicts-interval",
        type=parse_duration,
        default=DEFAULT_INTERVAL,
        metavar="DURATION",
        help="one line per connection tuple and verdict within this time; repeats are counted on the next line "
        f"(default {DEFAULT_INTERVAL:g}s)",
    )
    group.add_argument(
        "--log-verdicts-rate",
        type=_positive_float,
        default=DEFAULT_RATE,
        metavar="N",
        help=f"at most N verdict lines a second over all tuples (default {DEFAULT_RATE:g})",
    )


def verdict_log_options(args: argparse.Namespace) -> VerdictLogOptions:
    """Options from the parsed flags."""
    return VerdictLogOptions(mode=args.log_verdicts, interval=args.log_verdicts_interval, rate=args.log_verdicts_rate)
