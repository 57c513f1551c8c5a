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
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from kube_ip_tracker import cli as tracker_cli
from kube_ip_tracker.server import healthcheck
from kube_ip_tracker.testing import images

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


@pytest.mark.parametrize("opts", [None, "--runtime crun --log-level=debug"], ids=["default", "KIT_PODMAN_OPTS"])
def test_the_image_scripts_and_tests_run_podman_with_the_same_options(opts: str | None) -> None:
    """hack/podman.sh (sourced by the image scripts) and testing/images.py: one default, one variable."""
    env = {k: v for k, v in os.environ.items() if k != "KIT_PODMAN_OPTS"}
    if opts is not None:
        env["KIT_PODMAN_OPTS"] = opts
    script = f'. {ROOT / "hack" / "podman.sh"} && printf "%s\\n" "${{PODMAN[@]}}"'
    in_shell = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    code = "from kube_ip_tracker.testing import images; print('\\n'.join(images.PODMAN))"
    in_python = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert in_shell.stdout.split("\n") == in_python.stdout.split("\n")
    assert in_shell.stdout.split() == ["podman", *(opts or images.DEFAULT_PODMAN_OPTS).split()]
    for path in (ROOT / "hack").glob("*.sh"):  # no script starts podman with options of its own
        if path.name != "podman.sh":
            assert not re.search(r"\(podman |podman --", path.read_text()), f"{path.name} runs podman directly"


FAKE_DEBOOTSTRAP = """#!/bin/sh
echo "$3" > "$KIT_TEST_RECORD"            # debootstrap --variant=minbase SUITE TARGET MIRROR
mkdir -p "$3/etc/dpkg/dpkg.cfg.d" "$3/etc/apt/apt.conf.d" "$3/usr/share/doc"
case "$KIT_TEST_MODE" in
  hang) exec sleep 60 ;;
  save-fails) exit 0 ;;
esac
echo "E: Failed getting release file" >&2; exit 1
"""
#: No image yet; import works; save writes part of its archive, then fails (a full disk).
FAKE_PODMAN = """#!/bin/sh
case "$*" in
  *" import "*) cat >/dev/null ;;
  *" save "*) while [ "$1" != -o ]; do shift; done; echo partial > "$2"; exit 125 ;;
  *) exit 1 ;;
esac
"""


@pytest.mark.root
@pytest.mark.parametrize("mode", ["fails", "hang", "save-fails"])
def test_the_base_image_script_removes_its_tree_and_partial_archive_on_failure(tmp_path: Path, mode: str) -> None:
    """hack/debian-base-image.sh leaves no tree and no archive behind when debootstrap fails, hangs
    until SIGTERM, or the archive cannot be written. Fake podman and debootstrap come first on PATH;
    nothing reaches the real ones.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "debootstrap").write_text(FAKE_DEBOOTSTRAP)
    (bin_dir / "podman").write_text(FAKE_PODMAN)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    record = tmp_path / "target"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "KIT_CACHE_DIR": str(tmp_path / "cache"),
        "KIT_DEBIAN_MIRROR": "http://mirror.invalid/debian",
        "KIT_TEST_RECORD": str(record),
        "KIT_TEST_MODE": mode,
    }
    script = subprocess.Popen(
        [str(ROOT / "hack" / "debian-base-image.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if mode == "hang":
        deadline = time.monotonic() + 30
        while not (record.exists() and Path(record.read_text().strip(), "usr", "share", "doc").exists()):
            assert script.poll() is None and time.monotonic() < deadline, "the fake debootstrap never ran"
            time.sleep(0.05)
        os.killpg(script.pid, signal.SIGTERM)  # as a CI timeout or `kill` stops the job
    _, err = script.communicate(timeout=30)
    assert script.returncode == {"fails": 1, "hang": -signal.SIGTERM, "save-fails": 125}[mode], err
    if mode == "fails":
        assert "debootstrap failed (mirror http://mirror.invalid/debian" in err and "Failed getting release" in err
    tree = Path(record.read_text().strip())
    assert tree.parent == Path("/var/tmp") and tree.name.startswith("kit-debootstrap.")
    assert not tree.exists() and not Path(f"{tree}.log").exists()
    left = [p.name for p in (tmp_path / "cache" / "images").iterdir() if p.name != ".debian-base.lock"]
    assert not left, "no archive, whole or partial"
