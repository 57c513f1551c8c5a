"""The host-wide hold on net.ipv6.conf.all.forwarding that IPv6 pod networks take, against a stand-in
sysctl file and state directory (the real ones belong to the host and to other test processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kube_ip_tracker.testing import netns


@pytest.fixture
def sysctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in forwarding sysctl holding "0", and an empty state directory."""
    path = tmp_path / "forwarding"
    path.write_text("0\n")
    monkeypatch.setattr(netns, "_FORWARDING6", str(path))
    monkeypatch.setattr(netns, "_STATE_DIR", str(tmp_path / "state"))
    return path


def value(path: Path) -> str:
    return path.read_text().strip()


def test_forwarding_is_on_while_any_holder_remains_and_restored_by_the_last(sysctl: Path) -> None:
    netns.hold_ipv6_forwarding("a")
    assert value(sysctl) == "1"
    netns.hold_ipv6_forwarding("b")
    netns.release_ipv6_forwarding("a")
    assert value(sysctl) == "1", "b still holds it"
    netns.release_ipv6_forwarding("b")
    assert value(sysctl) == "0"
    netns.release_ipv6_forwarding("b")  # a second release changes nothing
    assert value(sysctl) == "0"


def test_a_host_that_forwards_already_keeps_forwarding(sysctl: Path) -> None:
    sysctl.write_text("1\n")
    netns.hold_ipv6_forwarding("a")
    netns.release_ipv6_forwarding("a")
    assert value(sysctl) == "1"


def test_holders_of_dead_processes_do_not_keep_it_on(sysctl: Path) -> None:
    """A test process that crashed left its holder file and the value it found; the next one restores it."""
    netns.hold_ipv6_forwarding("mine")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state = Path(netns._STATE_DIR)
    (state / f"{netns._HOLDER}{int(dead.stdout)}.crashed").write_text("")
    netns.release_ipv6_forwarding("mine")
    assert value(sysctl) == "0"
    assert not [p.name for p in state.iterdir() if p.name.startswith(netns._HOLDER)]

    # Crashed while holding alone: forwarding stays on, and the saved value survives for the next holder.
    sysctl.write_text("1\n")
    (state / netns._SAVED).write_text("0")
    (state / f"{netns._HOLDER}{int(dead.stdout)}.crashed").write_text("")
    netns.hold_ipv6_forwarding("next")
    netns.release_ipv6_forwarding("next")
    assert value(sysctl) == "0"
