"""The project's container images, built and run with podman for tests.

:func:`build_images` runs ``hack/build-images.sh`` (the Dockerfile's ``tracker`` and ``agent``
targets on a base bootstrapped from Debian's packages) under a tag of the caller's;
:func:`run_argv` is a ``podman run`` with the options this machine needs: Debian's ``runc``, the
cgroupfs manager (both replaced by ``$KIT_PODMAN_OPTS``, as for the scripts), the host's network (the test API servers listen on loopback) and ulimits no
higher than the host's.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kube_ip_tracker.testing.clusters import PROJECT_ROOT

BUILD_SCRIPT = PROJECT_ROOT / "hack" / "build-images.sh"
#: Global podman options, replaced by $KIT_PODMAN_OPTS as in hack/podman.sh (which the image scripts
#: source; tests/manifests/test_image_build.py checks both defaults agree): crun fails on hybrid cgroup layouts.
DEFAULT_PODMAN_OPTS = "--runtime runc --cgroup-manager=cgroupfs"
PODMAN = ["podman", *shlex.split(os.environ.get("KIT_PODMAN_OPTS") or DEFAULT_PODMAN_OPTS)]
#: Per-container options: raising limits above the host's is not permitted here.
RUN_OPTIONS = ["--network=host", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
TARGETS = ("tracker", "agent")
BUILD_TIMEOUT = 1800.0


class ImageBuildError(RuntimeError):
    """hack/build-images.sh failed; the message ends with its output."""


def missing_tools() -> list[str]:
    """The commands the image build needs that are not installed (``make system-deps`` installs them)."""
    return [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]


def build_images(tag: str, log: Path) -> dict[str, str]:
    """Build both targets as ``localhost/kube-ip-TARGET:tag``; their names by target. Output goes to ``log``."""
    env = {**os.environ, "KIT_IMAGE_TAG": tag}
    with log.open("wb") as out:
        done = subprocess.run(
            [str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=out, env=env, timeout=BUILD_TIMEOUT, check=False
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise ImageBuildError(f"{BUILD_SCRIPT.name} exited {done.returncode}:\n{tail}")
    names = done.stdout.decode().split()
    expected = [f"localhost/kube-ip-{target}:{tag}" for target in TARGETS]
    if names != expected:
        raise ImageBuildError(f"{BUILD_SCRIPT.name} printed {names}, expected {expected}")
    return dict(zip(TARGETS, names, strict=True))


def run_argv(image: str, name: str, *, options: Sequence[str] = ()) -> list[str]:
    """``podman run`` of ``image`` as container ``name`` (removed when it exits); its arguments follow."""
    return [*PODMAN, "run", "--rm", "--name", name, *RUN_OPTIONS, *options, image]


def podman(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """One podman command with the global options; its result (not checked)."""
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)


def remove(containers: Sequence[str] = (), images: Sequence[str] = ()) -> None:
    """Remove containers (forcibly) and then images, ignoring the ones that are gone already."""
    if containers:
        podman("rm", "--force", "--ignore", *containers)
    if images:
        podman("rmi", "--force", "--ignore", *images)
