"""Reading manifests/ for tests: objects, containers, args as the kubelet passes them, field comparison."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
INSTALL = MANIFESTS / "install.yaml"

Obj = dict[str, Any]

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def package_version() -> str:
    """The version in pyproject.toml."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def load(path: Path = INSTALL) -> list[Obj]:
    """The non-empty YAML documents of a manifest file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    """The one object of ``kind`` named ``name``; AssertionError listing what there is otherwise."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)} among {[key(o) for o in objects]}"
    return found[0]


def key(obj: Obj) -> str:
    """``Kind/namespace/name`` (namespace omitted for cluster-scoped objects)."""
    meta = obj["metadata"]
    return "/".join(p for p in (obj["kind"], meta.get("namespace", ""), meta["name"]) if p)


def pod_spec(obj: Obj) -> Obj:
    """The pod template's spec of a workload."""
    return obj["spec"]["template"]["spec"]


def containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) for every container and init container of every workload."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            spec = pod_spec(obj)
            for container in spec.get("initContainers", []) + spec.get("containers", []):
                yield obj, container


def expand_args(container: Obj) -> list[str]:
    """The container's args with ``$(VAR)`` references expanded as the kubelet does.

    Values from ``valueFrom`` (downward API, secrets) become ``<VAR>`` placeholders; unknown
    variables stay as written, like in Kubernetes.
    """
    env: dict[str, str] = {}
    for var in container.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else f"<{var['name']}>"
    return [_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), arg) for arg in container.get("args", [])]


def missing_fields(sent: Any, got: Any, path: str = "") -> list[str]:
    """Paths of ``sent`` that ``got`` (the API server's answer) lacks or holds with another value.

    API servers before 1.25 drop unknown fields silently: a field the server did not keep is one it
    does not know. Defaults the server adds are fine; list items are compared by position.
    """
    if isinstance(sent, dict):
        if not isinstance(got, dict):
            return [path or "."]
        out: list[str] = []
        for k, v in sent.items():
            sub = f"{path}.{k}"
            out += missing_fields(v, got[k], sub) if k in got else [sub]
        return out
    if isinstance(sent, list):
        if not isinstance(got, list) or len(got) != len(sent):
            return [path]
        out = []
        for i, (a, b) in enumerate(zip(sent, got, strict=True)):
            out += missing_fields(a, b, f"{path}[{i}]")
        return out
    return [] if sent == got or str(sent) == str(got) else [f"{path} ({sent!r} != {got!r})"]


def parse_or_fail(parse, argv: list[str], what: str) -> argparse.Namespace:  # type: ignore[no-untyped-def]
    """Parse with a real CLI parser; a usage error fails the test with the parser's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(argv)
    except SystemExit as exc:
        pytest.fail(f"{what}: args {argv} rejected (exit {exc.code}): {err.getvalue().strip()}")


async def probe_exit_code(argv: list[str]) -> int:
    """Run a probe command (e.g. the readiness probe's, pointed at a local process); its exit code."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    async with asyncio.timeout(30):
        return await proc.wait()
