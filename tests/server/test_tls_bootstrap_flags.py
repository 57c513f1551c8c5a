"""--tls-bootstrap-* flags: what they build, and the errors that name the flag."""

from __future__ import annotations

import pytest

from kube_ip_tracker import cli
from kube_ip_tracker.server.tls_bootstrap_flags import bootstrap_from_args


def test_off_by_default_and_the_names_of_the_service() -> None:
    assert bootstrap_from_args(cli.parse_args([])) is None
    args = cli.parse_args(
        ["--tls-bootstrap-secret=tls", "--tls-bootstrap-namespace=ops", "--tls-bootstrap-extra-names=hub.example.com"]
    )
    bootstrap = bootstrap_from_args(args)
    assert bootstrap is not None and bootstrap.spec.in_cluster
    assert bootstrap.config.names == (
        "kube-ip-tracker",
        "kube-ip-tracker.ops",
        "kube-ip-tracker.ops.svc",
        "kube-ip-tracker.ops.svc.cluster.local",
        "hub.example.com",
    )
    assert (bootstrap.config.namespace, bootstrap.config.secret, bootstrap.config.configmap) == (
        "ops",
        "tls",
        "kube-ip-tracker-ca",
    )
    assert bootstrap.config.check_interval == 60.0  # 30-day certificates: read again every minute


def test_the_namespace_comes_from_pod_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "kube-system")
    bootstrap = bootstrap_from_args(cli.parse_args(["--tls-bootstrap-secret=tls"]))
    assert bootstrap is not None and bootstrap.config.namespace == "kube-system"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-bootstrap-secret=tls"], "needs --tls-bootstrap-namespace or $POD_NAMESPACE"),
        (
            ["--tls-bootstrap-secret=tls", "--tls-bootstrap-namespace=ns", "--tls-cert-file=a", "--tls-key-file=b"],
            "contradicts --tls-cert-file",
        ),
        (["--tls-bootstrap-secret=Bad_Name", "--tls-bootstrap-namespace=ns"], "--tls-bootstrap-secret='Bad_Name'"),
        (
            ["--tls-bootstrap-secret=tls", "--tls-bootstrap-namespace=ns", "--tls-bootstrap-ca-validity=1h",
             "--tls-bootstrap-cert-validity=1h"],
            "--tls-bootstrap-ca-validity: the CA validity (1:00:00) must be at least twice",
        ),
    ],
)  # fmt: skip
def test_inconsistent_flags_are_named(argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    with pytest.raises(ValueError, match=None) as error:
        bootstrap_from_args(cli.parse_args(argv))
    assert message in str(error.value)


def test_bad_values_exit_at_parse_time(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--tls-bootstrap-cert-validity=0s"], ["--tls-bootstrap-extra-names=not a name"]):
        with pytest.raises(SystemExit) as exit_:
            cli.parse_args(argv)
        assert exit_.value.code == 2
    assert "invalid DNS name 'not a name'" in capsys.readouterr().err
