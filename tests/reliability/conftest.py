"""Fixtures: real tracker processes, stopped at the end of each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from .tracker import TrackerProcess

MakeTracker = Callable[..., TrackerProcess]


@pytest.fixture
def tracker_process(tmp_path: Path) -> Iterator[MakeTracker]:
    """``tracker_process(args, metrics=False)`` makes (does not start) a tracker process; all are stopped at the end."""
    made: list[TrackerProcess] = []

    def make(args: Sequence[str], *, metrics: bool = False) -> TrackerProcess:
        proc = TrackerProcess(args, tmp_path / f"tracker-{len(made)}.log", metrics=metrics)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop()
