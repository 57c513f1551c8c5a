"""Argparse value types shared by the programs' flags: counts and positive durations."""

from __future__ import annotations

import argparse

from kube_ip_tracker.durations import parse_duration


def positive_int(text: str) -> int:
    """A count of at least 1; ``ArgumentTypeError`` names the bad value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must be at least 1")
    return value


def positive_duration(text: str) -> float:
    """A Go-style duration or seconds (:func:`parse_duration`) that is more than zero."""
    value = parse_duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be positive")
    return value
