"""Fixtures: real tracker processes, stopped at the end of each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .tracker import TrackerProcess

MakeTracker = Callable[..., TrackerProcess]


@pytest.fixture
def tracker_process(tmp_path: Path) -> Iterator[MakeTracker]:
    """``tracker_process(args, metrics=False)`` makes (does not start) a tracker
    process named tracker-N; all are stopped at the end."""
    made: list[TrackerProcess] = []

    def make(args: Sequence[str], **kwargs: Any) -> TrackerProcess:
        proc = TrackerProcess(f"tracker-{len(made)}", args, tmp_path, **kwargs)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop()
