"""The shared conformance cases (NetworkPolicy in ``cases/``, ClusterNetworkPolicy and
AdminNetworkPolicy/BaselineAdminNetworkPolicy in ``cnp/``), through ``kube-ip-agent evaluate --check``."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kube_ip_tracker.agent.cli import main

CONFORMANCE_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance"
CASES_DIR = CONFORMANCE_DIR / "cases"
CNP_DIR = CONFORMANCE_DIR / "cnp"
CASES = [case for folder in (CASES_DIR, CNP_DIR) for case in sorted(folder.glob("*.json"))]
needs_cases = pytest.mark.skipif(
    not CASES or not any(CNP_DIR.glob("*.json")), reason=f"conformance cases not found in {CASES_DIR} and {CNP_DIR}"
)


def run(*argv: str) -> tuple[int, list[str], list[str]]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue().splitlines(), err.getvalue().splitlines()


@needs_cases
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_passes_check(case: Path) -> None:
    probes = json.loads(case.read_text())["probes"]
    code, out, err = run("evaluate", "--check", str(case))
    assert err == []
    assert code == 0
    assert out[-1] == f"{len(probes)} passed, 0 failed"
    line = json.loads(out[0])
    assert line["file"] == str(case)
    assert line["verdicts"] == [probe["expect"] for probe in probes]


@needs_cases
def test_all_cases_as_subprocess() -> None:
    script = Path(sys.executable).with_name("kube-ip-agent")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "kube_ip_tracker.agent.cli"]
    result = subprocess.run(
        [*command, "evaluate", "--check", *map(str, CASES)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    total = sum(len(json.loads(case.read_text())["probes"]) for case in CASES)
    assert lines[-1] == f"{total} passed, 0 failed"
    assert [json.loads(line)["file"] for line in lines[:-1]] == [str(case) for case in CASES]


# ---- a small world of our own, for the command's behaviour --------------------------------------


def world(**overrides: Any) -> dict[str, Any]:
    pods = [
        {"namespace": "x", "name": "a", "labels": {"pod": "a"}, "ips": ["10.0.0.1"], "node": "n1",
         "containerPorts": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]},
        {"namespace": "x", "name": "b", "labels": {"pod": "b"}, "ips": ["10.0.0.2"], "node": "n1",
         "containerPorts": []},
    ]  # fmt: skip
    data: dict[str, Any] = {
        "name": "tiny",
        "clusters": {
            "c1": {
                "namespaces": [{"name": "x", "labels": {"kubernetes.io/metadata.name": "x"}}],
                "pods": pods,
                "networkPolicies": [
                    {
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "NetworkPolicy",
                        "metadata": {"name": "deny-ingress", "namespace": "x"},
                        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]},
                    }
                ],
            }
        },
        "probes": [
            {"from": {"cluster": "c1", "namespace": "x", "pod": "b"},
             "to": {"cluster": "c1", "namespace": "x", "pod": "a"}, "port": 80, "protocol": "TCP", "expect": "deny"},
            {"from": {"cluster": "c1", "namespace": "x", "pod": "a"},
             "to": {"cluster": "c1", "namespace": "x", "pod": "b"}, "port": 80, "protocol": "TCP", "expect": "allow"},
            {"from": {"ip": "192.0.2.7"}, "to": {"cluster": "c1", "namespace": "x", "pod": "b"},
             "port": 53, "protocol": "UDP", "expect": "allow", "why": "informative"},
        ],
    }  # fmt: skip
    data.update(overrides)
    return data


def write(tmp_path: Path, data: Any, name: str = "world.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_verdicts_without_check(tmp_path: Path) -> None:
    data = world()
    for probe in data["probes"]:
        del probe["expect"]
    path = write(tmp_path, data)
    code, out, err = run("evaluate", path)
    assert (code, err) == (0, [])
    assert out == [json.dumps({"file": path, "verdicts": ["deny", "allow", "allow"]})]


def test_check_reports_mismatches(tmp_path: Path) -> None:
    data = world()
    data["probes"][1]["expect"] = "deny"
    path = write(tmp_path, data)
    code, out, err = run("evaluate", "--check", path)
    assert code == 1
    assert out[-1] == "2 passed, 1 failed"
    assert err == [
        f"{path}: probes[1] c1/x/a -> c1/x/b TCP/80: expected deny, got allow (egress not-isolated, ingress not-isolated)"
    ]
    data["probes"][0]["expect"] = "allow"
    code, out, err = run("evaluate", "--check", write(tmp_path, data))
    assert (code, out[-1]) == (1, "1 passed, 2 failed")
    assert err[0].endswith("expected allow, got deny (egress not-isolated, ingress denied)")


def test_check_counts_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, world(), "one.json")
    second = write(tmp_path, world(), "two.json")
    code, out, _ = run("evaluate", "--check", first, second)
    assert code == 0
    assert len(out) == 3 and out[-1] == "6 passed, 0 failed"


def test_check_requires_expect(tmp_path: Path) -> None:
    data = world()
    del data["probes"][2]["expect"]
    path = write(tmp_path, data)
    code, _, err = run("evaluate", "--check", path)
    assert code == 2
    assert err == [f"{path}: probes[2].expect: required with --check"]


def mutate(data: dict[str, Any], where: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    target: Any = data
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    return data


POLICY = ("clusters", "c1", "networkPolicies", 0)
PREFIX = "clusters.c1.networkPolicies[0] (x/deny-ingress): "


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (
            (*POLICY, "spec", "ingress"),
            [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}],
            PREFIX + 'spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR "10.0.0.0/33"',
        ),
        ((*POLICY, "spec", "podSelectr"), {}, PREFIX + 'spec.podSelectr: unknown field "podSelectr"'),
        (
            (*POLICY, "spec", "podSelector"),
            {"matchExpressions": [{"key": "pod", "operator": "Equals", "values": ["a"]}]},
            PREFIX + "spec.podSelector.matchExpressions[0].operator: not a valid selector operator",
        ),
        (
            (*POLICY, "spec", "ingress"),
            [{"ports": [{"port": 70000}]}],
            PREFIX + "spec.ingress[0].ports[0].port: invalid port 70000",
        ),
        (
            ("probes", 0, "to", "pod"),
            "zz",
            "probes[0].to: pod c1/x/zz not found in the world",
        ),
        (("clusters", "c1", "pods", 0, "ips"), ["10.0.0.999"], "clusters.c1.pods[0].ips[0]: invalid IP address"),
        (("probes", 0, "expect"), "maybe", "probes[0].expect: must be"),
    ],
)
def test_invalid_input_is_one_clear_line(tmp_path: Path, where: tuple[Any, ...], value: Any, message: str) -> None:
    path = write(tmp_path, mutate(world(), where, value))
    code, out, err = run("evaluate", "--check", path)
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith(f"{path}: {message}")
    assert out == ["0 passed, 0 failed"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{not json", "malformed JSON"), ("[]", "must be an object"), ("[" * 100000, "malformed JSON")],
)
def test_malformed_files(tmp_path: Path, content: str, fragment: str) -> None:
    path = write(tmp_path, content)
    code, _, err = run("evaluate", path)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"{path}: ") and fragment in err[0]


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{")
    code, _, err = run("evaluate", missing, str(binary))
    assert code == 2
    assert err[0].startswith(f"{missing}: cannot read")
    assert err[1].startswith(f"{binary}: not UTF-8")


def test_one_bad_file_does_not_hide_the_others(tmp_path: Path) -> None:
    bad = write(tmp_path, "{", "bad.json")
    good = write(tmp_path, world(), "good.json")
    code, out, err = run("evaluate", "--check", bad, good)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(bad)
    assert json.loads(out[0])["file"] == good and out[-1] == "3 passed, 0 failed"


def test_invalid_input_as_subprocess_has_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, mutate(world(), (*POLICY, "spec", "egress"), [{"to": [{}]}]))
    result = subprocess.run(
        [sys.executable, "-m", "kube_ip_tracker.agent.cli", "evaluate", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == f"{path}: {PREFIX}spec.egress[0].to[0]: must specify a peer " + (
        "(podSelector, namespaceSelector or ipBlock)\n"
    )


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["evaluate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
