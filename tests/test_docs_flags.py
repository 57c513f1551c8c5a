"""Every command-line flag an operator can set is documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from kube_ip_tracker.agent import cli as agent_cli
from kube_ip_tracker.cli import build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def _run_parser() -> argparse.ArgumentParser:
    parser = agent_cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["run"]
    raise AssertionError("kube-ip-agent has no run command")


@pytest.mark.parametrize(
    ("doc", "parser"),
    [("tracker.md", build_parser), ("agent.md", _run_parser)],
    ids=["kube-ip-tracker", "kube-ip-agent run"],
)
def test_every_flag_is_documented(doc: str, parser) -> None:  # type: ignore[no-untyped-def]
    text = (DOCS / doc).read_text()
    missing = sorted(flag for flag in _flags(parser()) if not re.search(f"`{re.escape(flag)}(?![-a-z0-9])", text))
    assert not missing, f"docs/{doc} does not mention {', '.join(missing)}"
