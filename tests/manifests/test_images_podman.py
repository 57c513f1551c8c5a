"""The images built and run for real: podman builds both Dockerfile targets on a Debian base made
with debootstrap (hack/build-images.sh), the tracker image serves a real API server's cluster until
its gRPC health says SERVING, and the agent image evaluates the shared conformance cases.

Marked ``images``: the default ``make test`` leaves it out and ``.ci/run`` runs it (``make test-images``);
docs/deploy.md says why and how long it takes.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kube_ip_tracker.model import PodRecord
from kube_ip_tracker.server import healthcheck
from kube_ip_tracker.testing import images as podman_images
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.trackers import TrackerProcess, eventually

from .manifest import ROOT, containers, find, load, pod_spec

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.images]

CASES_DIR = ROOT / ".." / "shared" / "conformance" / "cases"
KUBECONFIG = "/etc/kube-ip-tracker/kubeconfig"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Both images under a tag of this test run's own; removed afterwards (the layer cache stays)."""
    if missing := podman_images.missing_tools():
        pytest.fail(f"the image build needs {', '.join(missing)}: run 'make system-deps' as root")
    tag = f"test-{secrets.token_hex(4)}"
    try:
        yield podman_images.build_images(tag, tmp_path_factory.mktemp("images") / "build.log")
    finally:
        podman_images.remove(images=[f"localhost/kube-ip-{target}:{tag}" for target in podman_images.TARGETS])


def container_name(role: str) -> str:
    return f"kit-test-{role}-{secrets.token_hex(4)}"


def test_the_images_are_what_the_manifest_expects(built: dict[str, str]) -> None:
    """The tracker runs as the Deployment's non-root user; the agent as root (NET_ADMIN from the DaemonSet)."""
    manifest = load()
    uid = pod_spec(find(manifest, "Deployment", "kube-ip-tracker"))["securityContext"]["runAsUser"]
    for target, user in (("tracker", f"{uid}:{uid}"), ("agent", "")):
        done = podman_images.podman("image", "inspect", "--format", "{{.Config.User}}", built[target])
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == user, f"{target} image user"


async def test_tracker_image_serves_a_real_api_server(built: dict[str, str], cluster_factory, tmp_path: Path) -> None:
    [cluster] = cluster_factory(1, names=["image"])
    async with cluster.api_client() as api:
        await objects.create_namespace(api, "shop")
        await objects.create_pod(api, "shop", "web-0", labels={"app": "web"}, ips=["10.9.0.7"])
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(cluster.kubeconfig_dict(embed_ca=True)))
    kubeconfig.chmod(0o644)  # the image's user (65532) reads it
    name = container_name("tracker")
    # As the Deployment runs it: read-only root filesystem, no capabilities, no privilege escalation.
    options = [
        "--read-only",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "-v",
        f"{kubeconfig}:{KUBECONFIG}:ro",
    ]
    tracker = TrackerProcess(
        "image",
        ["--kubeconfig", KUBECONFIG],
        tmp_path,
        metrics=True,
        command=podman_images.run_argv(built["tracker"], name, options=options),
    ).start()
    try:
        await eventually(tracker.serving, "the tracker image's gRPC health says SERVING", [tracker], within=120)
        clusters = await tracker.clusters()
        assert clusters["image"].status.synced, clusters
        pods = [r for r in await tracker.snapshot() if isinstance(r, PodRecord)]
        assert [(p.namespace, p.name, p.cluster) for p in pods if "10.9.0.7" in p.ips] == [("shop", "web-0", "image")]
        # The Deployment's readiness probe, run inside the container as the kubelet runs it.
        [probe] = [
            c["readinessProbe"]["exec"]["command"]
            for _, c in containers(load())
            if "exec" in c.get("readinessProbe", {})
        ]
        assert probe[:3] == ["python", "-m", healthcheck.__name__]
        done = podman_images.podman("exec", name, *probe[:3], f"--address={tracker.address}")
        assert done.returncode == 0, f"{probe}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        assert "SERVING" in done.stdout
    finally:
        tracker.stop()
        podman_images.remove(containers=[name])


def run_agent(image: str, *args: str, options: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    name = container_name("agent")
    argv = podman_images.run_argv(image, name, options=options or [])
    try:
        return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120, check=False)
    finally:
        podman_images.remove(containers=[name])


def test_agent_image_help_and_its_netfilter_tools(built: dict[str, str]) -> None:
    done = run_agent(built["agent"], "--help")
    assert done.returncode == 0, done.stderr
    assert "evaluate" in done.stdout and "run" in done.stdout
    # What `kube-ip-agent run` needs at hand: the NFQUEUE binding and the netfilter tools.
    script = "python -c 'import netfilterqueue' && nft --version && iptables-restore --version && conntrack --version"
    done = run_agent(built["agent"], "-c", script, options=["--entrypoint", "sh"])
    assert done.returncode == 0, f"{script}: exit {done.returncode}\n{done.stdout}{done.stderr}"


def test_agent_image_evaluates_the_conformance_cases(built: dict[str, str]) -> None:
    cases = sorted(CASES_DIR.glob("*.json"))
    if not cases:
        pytest.skip(f"no conformance cases in {CASES_DIR.resolve()}")
    mounted = [f"/cases/{c.name}" for c in cases]
    options = ["-v", f"{CASES_DIR.resolve()}:/cases:ro"]
    done = run_agent(built["agent"], "evaluate", "--check", *mounted, options=options)
    assert done.returncode == 0, f"evaluate in the image: exit {done.returncode}\n{done.stderr}"
    *lines, summary = done.stdout.splitlines()
    assert summary.endswith(" 0 failed"), summary
    in_image = {Path(json.loads(line)["file"]).name: json.loads(line)["verdicts"] for line in lines}
    # The same decisions as this checkout's agent makes on the host.
    host = subprocess.run(
        [sys.executable, "-m", "kube_ip_tracker.agent.cli", "evaluate", *map(str, cases)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    on_host = {Path(json.loads(line)["file"]).name: json.loads(line)["verdicts"] for line in host.stdout.splitlines()}
    assert in_image == on_host
    assert len(in_image) == len(cases)
