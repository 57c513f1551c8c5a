"""Parsing of --aws-cluster-names entries and the EKS flags."""

from __future__ import annotations

import argparse

import pytest

from kube_ip_tracker.eks import flags
from kube_ip_tracker.eks.names import ClusterNameError, EksClusterName, parse_cluster_names


def test_entries_are_parsed_deduplicated_and_ordered() -> None:
    names = parse_cluster_names(["us-east-1/prod,eu-central-1/Stage_2", "us-east-1/prod", "us-gov-west-1/gov"])
    assert names == [
        EksClusterName("us-east-1", "prod"),
        EksClusterName("eu-central-1", "Stage_2"),
        EksClusterName("us-gov-west-1", "gov"),
    ]
    assert str(names[0]) == "us-east-1/prod"
    assert names[0].default_cluster_id == "eks_us-east-1_prod"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("prod", "expected 'REGION/NAME' (e.g. 'us-east-1/prod'), got 1 '/'-separated part"),
        ("us-east-1/a/b", "got 3 '/'-separated parts"),
        ("useast1/prod", "region 'useast1' is not an AWS region"),
        ("us-east-1/-prod", "cluster name '-prod' is not valid"),
        ("us-east-1/" + "a" * 101, "is not valid (1-100 chars"),
        ("us-east-1/", "cluster name '' is not valid"),
    ],
)
def test_malformed_entries_are_named(entry: str, message: str) -> None:
    with pytest.raises(ClusterNameError) as err:
        parse_cluster_names([entry])
    assert f"invalid EKS cluster entry {entry!r}" in str(err.value)
    assert message in str(err.value)


def test_empty_entry_between_commas_is_rejected() -> None:
    with pytest.raises(ClusterNameError, match="empty entry between commas"):
        parse_cluster_names(["us-east-1/a,,us-east-1/b"])


def _parse(*argv: str) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="kube-ip-tracker")
    flags.add_arguments(parser)
    return parser, parser.parse_args(list(argv))


def test_flags_defaults_and_validation(capsys: pytest.CaptureFixture[str]) -> None:
    parser, args = _parse()
    flags.validate(parser, args)
    assert flags.cluster_names(args) == []
    assert (args.aws_token_refresh_interval, args.reconcile_interval, args.cluster_removal_grace) == (600, 300, 60)
    assert flags.build_reconciler(args, supervisor=None) is None  # type: ignore[arg-type]

    for argv, message in (
        (["--aws-cluster-names=us-east-1/ok,prod"], "invalid EKS cluster entry 'prod'"),
        (["--aws-token-refresh-interval=15m"], "--aws-token-refresh-interval must be positive and below the 15m"),
    ):
        parser, args = _parse(*argv)
        with pytest.raises(SystemExit):
            flags.validate(parser, args)
        assert message in capsys.readouterr().err


def test_gke_and_eks_flags_share_interval_and_grace() -> None:
    from kube_ip_tracker.cli import build_parser, parse_args

    parser = build_parser()
    for flag in ("--reconcile-interval", "--cluster-removal-grace"):
        assert len([a for a in parser._actions if flag in a.option_strings]) == 1
    args = parse_args(["--aws-cluster-names=us-east-1/a", "--gcp-cluster-names=my-project/europe-west1/b"])
    assert args.aws_cluster_names == ["us-east-1/a"] and args.gcp_cluster_names == ["my-project/europe-west1/b"]
