"""Parsing of --gcp-cluster-names entries and of the GKE flags."""

from __future__ import annotations

import argparse

import pytest

from kube_ip_tracker.gke import flags
from kube_ip_tracker.gke.names import ClusterNameError, GkeClusterName, parse_cluster_name, parse_cluster_names


def test_full_names_comma_separated_and_repeated() -> None:
    names = parse_cluster_names(
        ["my-project/europe-west1/prod-a,my-project/europe-west1-b/prod-b", "other-proj/us-central1/c1"]
    )
    assert names == [
        GkeClusterName("my-project", "europe-west1", "prod-a"),
        GkeClusterName("my-project", "europe-west1-b", "prod-b"),
        GkeClusterName("other-proj", "us-central1", "c1"),
    ]
    assert names[0].resource == "projects/my-project/locations/europe-west1/clusters/prod-a"
    assert names[0].default_cluster_id == "gke_my-project_europe-west1_prod-a"


def test_resource_form_duplicates_and_whitespace() -> None:
    names = parse_cluster_names(
        [" projects/my-project/locations/us-east4/clusters/x , my-project/us-east4/x", "my-project/us-east4/y"]
    )
    assert [str(n) for n in names] == ["my-project/us-east4/x", "my-project/us-east4/y"]


def test_bare_names_use_defaults() -> None:
    names = parse_cluster_names(["a,europe-west4/b"], default_project="my-project", default_location="us-west1")
    assert names == [GkeClusterName("my-project", "us-west1", "a"), GkeClusterName("my-project", "europe-west4", "b")]


@pytest.mark.parametrize(
    ("entry", "project", "location", "message"),
    [
        ("prod", None, None, "'prod': a bare cluster name needs --gcp-project and --gcp-location"),
        ("prod", "my-project", None, "'prod': a bare cluster name needs --gcp-location"),
        ("us-west1/prod", None, None, "'us-west1/prod': 'location/cluster' needs --gcp-project"),
        ("a/b/c/d", None, None, "'a/b/c/d': expected 'project/location/cluster', got 4"),
        ("My-Project/us-west1/prod", None, None, "project 'My-Project' is not valid"),
        ("my-project/west/prod", None, None, "location 'west' is not valid"),
        ("my-project/us-west1/Prod_1", None, None, "cluster name 'Prod_1' is not valid"),
        ("my-project/us-west1/" + "x" * 41, None, None, "cluster name 'xxxx"),
    ],
)
def test_malformed_entries_are_named(entry: str, project: str | None, location: str | None, message: str) -> None:
    with pytest.raises(ClusterNameError) as err:
        parse_cluster_name(entry, project, location)
    assert message in str(err.value)
    assert f"invalid GKE cluster entry {entry!r}" in str(err.value)


def test_empty_entry_between_commas_is_rejected() -> None:
    with pytest.raises(ClusterNameError, match="empty entry between commas"):
        parse_cluster_names(["my-project/us-west1/a,,my-project/us-west1/b"])


def test_bad_default_project_is_rejected() -> None:
    with pytest.raises(ClusterNameError, match="--gcp-project 'X' is not valid"):
        parse_cluster_names(["a"], default_project="X", default_location="us-west1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kube-ip-tracker")
    flags.add_arguments(parser)
    return parser


def test_flag_defaults_and_values() -> None:
    parser = _parser()
    args = parser.parse_args([])
    assert args.reconcile_interval == 300.0
    assert args.cluster_removal_grace == 60.0
    assert flags.cluster_names(args) == []
    args = parser.parse_args(
        [
            "--gcp-cluster-names",
            "a,b",
            "--gcp-cluster-names=p-1234/us-west1/c",
            "--gcp-project",
            "my-project",
            "--gcp-location",
            "europe-west1",
            "--reconcile-interval",
            "30s",
            "--cluster-removal-grace",
            "2m",
        ]
    )
    flags.validate(parser, args)
    assert [str(n) for n in flags.cluster_names(args)] == [
        "my-project/europe-west1/a",
        "my-project/europe-west1/b",
        "p-1234/us-west1/c",
    ]
    assert (args.reconcile_interval, args.cluster_removal_grace) == (30.0, 120.0)


def test_malformed_flag_stops_start_with_the_entry_named(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    args = parser.parse_args(["--gcp-cluster-names", "my-project/us-west1/ok,broken/entry"])
    with pytest.raises(SystemExit) as exc:
        flags.validate(parser, args)
    assert exc.value.code == 2
    assert "invalid GKE cluster entry 'broken/entry'" in capsys.readouterr().err


def test_existing_removal_grace_flag_is_kept() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cluster-removal-grace", type=float, default=7.0)
    flags.add_arguments(parser)
    assert parser.parse_args([]).cluster_removal_grace == 7.0


def test_no_clusters_means_no_reconciler() -> None:
    args = _parser().parse_args([])
    assert flags.build_reconciler(args, supervisor=None) is None  # type: ignore[arg-type]
