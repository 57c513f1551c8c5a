"""The images built and run for real: podman builds both Dockerfile targets on a Debian base made
with debootstrap (hack/build-images.sh), the tracker image serves a real API server's cluster until
its gRPC health says SERVING, and the agent image evaluates the shared conformance cases.

Marked ``images``: the default ``make test`` leaves it out and ``.ci/run`` runs it (``make test-images``);
docs/deploy.md says why and how long it takes.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from kubernetes_asyncio import client

from kube_ip_tracker import cli
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.client.token import AUTHORIZATION_METADATA, CLUSTER_METADATA, TOKEN_AUDIENCE
from kube_ip_tracker.model import PodRecord
from kube_ip_tracker.server import healthcheck
from kube_ip_tracker.testing import images as podman_images
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.sa_tokens import service_account_token
from kube_ip_tracker.testing.trackers import TrackerProcess, eventually

from .manifest import ROOT, containers, expand_args, find, load, pod_spec

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


# ---------------------------------------------------------------------------- the Deployment, as written
#: Where the kubelet mounts the pod's service-account token, CA and namespace (the in-cluster configuration).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Deployment args changed for this machine, each for a reason (docs/deploy.md, "How this is tested"):
#: the addresses keep their host but get free ports, since the container shares the host's network
#: with other tests; --gcp-cluster-names goes, since GKE discovery needs Google's APIs, and without a
#: cluster flag the tracker watches the cluster it runs in through the same in-cluster configuration
#: its TLS bootstrap uses. Every other arg is passed as written.
ADAPTED_FLAGS = ("--listen-address", "--metrics-address", "--gcp-cluster-names")


def _with_port(address: str, port: int) -> str:
    return f"{address.rpartition(':')[0]}:{port}"


def deployment_args(container: dict, port: int, metrics_port: int) -> list[str]:
    """The tracker container's args with the adaptations of :data:`ADAPTED_FLAGS` (each must be there)."""
    args = expand_args(container)
    flags = [arg.split("=", 1)[0] for arg in args]
    for flag in ADAPTED_FLAGS:
        assert flags.count(flag) == 1, f"the Deployment's args no longer have {flag}=...: adapt this test"
    local = {"--listen-address": port, "--metrics-address": metrics_port}
    return [
        f"{flag}={_with_port(arg.split('=', 1)[1], local[flag])}" if flag in local else arg
        for arg, flag in zip(args, flags, strict=True)
        if flag != "--gcp-cluster-names"
    ]


def _tmpfs_size(limit: str) -> str:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", limit).groups()  # type: ignore[union-attr]
    return f"{number}{unit[0].lower()}"


def pod_options(deployment: dict, container: dict, pod_name: str) -> list[str]:
    """podman options doing what the kubelet does for the tracker container: security context,
    emptyDir volumes as tmpfs, env with the downward API's values. Anything else fails the test:
    a new setting needs its translation here, or the test would run something else than the manifest."""
    spec, namespace = pod_spec(deployment), deployment["metadata"]["namespace"]
    pod_sc, sc = dict(spec.get("securityContext", {})), dict(container.get("securityContext", {}))
    options = []
    user, group = pod_sc.pop("runAsUser", None), pod_sc.pop("runAsGroup", None)
    if user is not None:
        options.append(f"--user={user}" + (f":{group}" if group is not None else ""))
    if "fsGroup" in pod_sc:
        options.append(f"--group-add={pod_sc.pop('fsGroup')}")
    assert pod_sc.pop("seccompProfile", {"type": "RuntimeDefault"}) == {"type": "RuntimeDefault"}  # podman's default
    if pod_sc.pop("runAsNonRoot", False) | sc.pop("runAsNonRoot", False):
        assert user not in (None, 0), "runAsNonRoot: this test passes the manifest's runAsUser, which must not be root"
    if sc.pop("readOnlyRootFilesystem", False):
        options += ["--read-only", "--read-only-tmpfs=false"]  # only the pod's emptyDirs are writable
    if sc.pop("allowPrivilegeEscalation", True) is False:
        options.append("--security-opt=no-new-privileges")
    capabilities = sc.pop("capabilities", {})
    options += [f"--cap-drop={c.lower()}" for c in capabilities.pop("drop", [])]
    options += [f"--cap-add={c.lower()}" for c in capabilities.pop("add", [])]
    assert not (pod_sc or sc or capabilities), f"securityContext fields this test does not translate: {pod_sc, sc}"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert set(volume) == {"name", "emptyDir"}, f"volume {volume} is not an emptyDir: translate it here"
        size = volume["emptyDir"].get("sizeLimit")
        mode = "ro" if mount.get("readOnly") else "rw"
        options.append(
            f"--tmpfs={mount['mountPath']}:{mode},mode=0777" + (f",size={_tmpfs_size(size)}" if size else "")
        )
    downward = {"metadata.name": pod_name, "metadata.namespace": namespace}
    for var in container.get("env", []):
        if "value" in var:
            options.append(f"--env={var['name']}={var['value']}")
        else:
            path = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            assert path in downward, f"env {var['name']}: only fieldRef {sorted(downward)} is translated"
            options.append(f"--env={var['name']}={downward[path]}")
    return options


