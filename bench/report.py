"""Shared helpers of the benchmark modules: machine facts, medians, targets, Markdown pieces.

Every ``bench/bench_*.py`` module has ``run(quick: bool = False) -> dict`` and
``markdown(results: dict) -> str``. A module's results carry a ``"targets"`` list built with
:func:`target`; :func:`targets_table` renders it and :func:`missed` tells which need a
"where the time goes / what remains" paragraph.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def machine() -> dict[str, Any]:
    """Facts recorded with every result: cores, load average, Python, kernel."""
    return {
        "cores": os.cpu_count() or 0,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(values: Iterable[float], digits: int = 3) -> float:
    return round(statistics.median(list(values)), digits)


def spread(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, min, max and the runs themselves."""
    vals = list(values)
    return {
        "median": round(statistics.median(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "runs": [round(v, digits) for v in vals],
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank of the sorted values (0.0 for none)."""
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads, gRPC's included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def target(name: str, goal: str, value: float, met: bool, unit: str = "") -> dict[str, Any]:
    """One target row: what is aimed at, what was measured, and whether it is met."""
    return {"name": name, "target": goal, "value": value, "unit": unit, "met": bool(met)}


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    rows = ["| target | aim | measured | |", "| --- | --- | --- | --- |"]
    for t in targets:
        rows.append(f"| {t['name']} | {t['target']} | {measured(t)} | {verdict(t)} |")
    return "\n".join(rows)


def measured(t: dict[str, Any]) -> str:
    value = f"{t['value']:,}" if isinstance(t["value"], int) and not isinstance(t["value"], bool) else f"{t['value']}"
    return f"{value} {t['unit']}".strip()


def verdict(t: dict[str, Any]) -> str:
    return "met" if t["met"] else "**missed**"


def missed(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in results.get("targets", []) if not t["met"]]


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def socket_bytes_sent(port: int) -> int:
    """Bytes the kernel sent on established TCP sockets whose local port is ``port`` (``ss -ti``).

    This is what went on the wire (HTTP/2 frames, gRPC headers, compression applied), not message sizes.
    """
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    total = 0
    for word in out.split():
        if word.startswith("bytes_sent:"):
            total += int(word.split(":", 1)[1])
    return total


def profile_top(fn: Callable[[], Any], top: int = 8) -> list[dict[str, Any]]:
    """Run ``fn`` under cProfile; the functions with the most own time, as shares of the total.

    cProfile inflates the cost of small Python functions, so shares are indicative, not exact.
    """
    import cProfile

    profiler = cProfile.Profile()
    profiler.runcall(fn)
    return profile_rows(profiler, top)


def profile_rows(profiler: Any, top: int = 8) -> list[dict[str, Any]]:
    """The functions with the most own time in a finished ``cProfile.Profile``, as shares of the total."""
    import pstats

    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    out = []
    for (filename, line, func), (_cc, calls, tottime, _cum, _callers) in rows:
        where = filename.split("/kube_ip_tracker/")[-1].split("/site-packages/")[-1]
        where = f"{where}:{line}" if filename != "~" else "builtin"
        out.append({"function": f"{func} ({where})", "calls": calls, "share": round(tottime / total, 3)})
    return out


def profile_table(rows: Sequence[dict[str, Any]]) -> str:
    return table(
        ("function (own time)", "calls", "share"), [(r["function"], r["calls"], f"{r['share']:.0%}") for r in rows]
    )


def count_calls(fn: Callable[[], Any]) -> int:
    """Python function calls (and builtin calls) ``fn`` makes, by cProfile: a machine-independent cost."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(fn)
    return sum(v[1] for v in pstats.Stats(profiler).stats.values()) - 1  # type: ignore[attr-defined]
