"""Upstream flags of the tracker command line: values, bad input, configuration errors at start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from kube_ip_tracker.cli import parse_args
from kube_ip_tracker.index import Index
from kube_ip_tracker.sources.upstream import build_upstreams, default_tracker_id
from kube_ip_tracker.testing.trackers import TRACKER_CMD


def run_tracker(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRACKER_CMD, "--metrics-address", "", "--listen-address", "127.0.0.1:0", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


def kubeconfig(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "c", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "c"}}],
            }
        )
    )
    return path


def test_flag_values_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse_args(["--tracker-id", "spoke-1", "--upstream-tracker", "hub:50051", "--upstream-tracker", "[::1]:7"])
    assert args.tracker_id == "spoke-1" and args.upstream_tracker == ["hub:50051", "[::1]:7"]
    monkeypatch.setenv("POD_NAME", "kube-ip-tracker-7d9f-abcde")
    assert default_tracker_id() == "kube-ip-tracker-7d9f-abcde"
    monkeypatch.delenv("POD_NAME")
    assert default_tracker_id()  # the host name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tracker-id", "has space"], "invalid tracker id 'has space'"),
        (["--tracker-id", ""], "invalid tracker id ''"),
        (["--upstream-tracker", "hub"], "--upstream-tracker: tracker address 'hub': missing ':port'"),
    ],
)
def test_bad_flags_exit_2_naming_the_value(argv: list[str], message: str) -> None:
    result = run_tracker(*argv)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_configuration_errors_exit_1_naming_the_problem(tmp_path: Path) -> None:
    config = str(kubeconfig(tmp_path / "kc"))
    result = run_tracker("--kubeconfig", config, "--upstream-tracker", "h:1", "--upstream-tracker", "h:1")
    assert result.returncode == 1 and "--upstream-tracker given more than once for: h:1" in result.stderr
    missing = tmp_path / "nope.pem"
    result = run_tracker("--kubeconfig", config, "--upstream-tracker", "h:1", "--upstream-ca-file", str(missing))
    assert result.returncode == 1 and f"cannot read TLS CA file {missing}" in result.stderr, result.stderr
    result = run_tracker("--kubeconfig", config, "--upstream-tracker", "h:1", "--upstream-cert-file", config)
    assert result.returncode == 1 and "--upstream-cert-file and --upstream-key-file must be given together" in (
        result.stderr
    )


def test_bad_default_tracker_id_asks_for_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "not valid")
    with pytest.raises(ValueError, match="set --tracker-id"):
        build_upstreams(Index(), parse_args([]))
