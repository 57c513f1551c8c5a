"""The Dockerfile's build without Docker: its context, its package wheel and its entry points.

CI has no container runtime, so this does what the ``wheels`` stage does with the files the
``.dockerignore`` lets into the context, and runs the images' commands from that wheel alone.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kube_ip_tracker import cli as tracker_cli
from kube_ip_tracker.server import healthcheck

from .manifest import ROOT, containers, load, package_version

DOCKERFILE = ROOT / "Dockerfile"


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def excluded(rel: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` keeps ``rel`` out of the context (last matching pattern wins)."""
    parts = rel.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            result = not negate
    return result


def docker_context(patterns: list[str]) -> list[str]:
    """Relative paths of the files Docker sends as the build context."""
    kept: list[str] = []
    reincluded = [p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")]
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [
            d
            for d in dirnames
            if not excluded(prefix + d, patterns) or any(r.startswith(prefix + d + "/") for r in reincluded)
        ]
        kept += [prefix + f for f in filenames if not excluded(prefix + f, patterns)]
    return kept


def copy_sources(dockerfile: str) -> list[str]:
    """Sources of the COPY instructions that read the build context (not other stages)."""
    sources: list[str] = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    return sources


def test_the_context_holds_what_the_dockerfile_copies_and_nothing_local() -> None:
    context = docker_context(ignore_patterns())
    for source in copy_sources(DOCKERFILE.read_text()):
        source = source.rstrip("/")
        assert any(f == source or f.startswith(source + "/") for f in context), f"COPY {source}: not in the context"
    assert "kube_ip_tracker/server/healthcheck.py" in context
    for rel in context:
        assert not rel.startswith((".venv/", ".git/", "tests/")) and "__pycache__" not in rel, rel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package wheel built, as the ``wheels`` stage does, from only what the Dockerfile copies."""
    src = tmp_path_factory.mktemp("src")
    context = docker_context(ignore_patterns())
    for source in copy_sources(DOCKERFILE.read_text()):
        source = source.rstrip("/")
        for rel in context:
            if rel == source or rel.startswith(source + "/"):
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("wheels")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
    try:
        if int(importlib.metadata.version("setuptools").split(".")[0]) >= 68:
            argv.insert(-1, "--no-build-isolation")  # the build backend is here already: no download
    except importlib.metadata.PackageNotFoundError:
        pass
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    [built] = out.glob("*.whl")
    return built


def test_wheel_version_extras_and_entry_points(wheel: Path) -> None:
    version = package_version()
    assert wheel.name.startswith(f"kube_ip_tracker-{version}-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"kube_ip_tracker-{version}.dist-info"
        metadata = zf.read(f"{info}/METADATA").decode()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert "kube_ip_tracker/api/v1/tracker_pb2.py" in names and "kube_ip_tracker/server/healthcheck.py" in names
    assert re.search(r'^Requires-Dist: NetfilterQueue==\S+; extra == "dataplane"$', metadata, re.MULTILINE)
    # The ENTRYPOINTs of the two image targets are the package's console scripts.
    dockerfile = DOCKERFILE.read_text()
    for target, script, module in (
        ("tracker", "kube-ip-tracker", "kube_ip_tracker.tracker_entry:main"),
        ("agent", "kube-ip-agent", "kube_ip_tracker.agent.cli:main"),
    ):
        stage = dockerfile.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert f'ENTRYPOINT ["{script}"]' in stage
        assert f"{script} = {module}" in entry_points


def test_commands_of_the_manifest_run_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked)}

    def run(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-P", *argv], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
        )
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stderr}"
        return done.stdout

    assert run("-c", "import kube_ip_tracker; print(kube_ip_tracker.__file__)").startswith(str(unpacked))
    assert "--gcp-cluster-names" in run("-m", tracker_cli.__name__, "--help")
    assert "--tracker-address" in run("-m", "kube_ip_tracker.agent.cli", "run", "--help")
    # The readiness probe's exact command (the image's python runs it as "python -m ...").
    for _, container in containers(load()):
        command = container.get("readinessProbe", {}).get("exec", {}).get("command")
        if command:
            assert command[:3] == ["python", "-m", healthcheck.__name__]
            assert "--address" in run(*command[1:3], "--help")


def test_apt_packages_of_the_dockerfile_exist_in_debian_12() -> None:
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None or not Path("/etc/debian_version").read_text().startswith("12"):
        pytest.skip("needs Debian 12's apt-cache (the images are based on bookworm)")
    packages = []
    for block in re.findall(r"apt-get install ([^&]+)", DOCKERFILE.read_text()):
        packages += [w for w in block.replace("\\", " ").split() if not w.startswith("-")]
    assert {"libnetfilter-queue1", "iptables", "conntrack", "gcc", "libnetfilter-queue-dev"} <= set(packages)
    done = subprocess.run([apt_cache, "show", "--no-all-versions", *packages], capture_output=True, text=True)
    found = set(re.findall(r"^Package: (\S+)$", done.stdout, re.MULTILINE))
    if not found:
        pytest.skip("apt package lists are empty (run apt-get update)")
    assert found == set(packages), f"not in the apt lists: {set(packages) - found}"
