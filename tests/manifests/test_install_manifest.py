"""manifests/install.yaml read as data: the objects the issue lists, versions, and args the real CLIs accept."""

from __future__ import annotations

import argparse
import re
import subprocess

import pytest

import kube_ip_tracker
from kube_ip_tracker import cli as tracker_cli
from kube_ip_tracker.agent import cli as agent_cli
from kube_ip_tracker.agent.explain.client import SOCKET_DIR
from kube_ip_tracker.client.token import TOKEN_AUDIENCE
from kube_ip_tracker.listen import parse_listen_address
from kube_ip_tracker.server import healthcheck

from .manifest import (
    INSTALL,
    ROOT,
    Obj,
    containers,
    expand_args,
    find,
    key,
    load,
    package_version,
    parse_or_fail,
    pod_spec,
)

NS = "kube-system"
EXPECTED = [
    "ServiceAccount/kube-system/kube-ip-tracker",
    "ClusterRole/kube-ip-tracker",
    "ClusterRoleBinding/kube-ip-tracker",
    "Secret/kube-system/kube-ip-tracker-tls",
    "ConfigMap/kube-system/kube-ip-tracker-ca",
    "Role/kube-system/kube-ip-tracker-tls-bootstrap",
    "RoleBinding/kube-system/kube-ip-tracker-tls-bootstrap",
    "Deployment/kube-system/kube-ip-tracker",
    "Service/kube-system/kube-ip-tracker",
    "ServiceAccount/kube-system/kube-ip-agent",
    "ClusterRole/kube-ip-agent",
    "ClusterRoleBinding/kube-ip-agent",
    "DaemonSet/kube-system/kube-ip-agent",
]


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    return load()


def rules(role: Obj) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples a ClusterRole grants (to any name)."""
    assert not any("resourceNames" in rule for rule in role["rules"]), key(role)
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def named_rules(role: Obj) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, name, verb) of a Role whose every rule names its objects."""
    assert all(rule.get("resourceNames") for rule in role["rules"]), f"{key(role)}: a rule without resourceNames"
    return {
        (group, resource, name, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for name in rule["resourceNames"]
        for verb in rule["verbs"]
    }


def tracker_container(objects: list[Obj]) -> Obj:
    return pod_spec(find(objects, "Deployment", "kube-ip-tracker"))["containers"][0]


def agent_container(objects: list[Obj]) -> Obj:
    return pod_spec(find(objects, "DaemonSet", "kube-ip-agent"))["containers"][0]


def port(container: Obj, name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def test_objects_are_the_listed_ones_in_kube_system(objects: list[Obj]) -> None:
    assert sorted(key(o) for o in objects) == sorted(EXPECTED)
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NS, key(obj)


def test_rbac_grants_exactly_what_the_issue_lists(objects: list[Obj]) -> None:
    tracker = rules(find(objects, "ClusterRole", "kube-ip-tracker"))
    assert tracker == {("", r, v) for r in ("pods", "namespaces", "nodes") for v in ("get", "list", "watch")} | {
        ("authentication.k8s.io", "tokenreviews", "create")  # --client-auth=token
    }
    agent = rules(find(objects, "ClusterRole", "kube-ip-agent"))
    cluster_scoped = ("clusternetworkpolicies", "adminnetworkpolicies", "baselineadminnetworkpolicies")
    assert agent == {("networking.k8s.io", "networkpolicies", v) for v in ("list", "watch")} | {
        ("", "namespaces", v) for v in ("get", "list", "watch")
    } | {("policy.networking.k8s.io", r, v) for r in cluster_scoped for v in ("list", "watch")}
    # The TLS bootstrap reads and replaces its own Secret and ConfigMap, which the manifest creates:
    # no create (RBAC cannot limit it to a name), no list, watch, delete or patch.
    bootstrap = named_rules(find(objects, "Role", "kube-ip-tracker-tls-bootstrap"))
    assert bootstrap == {("", "secrets", "kube-ip-tracker-tls", v) for v in ("get", "update")} | {
        ("", "configmaps", "kube-ip-tracker-ca", v) for v in ("get", "update")
    }
    binding = find(objects, "RoleBinding", "kube-ip-tracker-tls-bootstrap")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "kube-ip-tracker-tls-bootstrap",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kube-ip-tracker", "namespace": NS}]
    for name in ("kube-ip-tracker", "kube-ip-agent"):
        binding = find(objects, "ClusterRoleBinding", name)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NS}]
        workload = next(
            o for o in objects if o["kind"] in ("Deployment", "DaemonSet") and o["metadata"]["name"] == name
        )
        assert pod_spec(workload)["serviceAccountName"] == name


