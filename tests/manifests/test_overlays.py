"""The kustomize overlays: they render, keep install.yaml as their base, and their args parse."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from kube_ip_tracker import cli as tracker_cli
from kube_ip_tracker.agent import cli as agent_cli
from kube_ip_tracker.listen import parse_listen_address

from .kustomize import OVERLAY_NAMES, OVERLAYS, KustomizeError, build, json_patch
from .manifest import INSTALL, Obj, containers, expand_args, find, key, parse_or_fail, pod_spec


def parsed(objects: list[Obj], name: str):  # type: ignore[no-untyped-def]
    """The workload ``name``'s container args parsed by its real CLI."""
    workload = next(o for o in objects if o["kind"] in ("Deployment", "DaemonSet") and o["metadata"]["name"] == name)
    argv = expand_args(pod_spec(workload)["containers"][0])
    if name == "kube-ip-tracker":
        return parse_or_fail(tracker_cli.parse_args, argv, name)
    return parse_or_fail(agent_cli.build_parser().parse_args, argv, name)


def mount_of(objects: list[Obj], volume: str) -> tuple[str, Obj]:
    """(mountPath in the tracker container, volume source) of the tracker's volume ``volume``."""
    spec = pod_spec(find(objects, "Deployment", "kube-ip-tracker"))
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume]
    [source] = [v for v in spec["volumes"] if v["name"] == volume]
    return mount["mountPath"], source


def test_the_base_is_install_yaml() -> None:
    assert (OVERLAYS / "base" / "install.yaml").read_bytes() == INSTALL.read_bytes(), (
        "manifests/overlays/base/install.yaml differs from manifests/install.yaml: "
        "cp manifests/install.yaml manifests/overlays/base/"
    )


@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_overlay_args_parse_with_the_real_clis(name: str) -> None:
    objects = build(OVERLAYS / name)
    assert {key(o) for o, _ in containers(objects)} == {
        "Deployment/kube-system/kube-ip-tracker",
        "DaemonSet/kube-system/kube-ip-agent",
    }
    parsed(objects, "kube-ip-tracker")
    agent = parsed(objects, "kube-ip-agent")
    assert agent.command == "run" and agent.cluster_id


def test_full_mesh_reads_every_cluster_from_the_secret() -> None:
    objects = build(OVERLAYS / "full-mesh")
    tracker = parsed(objects, "kube-ip-tracker")
    assert tracker.gcp_cluster_names == [] and tracker.upstream_tracker == []
    path, source = mount_of(objects, "clusters")
    assert tracker.kubeconfig_dir == path and source == {
        "name": "clusters",
        "secret": {"secretName": "kube-ip-tracker-clusters"},
    }
    assert parsed(objects, "kube-ip-agent").cluster_id == "cluster-a"


def test_hub_serves_the_spokes_and_spokes_watch_only_their_own_cluster_plus_the_hub() -> None:
    hub = build(OVERLAYS / "hub-and-spoke" / "hub")
    assert parsed(hub, "kube-ip-tracker").kubeconfig_dir == mount_of(hub, "clusters")[0]
    service = find(hub, "Service", "kube-ip-tracker-hub")
    labels = find(hub, "Deployment", "kube-ip-tracker")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["type"] == "LoadBalancer" and service["spec"]["selector"].items() <= labels.items()
    [hub_port] = service["spec"]["ports"]

    spoke = build(OVERLAYS / "hub-and-spoke" / "spoke")
    tracker, agent = parsed(spoke, "kube-ip-tracker"), parsed(spoke, "kube-ip-agent")
    # In-cluster only (no GKE, no kubeconfig files) under the id its agents use, plus the hub.
    assert not (tracker.gcp_cluster_names or tracker.kubeconfig or tracker.kubeconfig_dir)
    assert tracker.cluster_id == agent.cluster_id
    [upstream] = tracker.upstream_tracker
    assert parse_listen_address(upstream)[1] == hub_port["port"]
    # Over TLS: the hub's bootstrapped certificate names the address the spokes dial, and the spoke
    # verifies it with the hub's bundle, mounted from a ConfigMap (copied from the hub cluster).
    assert parse_listen_address(upstream)[0] in parsed(hub, "kube-ip-tracker").tls_bootstrap_extra_names
    assert tracker.upstream_server_name is None
    ca_dir, ca_name = tracker.upstream_ca_file.rsplit("/", 1)
    [(_, source)] = [
        mount_of(spoke, v["name"])
        for v in pod_spec(find(spoke, "Deployment", "kube-ip-tracker"))["volumes"]
        if mount_of(spoke, v["name"])[0] == ca_dir
    ]
    assert source["configMap"] == {"name": "kube-ip-tracker-hub-ca", "items": [{"key": "ca.crt", "path": ca_name}]}


def test_renderer_refuses_what_it_does_not_know(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [], "namePrefix": "x-"}))
    with pytest.raises(KustomizeError, match="namePrefix"):
        build(tmp_path)
    doc = {"spec": {"args": ["a", "b"]}}
    json_patch(doc, [{"op": "add", "path": "/spec/args/-", "value": "c"}, {"op": "remove", "path": "/spec/args/0"}])
    assert doc == {"spec": {"args": ["b", "c"]}}
    with pytest.raises(ValueError, match="test /spec/args/0"):
        json_patch(doc, [{"op": "test", "path": "/spec/args/0", "value": "a"}])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (CI has none)")
@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    done = subprocess.run(["kubectl", "kustomize", str(OVERLAYS / name)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "unknown command" in done.stderr:
        pytest.skip(f"this kubectl has no kustomize: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    theirs = {key(o): o for o in yaml.safe_load_all(done.stdout) if o}
    ours = {key(o): o for o in build(OVERLAYS / name)}
    assert ours == theirs
