"""Flags every provider's discovery shares: the reconcile interval and the removal grace period."""

from __future__ import annotations

import argparse

from kube_ip_tracker.durations import parse_duration


def _has_option(parser: argparse.ArgumentParser, option: str) -> bool:
    return option in parser._option_string_actions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--reconcile-interval`` (and ``--cluster-removal-grace`` if the parser lacks it), once."""
    if _has_option(parser, "--reconcile-interval"):
        return
    group = parser.add_argument_group("clusters discovered by name (GKE, EKS)")
    group.add_argument(
        "--reconcile-interval",
        type=parse_duration,
        default=300.0,
        metavar="DURATION",
        help="how often to re-read the GKE and EKS clusters (default 5m); failed passes are retried sooner",
    )
    if not _has_option(parser, "--cluster-removal-grace"):
        add_removal_grace_argument(group)


def add_removal_grace_argument(group: argparse._ArgumentGroup) -> None:
    """``--cluster-removal-grace``: the tracker's one grace period for every kind of removed cluster."""
    group.add_argument(
        "--cluster-removal-grace",
        type=parse_duration,
        default=60.0,
        metavar="DURATION",
        help="how long a removed cluster's objects stay in the index before they are purged (default 1m)",
    )


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through ``parser.error`` when a shared flag is out of range."""
    if args.reconcile_interval <= 0:
        parser.error(f"--reconcile-interval must be positive, got {args.reconcile_interval}s")