def test_tracker_deployment(objects: list[Obj]) -> None:
    deployment = find(objects, "Deployment", "kube-ip-tracker")
    spec = pod_spec(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Anti-affinity across nodes, selecting the tracker's own pods.
    terms = spec["affinity"]["podAntiAffinity"]
    term = (terms.get("requiredDuringSchedulingIgnoredDuringExecution") or [None])[0] or terms[
        "preferredDuringSchedulingIgnoredDuringExecution"
    ][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    # Non-root, read-only root filesystem, no capabilities.
    container = spec["containers"][0]
    security = container["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    # Ports agree with the flags; probes use them.
    args = parse_or_fail(tracker_cli.parse_args, expand_args(container), "tracker")
    assert parse_listen_address(args.listen_address)[1] == port(container, "grpc")
    assert parse_listen_address(args.metrics_address)[1] == port(container, "metrics")
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:3] == ["python", "-m", healthcheck.__name__]
    probe_args = healthcheck.build_parser().parse_args(probe[3:])
    assert probe_args.address == f"127.0.0.1:{port(container, 'grpc')}" and probe_args.service == ""
    # The probe speaks TLS, verified with the bundle the bootstrap writes, for a name of the certificate.
    assert str(probe_args.tls_ca_file) == f"{args.tls_bootstrap_dir}/ca.crt"
    assert probe_args.tls_server_name == f"{args.tls_bootstrap_service}.{NS}.svc"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_tracker_args_show_gke_and_the_kubeconfig_dir_alternative(objects: list[Obj]) -> None:
    container = tracker_container(objects)
    args = parse_or_fail(tracker_cli.parse_args, expand_args(container), "tracker")
    assert args.gcp_cluster_names, "the Deployment's args show --gcp-cluster-names"
    # The commented alternative is a real flag too: swap it in and parse again.
    commented = re.findall(r"^\s*#\s*- (--kubeconfig-dir=\S+)$", INSTALL.read_text(), re.MULTILINE)
    assert len(commented) == 1, "one commented --kubeconfig-dir alternative"
    alternative = [a for a in expand_args(container) if not a.startswith("--gcp-cluster-names")] + commented
    args = parse_or_fail(tracker_cli.parse_args, alternative, "tracker (kubeconfig-dir alternative)")
    mount = re.findall(r"^\s*#\s*mountPath: (\S+)$", INSTALL.read_text(), re.MULTILINE)
    assert args.kubeconfig_dir in mount, "the commented volumeMount provides the --kubeconfig-dir directory"


def test_headless_service_for_grpc(objects: list[Obj]) -> None:
    service = find(objects, "Service", "kube-ip-tracker")
    deployment = find(objects, "Deployment", "kube-ip-tracker")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    [svc_port] = service["spec"]["ports"]
    assert svc_port["targetPort"] == "grpc" and svc_port["port"] == port(tracker_container(objects), "grpc")


def test_agent_daemonset(objects: list[Obj]) -> None:
    daemonset = find(objects, "DaemonSet", "kube-ip-agent")
    spec = pod_spec(daemonset)
    container = spec["containers"][0]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in spec["tolerations"]
    # `kube-ip-agent explain` on the node reaches the socket: --explain-socket's directory is the host's.
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(SOCKET_DIR)]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"] == {"path": str(SOCKET_DIR), "type": "DirectoryOrCreate"}
    assert "NET_ADMIN" in container["securityContext"]["capabilities"]["add"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"].get("privileged") is not True
    service_port = find(objects, "Service", "kube-ip-tracker")["spec"]["ports"][0]["port"]
    assert f"--tracker-address=kube-ip-tracker.{NS}.svc.cluster.local:{service_port}" in container["args"]
    assert "--node-name=$(NODE_NAME)" in container["args"]
    [env] = [e for e in container["env"] if e["name"] == "NODE_NAME"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def _has_run_command() -> bool:
    parser = agent_cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return "run" in subparsers.choices


@pytest.mark.skipif(not _has_run_command(), reason="kube-ip-agent has no 'run' subcommand yet")
def test_agent_args_parse_with_the_agent_cli(objects: list[Obj]) -> None:
    container = agent_container(objects)
    argv = expand_args(container)
    assert argv[0] == "run"
    args = parse_or_fail(agent_cli.build_parser().parse_args, argv, "agent")
    assert args.node_name == "<NODE_NAME>"
    assert args.tracker_address == [f"kube-ip-tracker.{NS}.svc.cluster.local:50051"]
    assert parse_listen_address(args.metrics_address)[1] == port(container, "metrics")
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_image_tags_and_version_labels_are_the_package_version(objects: list[Obj]) -> None:
    version = package_version()
    assert version == kube_ip_tracker.__version__
    images = {o["metadata"]["name"]: c["image"] for o, c in containers(objects)}
    assert images == {
        "kube-ip-tracker": f"localhost/kube-ip-tracker:{version}",
        "kube-ip-agent": f"localhost/kube-ip-agent:{version}",
    }
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        if "app.kubernetes.io/version" in labels:
            assert labels["app.kubernetes.io/version"] == version, key(obj)
    assert f"kube-ip-tracker {version}" in INSTALL.read_text().splitlines()[0]


def test_dockerfile_builds_the_images_the_manifest_names(objects: list[Obj]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE))
    assert {"tracker", "agent"} <= stages
    # Every stage starts from the base hack/debian-base-image.sh makes from Debian's packages.
    base = run_script("debian-base-image.sh", "--name")
    assert set(re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)) - stages == {base}
    # hack/build-images.sh builds, by default, exactly the images the workloads run.
    built = run_script("build-images.sh", "--names").split()
    images = {o["metadata"]["name"]: c["image"] for o, c in containers(objects)}
    assert built == [images["kube-ip-tracker"], images["kube-ip-agent"]]
    for target, image in zip(("tracker", "agent"), built, strict=True):
        assert re.search(rf"podman build --target {target} +-t {re.escape(image)} \.", dockerfile), (
            f"Dockerfile documents how to build {image} (target {target})"
        )
    # The tracker image runs as the non-root user the Deployment expects.
    uid = pod_spec(find(objects, "Deployment", "kube-ip-tracker"))["securityContext"]["runAsUser"]
    tracker_stage = dockerfile.split("AS tracker", 1)[1].split("\nFROM ", 1)[0]
    assert f"USER {uid}:" in tracker_stage


def run_script(name: str, *args: str) -> str:
    done = subprocess.run([str(ROOT / "hack" / name), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"hack/{name} {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return done.stdout.strip()


def test_agents_send_a_projected_token_that_the_tracker_checks(objects: list[Obj]) -> None:
    tracker = parse_or_fail(tracker_cli.parse_args, expand_args(tracker_container(objects)), "tracker")
    assert tracker.client_auth == "token"
    assert tracker.allowed_service_accounts == {f"{NS}/kube-ip-agent", f"{NS}/kube-ip-tracker"}
    container = agent_container(objects)
    agent = parse_or_fail(agent_cli.build_parser().parse_args, expand_args(container), "agent")
    token_dir, token_name = agent.tracker_token_file.rsplit("/", 1)
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == token_dir]
    [volume] = [
        v for v in pod_spec(find(objects, "DaemonSet", "kube-ip-agent"))["volumes"] if v["name"] == mount["name"]
    ]
    [source] = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == TOKEN_AUDIENCE
    assert source["serviceAccountToken"]["path"] == token_name
    assert source["serviceAccountToken"]["expirationSeconds"] <= 3600


def test_tls_by_default_with_the_bootstrap_and_agents_verifying_its_bundle(objects: list[Obj]) -> None:
    container = tracker_container(objects)
    tracker = parse_or_fail(tracker_cli.parse_args, expand_args(container), "tracker")
    assert tracker.tls_cert_file is None and tracker.tls_client_ca_file is None
    assert tracker.tls_bootstrap_namespace is None  # from $POD_NAMESPACE:
    [env] = [e for e in container["env"] if e["name"] == "POD_NAMESPACE"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # The Secret and ConfigMap exist, empty, of the type the tracker expects; the Role names them.
    secret = find(objects, "Secret", tracker.tls_bootstrap_secret)
    assert secret["type"] == "Opaque" and "data" not in secret and "stringData" not in secret
    configmap = find(objects, "ConfigMap", tracker.tls_bootstrap_ca_configmap)
    assert "data" not in configmap
    # The certificate is for the headless Service's name the agents dial.
    service = find(objects, "Service", tracker.tls_bootstrap_service)
    assert service["spec"]["clusterIP"] == "None"
    # The bootstrap's directory is a memory emptyDir of the tracker.
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == tracker.tls_bootstrap_dir]
    tracker_volumes = pod_spec(find(objects, "Deployment", "kube-ip-tracker"))["volumes"]
    [volume] = [v for v in tracker_volumes if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"

    # The agent verifies the tracker with that ConfigMap's ca.crt, for the Service name it dials.
    agent_c = agent_container(objects)
    agent = parse_or_fail(agent_cli.build_parser().parse_args, expand_args(agent_c), "agent")
    assert agent.tracker_server_name is None
    host = agent.tracker_address[0].rsplit(":", 1)[0]
    assert host == f"{tracker.tls_bootstrap_service}.{NS}.svc.cluster.local"
    ca_dir, ca_name = str(agent.tracker_ca_file).rsplit("/", 1)
    [mount] = [m for m in agent_c["volumeMounts"] if m["mountPath"] == ca_dir]
    [volume] = [
        v for v in pod_spec(find(objects, "DaemonSet", "kube-ip-agent"))["volumes"] if v["name"] == mount["name"]
    ]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert volume["configMap"]["items"] == [{"key": "ca.crt", "path": ca_name}]
    assert not volume["configMap"].get("optional"), "the agent waits for the bundle rather than starting without it"