def in_cluster_options(cluster, directory: Path, token: str, namespace: str) -> list[str]:  # type: ignore[no-untyped-def]
    """What the kubelet gives every pod of a service account: its token, the cluster CA and the
    namespace under SERVICE_ACCOUNT_DIR, and the API server's address in KUBERNETES_SERVICE_*
    (here the local API server on the host's loopback, which its certificate names)."""
    directory.mkdir(mode=0o755)
    for name, content in (("token", token), ("ca.crt", cluster.ca_file.read_text()), ("namespace", namespace)):
        (directory / name).write_text(content)
        (directory / name).chmod(0o644)  # the image's user reads them (the kubelet: fsGroup)
    return [
        "-v",
        f"{directory}:{SERVICE_ACCOUNT_DIR}:ro",
        "--env=KUBERNETES_SERVICE_HOST=127.0.0.1",
        f"--env=KUBERNETES_SERVICE_PORT={cluster.port}",
    ]


async def test_tracker_image_runs_with_the_deployment_args_until_it_serves(
    built: dict[str, str], cluster_factory, tmp_path: Path
) -> None:
    """The image with install.yaml's tracker container as written (args, env, security context,
    volumes, readiness probe), in a pod emulated by podman against a real API server: the TLS
    bootstrap publishes its CA, the tracker serves SERVING over TLS verified by it, the probe passes
    inside the container, and --client-auth=token refuses a call without a token and admits the
    agent's. A flag renamed in the CLI but not in the manifest (or the reverse) fails here."""
    manifest = load()
    deployment = find(manifest, "Deployment", "kube-ip-tracker")
    namespace, spec = deployment["metadata"]["namespace"], pod_spec(deployment)
    [container] = [c for c in spec["containers"] if c["name"] == "tracker"]
    [cluster] = cluster_factory(1, names=["deploy"])
    async with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        await core.create_namespaced_secret(namespace, find(manifest, "Secret", "kube-ip-tracker-tls"))
        await core.create_namespaced_config_map(namespace, find(manifest, "ConfigMap", "kube-ip-tracker-ca"))
        # The pod's token: the tracker's service account, for the API server's own audience.
        pod_token = await service_account_token(api, namespace, spec["serviceAccountName"], audiences=[])
        agent_token = await service_account_token(api, namespace, "kube-ip-agent", audiences=[TOKEN_AUDIENCE])
        await objects.create_namespace(api, "shop")
        await objects.create_pod(api, "shop", "web-0", ips=["10.9.0.8"])

    name = container_name("deploy")  # also the pod's name ($POD_NAME, the tracker id)
    probe = container["readinessProbe"]["exec"]["command"]
    [server_name] = [a.split("=", 1)[1] for a in probe if a.startswith("--tls-server-name=")]
    bundle_file = tmp_path / "ca.crt"
    tracker = TrackerProcess(
        "deploy",
        [],
        tmp_path,
        metrics=True,
        tls=lambda: grpc.ssl_channel_credentials(bundle_file.read_bytes()),
        server_name=server_name,
    )
    options = [
        *pod_options(deployment, container, name),
        *in_cluster_options(cluster, tmp_path / "serviceaccount", pod_token, namespace),
    ]
    # The whole command line is the Deployment's (TrackerProcess's own flags are not added).
    tracker.argv = [
        *podman_images.run_argv(built["tracker"], name, options=options),
        *deployment_args(container, tracker.port, tracker.metrics_port),
    ]
    tracker.start()
    try:

        async def bundle_published() -> bool:
            async with cluster.api_client() as api:
                cm = await client.CoreV1Api(api).read_namespaced_config_map("kube-ip-tracker-ca", namespace)
            bundle = (cm.data or {}).get("ca.crt", "")
            bundle_file.write_text(bundle)
            return bool(bundle)

        await eventually(bundle_published, "the TLS bootstrap publishes its CA bundle", [tracker], within=120)
        await eventually(tracker.serving, "the tracker serves SERVING over TLS", [tracker], within=120)

        # The readiness probe as the kubelet runs it, inside the container (the port as adapted).
        command = [_with_port(a, tracker.port) if a.startswith("--address=") else a for a in probe]
        done = podman_images.podman("exec", name, *command)
        assert done.returncode == 0 and "SERVING" in done.stdout, f"{command}: {done.stdout}{done.stderr}"
        # The bootstrap's files are published as one version (a ..data symlink swap).
        [tls_dir] = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--tls-bootstrap-dir=")]
        done = podman_images.podman("exec", name, "readlink", f"{tls_dir}/tls.crt")
        assert done.stdout.strip() == "..data/tls.crt", done

        # --client-auth=token: no token is refused, the agent's token admitted (its TokenReview in the
        # tracker's own cluster, the in-cluster one).
        request = pb.ListClustersRequest()
        async with tracker.channel() as channel:
            stub = tracker_pb2_grpc.TrackerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListClusters(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            cluster_id = cli.parse_args([]).cluster_id  # the in-cluster configuration's id
            metadata = [(AUTHORIZATION_METADATA, f"Bearer {agent_token}"), (CLUSTER_METADATA, cluster_id)]

            async def synced() -> bool:
                answer = await stub.ListClusters(request, metadata=metadata, timeout=10)
                return any(c.status.cluster == cluster_id and c.status.synced for c in answer.clusters)

            await eventually(synced, "the agent's token admitted and the in-cluster cluster synced", [tracker])
        assert tracker.alive
    finally:
        tracker.stop()
        podman_images.remove(containers=[name])
