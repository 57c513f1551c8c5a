"""Durations on the command line."""

from __future__ import annotations

import argparse

import pytest

from kube_ip_tracker.cli import parse_args
from kube_ip_tracker.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("1.5", 1.5), ("500ms", 0.5), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("2h", 7200.0)],
)
def test_go_style_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "1h-3m", "m5", "-1s", "-2", "inf", "nan", "5m garbage"])
def test_bad_durations_are_named(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        parse_duration(text)


def test_tracker_flags_take_compound_durations() -> None:
    args = parse_args(["--kubeconfig", "x", "--cluster-removal-grace", "1h30m", "--ready-timeout", "2m30s"])
    assert args.cluster_removal_grace == 5400.0
    assert args.ready_timeout == 150.0
