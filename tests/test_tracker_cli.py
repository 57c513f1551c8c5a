"""The kube-ip-tracker command line: flags, configuration errors at start, log format."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kube_ip_tracker.cli import parse_args
from kube_ip_tracker.cluster_labels import DEFAULT_KEYS, LabelRule, Mode, rule_from_args
from kube_ip_tracker.logs import KlogFormatter

TRACKER_BIN = Path(sys.executable).with_name("kube-ip-tracker")


def run_tracker(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TRACKER_BIN), "--metrics-address", "", "--listen-address", "127.0.0.1:0", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def kubeconfig(path: Path, *contexts: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": c, "cluster": {"server": "https://127.0.0.1:1"}} for c in contexts],
                "users": [{"name": c, "user": {"token": "t"}} for c in contexts],
                "contexts": [{"name": c, "context": {"cluster": c, "user": c}} for c in contexts],
            }
        )
    )
    return path


def test_defaults_and_flag_values() -> None:
    args = parse_args([])
    assert (args.listen_address, args.metrics_address, args.cluster_id) == ("0.0.0.0:50051", "0.0.0.0:9090", "local")
    args = parse_args(
        [
            "--kubeconfig",
            "a",
            "--kubeconfig",
            "b",
            "--ready-timeout",
            "2m",
            "--log-level",
            "DEBUG",
            "--max-watchers",
            "7",
        ]
    )
    assert args.kubeconfig == ["a", "b"] and args.ready_timeout == 120 and args.log_level == logging.DEBUG
    assert args.max_watchers == 7


def test_cluster_label_flags() -> None:
    args = parse_args([])
    assert rule_from_args(args) == LabelRule(Mode.ENFORCE, DEFAULT_KEYS)
    args = parse_args(["--cluster-labels", "fill", "--cluster-label-keys", "example.com/cluster, example.com/cluster"])
    assert rule_from_args(args) == LabelRule(Mode.FILL, ("example.com/cluster",))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen-address", "nope"], "invalid address 'nope'"),
        (["--ready-timeout", "soon"], "invalid duration 'soon'"),
        (["--max-watchers", "0"], "must be at least 1"),
        (["--log-level", "loud"], "invalid log level 'loud'"),
        (["--cluster-id", ""], "--cluster-id must not be empty"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--cluster-labels", "always"], "invalid mode 'always': choose from enforce, fill, off"),
        (["--cluster-label-keys", "a/b/c"], "invalid label key 'a/b/c'"),
        (["--cluster-label-keys", " , "], "no label key given"),
    ],
)
def test_bad_flags_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_flag_process_exit_code() -> None:
    result = run_tracker("--listen-address", "x")
    assert result.returncode == 2 and "invalid address" in result.stderr


def test_missing_kubeconfig_exits_nonzero_naming_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = run_tracker("--kubeconfig", str(missing))
    assert result.returncode == 1
    assert f"kubeconfig {missing}: file does not exist" in result.stderr


def test_invalid_kubeconfig_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("contexts: [{name: a, context: {cluster: nowhere}}]\n")
    result = run_tracker("--kubeconfig", str(bad))
    assert result.returncode == 1
    assert "refers to undefined cluster 'nowhere'" in result.stderr and str(bad) in result.stderr


def test_duplicate_cluster_ids_exit_nonzero_naming_both_files(tmp_path: Path) -> None:
    a = kubeconfig(tmp_path / "a.yaml", "one", "two")
    b = kubeconfig(tmp_path / "b.yaml", "two")
    result = run_tracker("--kubeconfig", str(a), "--kubeconfig", str(b))
    assert result.returncode == 1
    assert "'two'" in result.stderr and str(a) in result.stderr and str(b) in result.stderr


def test_kubeconfig_dir_errors_at_start(tmp_path: Path) -> None:
    result = run_tracker("--kubeconfig-dir", str(tmp_path / "nodir"))
    assert result.returncode == 1 and "nodir" in result.stderr
    kubeconfig(tmp_path / "static.yaml", "one")
    (tmp_path / "dir").mkdir()
    kubeconfig(tmp_path / "dir" / "one.yaml", "one")
    result = run_tracker("--kubeconfig", str(tmp_path / "static.yaml"), "--kubeconfig-dir", str(tmp_path / "dir"))
    assert result.returncode == 1 and "is already defined by --kubeconfig" in result.stderr


def test_no_cluster_flags_outside_a_cluster_exits_nonzero() -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    result = run_tracker(env=env)
    assert result.returncode == 1
    assert "in-cluster configuration is unusable" in result.stderr


def test_klog_format() -> None:
    record = logging.LogRecord(
        "kube_ip_tracker.sources.kube", logging.WARNING, "/x/kube.py", 42, "hi %s", ("c1",), None
    )
    record.created = 1795485159.123456
    line = KlogFormatter().format(record)
    assert re.fullmatch(r"W1124 01:52:39\.123456 +\d+ kube\.py:42\] sources\.kube: hi c1", line), line


def test_gke_flags_share_the_cluster_removal_grace_flag() -> None:
    from kube_ip_tracker.cli import build_parser

    parser = build_parser()
    grace = [a for a in parser._actions if "--cluster-removal-grace" in a.option_strings]
    assert len(grace) == 1  # one flag, the cluster group's, used by kubeconfig-dir and GKE clusters alike
    group = next(g for g in parser._action_groups if grace[0] in g._group_actions)
    assert group.title == "clusters"
    args = parse_args(["--gcp-cluster-names=my-project/europe-west1/a", "--cluster-removal-grace=10s"])
    assert (args.cluster_removal_grace, args.reconcile_interval) == (10.0, 300.0)


def test_malformed_gke_cluster_name_exits_2_naming_it() -> None:
    result = run_tracker("--gcp-cluster-names", "my-project/europe-west1/ok,prod")
    assert result.returncode == 2
    assert "invalid GKE cluster entry 'prod': a bare cluster name needs --gcp-project and --gcp-location" in (
        result.stderr
    )


def test_gke_clusters_without_google_credentials_exit_1(tmp_path: Path) -> None:
    # No in-cluster fallback with --gcp-cluster-names: the error is about Google credentials.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "no.json")}
    result = run_tracker("--gcp-cluster-names", "my-project/europe-west1/a", env=env)
    assert result.returncode == 1
    assert "--gcp-cluster-names is set but Google application default credentials are unusable" in result.stderr
    assert "no.json" in result.stderr and "in-cluster" not in result.stderr


def test_malformed_eks_cluster_name_exits_2_naming_it() -> None:
    result = run_tracker("--aws-cluster-names", "us-east-1/ok,prod")
    assert result.returncode == 2
    assert "invalid EKS cluster entry 'prod': expected 'REGION/NAME'" in result.stderr


def test_eks_clusters_without_aws_credentials_exit_1(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    result = run_tracker("--aws-cluster-names", "us-east-1/a", env=env)
    assert result.returncode == 1
    assert "--aws-cluster-names is set but no AWS credentials were found" in result.stderr
    assert "in-cluster" not in result.stderr
