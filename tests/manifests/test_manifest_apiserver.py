"""manifests/install.yaml against a real API server started with --authorization-mode=RBAC.

Every object passes a server-side dry run and keeps every field we set (a 1.20 API server drops
unknown fields silently). The tracker, as a real process authenticated as the
``kube-system:kube-ip-tracker`` service account, reports the forbidden resource while its role is
too narrow and syncs once only the manifest's ClusterRole is bound; the agent's NetworkPolicy
informer does the same with the agent's role, its local pod watch is forbidden with that role and
runs with the rule the manifest's comment documents, and (as root) the real agent process started
with the DaemonSet's args turns ready once the agent's ClusterRole is bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import re
import secrets
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from kubernetes_asyncio.dynamic import DynamicClient

from kube_ip_tracker.agent.local_pods import LocalPodInformer
from kube_ip_tracker.agent.networkpolicies import NetworkPolicyInformer
from kube_ip_tracker.agent.policy import PolicyEngine
from kube_ip_tracker.client.token import TOKEN_AUDIENCE
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.kube.reflector import InformerOptions
from kube_ip_tracker.model import ClusterSpec
from kube_ip_tracker.server import healthcheck
from kube_ip_tracker.testing import objects as kobjects
from kube_ip_tracker.testing.clusters import LocalCluster, free_port
from kube_ip_tracker.testing.sa_tokens import service_account_token
from kube_ip_tracker.testing.trackers import TrackerProcess, eventually, http_status

from .kube_api import AGENT_SA, TRACKER_SA, KubeError, call, dry_run, dry_run_problems, kubeconfig_for, put, put_objects
from .kustomize import OVERLAY_NAMES, OVERLAYS, build
from .manifest import INSTALL, Obj, find, load, missing_fields, pod_spec, probe_exit_code

pytestmark = pytest.mark.cluster


def without_resource(role: Obj, resource: str) -> Obj:
    """A copy of a ClusterRole that no longer grants anything on ``resource``."""
    narrow = copy.deepcopy(role)
    for rule in narrow["rules"]:
        rule["resources"] = [r for r in rule["resources"] if r != resource]
    narrow["rules"] = [r for r in narrow["rules"] if r["resources"]]
    return narrow


def variants() -> list[tuple[str, Obj]]:
    """(source, object) of install.yaml and of every overlay, each distinct object once.

    cert-manager's kinds are left out: this API server has not their CRDs
    (test_cert_manager_overlay.py dry-runs them against cert-manager's own).
    """
    seen: set[str] = set()
    out: list[tuple[str, Obj]] = []
    sources = [("install.yaml", load())] + [(f"overlays/{n}", build(OVERLAYS / n)) for n in OVERLAY_NAMES]
    for source, objects in sources:
        for obj in objects:
            text = json.dumps(obj, sort_keys=True)
            if text not in seen and not obj["apiVersion"].startswith("cert-manager.io/"):
                seen.add(text)
                out.append((source, obj))
    return out


async def test_every_object_passes_server_side_dry_run_and_keeps_its_fields(rbac_cluster: LocalCluster) -> None:
    manifest = load()
    async with rbac_cluster.api_client() as api:
        dyn = await DynamicClient(api)
        problems = await dry_run_problems(dyn, variants())
        # The comparison notices a field this API server does not know: it is dropped (1.20 silently,
        # newer servers with a warning). grpc probes came in 1.24, which is why the manifest uses exec:
        # an older server drops a grpc handler next to exec, a newer one refuses two handlers.
        deployment = copy.deepcopy(find(manifest, "Deployment", "kube-ip-tracker"))
        probe = pod_spec(deployment)["containers"][0]["readinessProbe"]
        probe["notAField"] = {"port": 50051}
        stored = await dry_run(dyn, deployment)
        assert [p for p in missing_fields(deployment, stored) if "readinessProbe" in p] == [
            ".spec.template.spec.containers[0].readinessProbe.notAField"
        ]
        del probe["notAField"]
        probe["grpc"] = {"port": 50051}
        if (rbac_cluster.apiserver_version or (0, 0)) >= (1, 24):
            with pytest.raises(KubeError, match="may not specify more than 1 handler type"):
                await dry_run(dyn, deployment)
        else:
            stored = await dry_run(dyn, deployment)
            assert [p for p in missing_fields(deployment, stored) if "readinessProbe" in p] == [
                ".spec.template.spec.containers[0].readinessProbe.grpc"
            ]
        del probe["exec"], probe["grpc"]
        with pytest.raises(KubeError, match="must specify a handler type"):
            await dry_run(dyn, deployment)
    assert not problems, "\n".join(problems)


async def test_tracker_reports_forbidden_nodes_then_syncs_with_the_manifest_role(
    rbac_cluster: LocalCluster, tmp_path: Path
) -> None:
    manifest = load()
    role = find(manifest, "ClusterRole", "kube-ip-tracker")
    async with rbac_cluster.api_client() as api:
        await kobjects.create_namespace(api, "rbac-demo", {"team": "a"})
        await kobjects.create_node(api, "node-1", {"zone": "z1"}, internal_ip="192.0.2.1")
        await kobjects.create_pod(api, "rbac-demo", "web", labels={"app": "web"}, ips=["10.8.0.1"])
        dyn = await DynamicClient(api)
        await put(dyn, without_resource(role, "nodes"))
        await put(dyn, find(manifest, "ClusterRoleBinding", "kube-ip-tracker"))

    # The manifest's kubeconfig-dir alternative: one self-contained file per cluster in a directory.
    kubeconfig = kubeconfig_for(rbac_cluster, TRACKER_SA, tmp_path / "clusters" / "rbac.kubeconfig")
    # The identity is the service account's, not an administrator's: no secrets for it.
    async with api_client(ClusterSpec("rbac", kubeconfig=str(kubeconfig))) as sa_api:
        secrets = {"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": "kube-system"}}
        with pytest.raises(KubeError) as denied:
            await call(await DynamicClient(sa_api), "get", secrets)
        assert denied.value.status == 403

    tracker = TrackerProcess("rbac", ["--kubeconfig-dir", str(kubeconfig.parent), "--log-level", "debug"], tmp_path)
    tracker.start()
    probe = [sys.executable, "-m", healthcheck.__name__, f"--address={tracker.address}", "--timeout=2"]
    try:
        # Too narrow: the error names the resource and the reason, in ListClusters and in the log.
        async def forbidden_nodes() -> bool:
            status = (await tracker.clusters()).get("rbac")
            return status is not None and "list nodes: forbidden (403)" in status.status.last_error

        await eventually(forbidden_nodes, "ListClusters reports list nodes forbidden", [tracker], within=60)
        status = (await tracker.clusters())["rbac"].status
        assert not status.synced and not status.connected
        # A streaming list asks with a watch, a paginated one with a list: either verb is refused.
        assert re.search(r'cannot (list|watch) resource "nodes"', status.last_error), status.last_error
        assert "system:serviceaccount:kube-system:kube-ip-tracker" in status.last_error
        assert "list nodes: forbidden (403)" in tracker.log_path.read_text()
        assert await probe_exit_code(probe) == 1  # not ready

        # The manifest's ClusterRole is enough: the same process syncs without a restart.
        async with rbac_cluster.api_client() as api:
            await put(await DynamicClient(api), role)

        async def synced() -> bool:
            info = (await tracker.clusters()).get("rbac")
            return info is not None and info.status.synced and info.status.connected and info.pods == 1

        await eventually(synced, "tracker synced with the manifest's role", [tracker], within=60)
        assert (await tracker.clusters())["rbac"].status.last_error == ""

        # The readiness probe of the Deployment turns ready.
        async def probe_ready() -> bool:
            return await probe_exit_code(probe) == 0

        await eventually(
            probe_ready,
            "readiness probe exits 0",
            [tracker],
            within=30,
            interval=0.5,
        )
    finally:
        tracker.stop()


async def test_agent_policy_informer_with_the_manifest_role(
    rbac_cluster: LocalCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = load()
    role = find(manifest, "ClusterRole", "kube-ip-agent")
    async with rbac_cluster.api_client() as api:
        dyn = await DynamicClient(api)
        await put(dyn, without_resource(role, "networkpolicies"))
        await put(dyn, find(manifest, "ClusterRoleBinding", "kube-ip-agent"))
    kubeconfig = kubeconfig_for(rbac_cluster, AGENT_SA, tmp_path / "agent.kubeconfig")
    engine = PolicyEngine()
    informer = NetworkPolicyInformer(
        ClusterSpec("rbac", kubeconfig=str(kubeconfig)),
        engine,
        options=InformerOptions(backoff_base=0.1, backoff_cap=1.0),
    )
    caplog.set_level(logging.WARNING, logger="kube_ip_tracker.agent.networkpolicies")
    task = asyncio.create_task(informer.run())
    try:
        await eventually(
            lambda: "list networkpolicies: forbidden (403)" in caplog.text, "informer logs networkpolicies forbidden"
        )
        assert re.search(
            r'cannot (list|watch) resource "networkpolicies" in API group "networking.k8s.io"', caplog.text
        )
        assert not informer.synced

        async with rbac_cluster.api_client() as api:
            await put(await DynamicClient(api), role)
        async with asyncio.timeout(30):
            await informer.wait_synced()
        # The watch runs too: a policy created now reaches the informer.
        async with rbac_cluster.api_client() as api:
            policy = {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "deny-all", "namespace": "default"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
            }
            await call(await DynamicClient(api), "post", policy)
        await eventually(lambda: ("default", "deny-all") in informer.policies, "watched policy in the informer")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def documented_pod_rule() -> Obj:
    """The rule install.yaml's comment above the agent's ClusterRole gives for the local pod watch."""
    lines = INSTALL.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "need, in addition" in line) + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    (rule,) = yaml.safe_load("\n".join(block))
    return rule  # type: ignore[no-any-return]


async def test_agent_local_pod_watch_is_forbidden_with_the_manifest_role_and_runs_with_the_documented_rule(
    rbac_cluster: LocalCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """install.yaml grants no pods to the agent (its DaemonSet runs without --pod-cidr): the watch says
    so once and stays unused; with the rule its comment documents it lists this node's pods."""
    manifest = load()
    role = find(manifest, "ClusterRole", "kube-ip-agent")
    async with rbac_cluster.api_client() as api:
        dyn = await DynamicClient(api)
        await put(dyn, role)
        await put(dyn, find(manifest, "ClusterRoleBinding", "kube-ip-agent"))
        await kobjects.create_namespace(api, "rbac-local")
        await kobjects.create_pod(api, "rbac-local", "db", labels={"app": "db"}, node="node-7", ips=["10.8.7.1"])
    kubeconfig = kubeconfig_for(rbac_cluster, AGENT_SA, tmp_path / "agent.kubeconfig")
    informer = LocalPodInformer(
        ClusterSpec("rbac", kubeconfig=str(kubeconfig)),
        "node-7",
        PolicyEngine(),
        on_change=lambda: None,
        options=InformerOptions(backoff_base=0.1, backoff_cap=0.5),
    )
    caplog.set_level(logging.INFO, logger="kube_ip_tracker.agent.local_pods")
    task = asyncio.create_task(informer.run())
    try:
        await eventually(lambda: "may not list/watch pods" in caplog.text, "forbidden pods explained")
        assert "list pods: forbidden (403)" in caplog.text and not informer.connected
        await eventually(lambda: caplog.text.count("forbidden (403)") >= 3, "retried with backoff")
        assert caplog.text.count("may not list/watch pods") == 1

        granted = copy.deepcopy(role)
        granted["rules"].append(documented_pod_rule())
        async with rbac_cluster.api_client() as api:
            await put(await DynamicClient(api), granted)
        await eventually(lambda: informer.listed and informer.connected, "node-7's pods listed", 30)
        assert set(informer.store.entries) == {("rbac-local", "db")}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with rbac_cluster.api_client() as api:
            await put(await DynamicClient(api), role)


def tracker_args(manifest: list[Obj], kubeconfig: Path, tls_dir: Path) -> list[str]:
    """The Deployment's args for a local tracker process (TrackerProcess sets the addresses): the
    cluster and the TLS bootstrap's cluster from ``kubeconfig``, the namespace the kubelet passes as
    $POD_NAMESPACE, the bootstrap's files in ``tls_dir``."""
    container = pod_spec(find(manifest, "Deployment", "kube-ip-tracker"))["containers"][0]
    local = {"--tls-bootstrap-dir": str(tls_dir)}
    drop = {"--listen-address", "--metrics-address", "--gcp-cluster-names"}
    args = [
        f"{flag}={local[flag]}" if flag in local else arg
        for arg in container["args"]
        if (flag := arg.split("=", 1)[0]) not in drop
    ]
    namespace = find(manifest, "Deployment", "kube-ip-tracker")["metadata"]["namespace"]
    return [
        *args,
        f"--kubeconfig={kubeconfig}",
        f"--tls-bootstrap-kubeconfig={kubeconfig}",
        f"--tls-bootstrap-namespace={namespace}",
    ]


def tls_tracker_process(name: str, args: list[str], tmp_path: Path, bundle: Path) -> TrackerProcess:
    """A tracker process that the test helpers reach over TLS verified by ``bundle``, for the agents' name."""
    return TrackerProcess(
        name, args, tmp_path, tls=lambda: grpc.ssl_channel_credentials(bundle.read_bytes()), server_name=AGENT_DIALS
    )


async def copy_bundle(dyn: DynamicClient, manifest: list[Obj], path: Path) -> bool:
    """Copy the published CA bundle to ``path`` as the kubelet does for the agents' mount; False while unpublished."""
    configmap = find(manifest, "ConfigMap", "kube-ip-tracker-ca")
    data = (await call(dyn, "get", configmap, name="kube-ip-tracker-ca")).get("data") or {}
    if "ca.crt" not in data:
        return False
    await asyncio.to_thread(path.write_text, data["ca.crt"])
    return True


#: What the tracker's Deployment needs (its roles, the TLS bootstrap's objects), in the manifest's order.
TRACKER_OBJECTS = (
    ("ClusterRole", "kube-ip-tracker"),
    ("ClusterRoleBinding", "kube-ip-tracker"),
    ("Secret", "kube-ip-tracker-tls"),
    ("ConfigMap", "kube-ip-tracker-ca"),
    ("Role", "kube-ip-tracker-tls-bootstrap"),
    ("RoleBinding", "kube-ip-tracker-tls-bootstrap"),
)


async def test_tracker_bootstraps_tls_with_the_manifest_role_and_the_probe_verifies_it(
    rbac_cluster: LocalCluster, tmp_path: Path
) -> None:
    manifest = load()
    # Everything the tracker needs but the bootstrap's Role.
    await put_objects(rbac_cluster, manifest, [o for o in TRACKER_OBJECTS if o[0] != "Role"])
    kubeconfig = kubeconfig_for(rbac_cluster, TRACKER_SA, tmp_path / "tracker.kubeconfig")
    tls_dir, bundle = tmp_path / "tls", tmp_path / "agent-ca" / "ca.crt"
    bundle.parent.mkdir()
    tracker = tls_tracker_process("bootstrap", tracker_args(manifest, kubeconfig, tls_dir), tmp_path, bundle)
    tracker.start()
    try:
        # Without the Role the tracker cannot read its Secret: named in the log, and it does not serve.
        await eventually(
            lambda: "get secret kube-system/kube-ip-tracker-tls: forbidden (403)" in tracker.log_path.read_text(),
            "tracker logs the Secret forbidden",
            [tracker],
        )
        assert tracker.alive
        async with rbac_cluster.api_client() as api:
            dyn = await DynamicClient(api)
            await put(dyn, find(manifest, "Role", "kube-ip-tracker-tls-bootstrap"))
            await eventually(lambda: copy_bundle(dyn, manifest, bundle), "CA bundle published", [tracker], within=60)
        await eventually(tracker.serving, "tracker serves TLS verified by the published bundle", [tracker], within=60)

        # The Deployment's readiness probe, with its files where this process has them, verifies it too.
        container = pod_spec(find(manifest, "Deployment", "kube-ip-tracker"))["containers"][0]
        local = {"--address": tracker.address, "--tls-ca-file": str(tls_dir / "ca.crt")}
        probe = [
            f"{flag}={local[flag]}" if (flag := a.split("=", 1)[0]) in local else a
            for a in container["readinessProbe"]["exec"]["command"]
        ]
        assert probe[0] == "python"
        assert await probe_exit_code([sys.executable, *probe[1:]]) == 0

        # The Role is that narrow: no other Secret, and no new ones.
        async with api_client(ClusterSpec("rbac", kubeconfig=str(kubeconfig))) as sa_api:
            sa = await DynamicClient(sa_api)
            other = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": "kube-system"}}
            for method, name in (("get", "other"), ("post", None)):
                with pytest.raises(KubeError) as denied:
                    await call(sa, method, other, name=name)
                assert denied.value.status == 403, method
    finally:
        tracker.stop()


AGENT_DIALS = "kube-ip-tracker.kube-system.svc.cluster.local"


def agent_argv(
    kubeconfig: Path, tracker: str, metrics_port: int, name: str, token_file: Path, ca_file: Path
) -> list[str]:
    """The DaemonSet's args, pointed at a local tracker and API server, with its own queue and rule names.

    The agent connects to ``tracker`` (an IP) and checks the certificate for the Service name the
    DaemonSet's --tracker-address has.
    """
    container = pod_spec(find(load(), "DaemonSet", "kube-ip-agent"))["containers"][0]
    assert f"--tracker-address={AGENT_DIALS}:50051" in container["args"]
    local = {
        "--tracker-address": tracker,
        "--tracker-ca-file": str(ca_file),
        "--tracker-token-file": str(token_file),
        "--cluster-id": "rbac",
        "--node-name": "node-1",
        "--metrics-address": f"127.0.0.1:{metrics_port}",
    }
    argv = [
        f"{a.split('=', 1)[0]}={local[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in local else a
        for a in container["args"]
    ]
    nfqueue = 20000 + secrets.randbelow(40000)
    return [
        sys.executable,
        "-m",
        "kube_ip_tracker.agent.cli",
        *argv,
        f"--kubeconfig={kubeconfig}",
        f"--name={name}",
        f"--nfqueue-id={nfqueue}",
        f"--tracker-server-name={AGENT_DIALS}",
    ]


@pytest.mark.root
async def test_agent_process_with_the_daemonset_args_and_the_manifest_role(
    rbac_cluster: LocalCluster, tmp_path: Path
) -> None:
    manifest = load()
    async with rbac_cluster.api_client() as api:
        dyn = await DynamicClient(api)
        for kind, name in TRACKER_OBJECTS:
            await put(dyn, find(manifest, kind, name))
        await put(dyn, without_resource(find(manifest, "ClusterRole", "kube-ip-agent"), "networkpolicies"))
        await put(dyn, find(manifest, "ClusterRoleBinding", "kube-ip-agent"))
        # The kubelet's projected token of the agent's service account (audience kube-ip-tracker).
        token_file = tmp_path / "agent.token"
        token_file.write_text(
            await service_account_token(
                api, "kube-system", "kube-ip-agent", audiences=[TOKEN_AUDIENCE], expiration_seconds=3600
            )
        )
    tracker_config = kubeconfig_for(rbac_cluster, TRACKER_SA, tmp_path / "tracker.kubeconfig")
    # The Deployment's args: --client-auth=token reviews the agent's token with the manifest's role,
    # the TLS bootstrap serves a certificate the agent verifies with the published bundle only.
    ca_file = tmp_path / "agent-ca.crt"
    args = tracker_args(manifest, tracker_config, tmp_path / "tls")
    tracker = tls_tracker_process("agent-rbac", args, tmp_path, ca_file).start()
    async with rbac_cluster.api_client() as api:
        dyn = await DynamicClient(api)
        await eventually(lambda: copy_bundle(dyn, manifest, ca_file), "CA bundle published", [tracker], within=60)
    metrics_port = free_port()
    readyz = f"http://127.0.0.1:{metrics_port}/readyz"
    name = f"kipm-{secrets.token_hex(3)}"
    argv = agent_argv(
        kubeconfig_for(rbac_cluster, AGENT_SA, tmp_path / "agent.kubeconfig"),
        tracker.address,
        metrics_port,
        name,
        token_file,
        ca_file,
    )
    log_path = tmp_path / "agent.log"
    with log_path.open("ab") as out:
        agent = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def agent_log() -> str:
        return log_path.read_text(errors="replace")

    try:
        await eventually(
            lambda: "list networkpolicies: forbidden (403)" in agent_log(), "agent logs forbidden", [tracker]
        )
        assert await asyncio.to_thread(http_status, readyz) == 503, agent_log()[-3000:]

        async with rbac_cluster.api_client() as api:
            await put(await DynamicClient(api), find(manifest, "ClusterRole", "kube-ip-agent"))

        async def ready() -> bool:
            return await asyncio.to_thread(http_status, readyz) == 200

        await eventually(ready, f"agent /readyz 200; agent log:\n{agent_log()[-3000:]}", [tracker], within=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # an agent that died is reported by the assert below
            agent.terminate()  # SIGTERM: the agent removes its rules and exits 0
        try:
            async with asyncio.timeout(20):
                code = await agent.wait()
        except TimeoutError:
            agent.kill()
            code = await agent.wait()
        tracker.stop()
    assert code == 0, agent_log()[-3000:]
