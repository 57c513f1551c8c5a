"""manifests/overlays/cert-manager on a real API server with the real cert-manager controller.

cert-manager's CRDs (from the module the controller is built from) are installed into an RBAC API
server, the overlay's Issuers and Certificates pass a dry run against them and keep every field,
the controller issues the CA and the tracker's certificates, a real tracker process started with
the overlay's Deployment args serves the Secret (mounted as the kubelet mounts it, run under the
tracker's service account with no Role at all), clients that know only the agents' CA file verify
it, and renewals every few seconds keep a running watch. The controller and CRDs come from
``make cert-manager`` (part of ``make setup``); without them these tests fail, naming the target.
"""

from __future__ import annotations

import asyncio
import copy
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubernetes_asyncio.dynamic import DynamicClient

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.client import ClientOptions, TlsOptions, TrackerClient
from kube_ip_tracker.client.token import TOKEN_AUDIENCE, TokenOptions
from kube_ip_tracker.testing import certs, objects
from kube_ip_tracker.testing.cert_manager import CertManagerController, install_cert_manager_crds
from kube_ip_tracker.testing.clusters import LocalCluster
from kube_ip_tracker.testing.sa_tokens import service_account_token
from kube_ip_tracker.testing.secret_volume import mirror_secret, secret_files
from kube_ip_tracker.testing.trackers import TrackerProcess, background, client_reconnects, eventually

from .kube_api import TRACKER_SA, call, dry_run, dry_run_problems, kubeconfig_for, put
from .kustomize import OVERLAYS, build
from .manifest import Obj, find, key, missing_fields, pod_spec, probe_exit_code

pytestmark = pytest.mark.cluster

NS = "kube-system"
SERVING, CA, BUNDLE = "kube-ip-tracker-tls", "kube-ip-tracker-ca", "kube-ip-tracker-ca-bundle"
SERVER_NAME = f"kube-ip-tracker.{NS}.svc.cluster.local"
SERVICE_NAMES = ["kube-ip-tracker", f"kube-ip-tracker.{NS}", f"kube-ip-tracker.{NS}.svc", SERVER_NAME]
#: Where the Deployment mounts the serving Secret.
TLS_MOUNT = "/run/kube-ip-tracker/tls"


def overlay() -> list[Obj]:
    return build(OVERLAYS / "cert-manager")


def cert_manager_objects(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["apiVersion"].startswith("cert-manager.io/")]


@pytest.fixture(scope="module")
def cert_manager(rbac_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The RBAC cluster with cert-manager's CRDs and its controller running."""
    install_cert_manager_crds(rbac_cluster)
    controller = CertManagerController(rbac_cluster, tmp_path_factory.mktemp("cert-manager")).start()
    try:
        asyncio.run(controller.wait_ready())
        yield rbac_cluster
    finally:
        controller.stop()


async def apply_overlay(cluster: LocalCluster, objs: list[Obj]) -> None:
    """Create or replace every object of the overlay, as ``kubectl apply -k`` does."""
    async with cluster.api_client() as api:
        dyn = await DynamicClient(api)
        for obj in objs:
            await put(dyn, obj)


async def certificate_ready(cluster: LocalCluster, name: str) -> bool:
    async with cluster.api_client() as api:
        dyn = await DynamicClient(api)
        cert = await call(dyn, "get", find(overlay(), "Certificate", name), name=name)
    conditions = (cert.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def wait_issued(cluster: LocalCluster, names: list[str]) -> None:
    for name in names:
        await eventually(lambda n=name: certificate_ready(cluster, n), f"Certificate {name} Ready", within=60)


def secret_volumes(workload: Obj) -> dict[str, Obj]:
    """The Secret volumes of a workload's pods by Secret name."""
    return {v["secret"]["secretName"]: v["secret"] for v in pod_spec(workload)["volumes"] if "secret" in v}


async def test_cert_manager_objects_pass_dry_run_against_its_crds_and_keep_their_fields(
    cert_manager: LocalCluster,
) -> None:
    async with cert_manager.api_client() as api:
        dyn = await DynamicClient(api)
        problems = await dry_run_problems(dyn, [("overlays/cert-manager", o) for o in cert_manager_objects(overlay())])
        # The CRDs' structural schemas prune what cert-manager does not know: the check would see it.
        certificate = copy.deepcopy(find(overlay(), "Certificate", SERVING))
        certificate["spec"]["renewBeforeDays"] = 10
        stored = await dry_run(dyn, certificate)
        assert missing_fields(certificate, stored) == [".spec.renewBeforeDays"]
    assert not problems, "\n".join(problems)


async def test_cert_manager_issues_the_chain_and_each_workload_mounts_only_what_it_needs(
    cert_manager: LocalCluster,
) -> None:
    objs = overlay()
    await apply_overlay(cert_manager, objs)
    await wait_issued(cert_manager, [CA, SERVING, BUNDLE])
    _, ca_secret = await secret_files(cert_manager, NS, CA)
    _, serving = await secret_files(cert_manager, NS, SERVING)
    _, bundle = await secret_files(cert_manager, NS, BUNDLE)
    ca = x509.load_pem_x509_certificate(ca_secret["tls.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    # The serving certificate: the Service's names, server auth, signed by the CA.
    cert = x509.load_pem_x509_certificate(serving["tls.crt"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sorted(names) == sorted(SERVICE_NAMES)
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    cert.verify_directly_issued_by(ca)
    assert serving["ca.crt"] == ca_secret["tls.crt"]

    # The agents' Secret carries the same CA certificate; its own certificate is good for nothing.
    assert bundle["ca.crt"] == ca_secret["tls.crt"]
    carrier = x509.load_pem_x509_certificate(bundle["tls.crt"])
    with pytest.raises(x509.ExtensionNotFound):
        carrier.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    usages = set(carrier.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.EMAIL_PROTECTION}
    assert " " in carrier.subject.rfc4514_string()  # a common name no host name check matches

    def public(pem: bytes) -> bytes:
        key_ = serialization.load_pem_private_key(pem, password=None).public_key()
        return key_.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    assert len({public(ca_secret["tls.key"]), public(serving["tls.key"]), public(bundle["tls.key"])}) == 3

    # Who mounts what: the tracker the serving Secret; the agents only ca.crt of the carrier; nobody the CA.
    tracker = secret_volumes(find(objs, "Deployment", "kube-ip-tracker"))
    agent = secret_volumes(find(objs, "DaemonSet", "kube-ip-agent"))
    assert set(tracker) == {SERVING} and set(agent) == {BUNDLE}
    assert agent[BUNDLE]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    # The bootstrap's objects are gone: the tracker writes nothing in the API.
    assert not [key(o) for o in objs if o["kind"] in ("Role", "RoleBinding", "ConfigMap", "Secret")]


def tracker_args(objs: list[Obj], kubeconfig: Path, tls_dir: Path) -> list[str]:
    """The overlay Deployment's args for a local process: the mount path replaced by ``tls_dir``, the
    cluster from ``kubeconfig`` (TrackerProcess sets the addresses)."""
    container = pod_spec(find(objs, "Deployment", "kube-ip-tracker"))["containers"][0]
    drop = {"--listen-address", "--metrics-address", "--gcp-cluster-names"}
    args = [a.replace(TLS_MOUNT, str(tls_dir)) for a in container["args"] if a.split("=", 1)[0] not in drop]
    return [*args, f"--kubeconfig={kubeconfig}"]


async def test_tracker_serves_cert_managers_certificate_and_renewals_keep_running_watches(
    cert_manager: LocalCluster, tmp_path: Path
) -> None:
    objs = overlay()
    # Renewal within seconds instead of days, as a kustomize patch of one's own would set it.
    serving_cert = find(objs, "Certificate", SERVING)
    serving_cert["spec"] |= {"duration": "1h", "renewBefore": "59m50s"}
    await apply_overlay(cert_manager, objs)
    await wait_issued(cert_manager, [CA, BUNDLE, SERVING])
    tls_dir, agent_ca_dir = tmp_path / "tracker-tls", tmp_path / "agent-ca"
    agent_ca = agent_ca_dir / "ca.crt"
    [agent_ca_items] = [
        v["secret"]["items"] for v in pod_spec(find(objs, "DaemonSet", "kube-ip-agent"))["volumes"] if "secret" in v
    ]
    async with cert_manager.api_client() as api:
        token_file = tmp_path / "agent.token"
        token_file.write_text(
            await service_account_token(api, NS, "kube-ip-agent", audiences=[TOKEN_AUDIENCE], expiration_seconds=3600)
        )
    kubeconfig = kubeconfig_for(cert_manager, TRACKER_SA, tmp_path / "tracker.kubeconfig")
    tracker = TrackerProcess(
        "cert-manager",
        tracker_args(objs, kubeconfig, tls_dir),
        tmp_path,
        tls=lambda: grpc.ssl_channel_credentials(agent_ca.read_bytes()),
        server_name=SERVER_NAME,
    )
    # The kubelet's part: both pods' Secret volumes, kept in step with the Secrets.
    async with (
        background(mirror_secret(cert_manager, NS, SERVING, tls_dir)),
        background(mirror_secret(cert_manager, NS, BUNDLE, agent_ca_dir, [i["key"] for i in agent_ca_items])),
    ):
        await eventually(lambda: (tls_dir / "tls.key").exists() and agent_ca.exists(), "Secret volumes written")
        tracker.start()
        try:
            await eventually(tracker.serving, "tracker serves TLS verified by the agents' CA file", [tracker])
            ca_pem = agent_ca.read_bytes()
            # Another CA, or a name the certificate does not hold, is refused.
            other_ca = certs.TestCA(tmp_path, "other-ca").cert_path.read_bytes()
            with pytest.raises(ssl.SSLCertVerificationError):
                certs.peer_certificate(tracker.address, other_ca, SERVER_NAME)
            with pytest.raises(ssl.SSLCertVerificationError):
                certs.peer_certificate(tracker.address, ca_pem, "kube-ip-tracker.default.svc")

            # The Deployment's readiness probe (its CA file from the serving Secret) verifies it too.
            container = pod_spec(find(objs, "Deployment", "kube-ip-tracker"))["containers"][0]
            probe = [
                f"--address={tracker.address}" if a.startswith("--address=") else a.replace(TLS_MOUNT, str(tls_dir))
                for a in container["readinessProbe"]["exec"]["command"]
            ]
            assert await probe_exit_code([sys.executable, *probe[1:]]) == 0

            # An agent's client: the agents' CA file and a projected token of the agent's service account.
            store = AgentStore()
            options = ClientOptions(
                backoff_base=0.1,
                backoff_cap=1.0,
                tls=TlsOptions(ca_file=agent_ca, server_name=SERVER_NAME),
                token=TokenOptions(token_file, cert_manager.name),
            )
            watcher = TrackerClient(tracker.address, store, options)
            watcher.start()
            try:
                await asyncio.wait_for(watcher.wait_ready(), 30)
                before = client_reconnects(watcher.target)
                first = certs.peer_certificate(tracker.address, ca_pem, SERVER_NAME)

                # cert-manager renews (a new key, the same CA): new connections get it, the watch streams on.
                def renewed() -> bool:
                    return certs.peer_certificate(tracker.address, ca_pem, SERVER_NAME).serial_number != (
                        first.serial_number
                    )

                await eventually(renewed, "a new connection gets cert-manager's renewal", [tracker], within=60)
                second = certs.peer_certificate(tracker.address, ca_pem, SERVER_NAME)
                assert second.public_key() != first.public_key()  # rotationPolicy: Always
                async with cert_manager.api_client() as api:
                    await objects.create_pod(api, "default", "after-renewal", ips=["10.3.0.1"])
                await eventually(
                    lambda: any(p.name == "after-renewal" for p in store.pods()), "the watch gets a new pod", [tracker]
                )

                def renewed_again() -> bool:
                    serial = certs.peer_certificate(tracker.address, ca_pem, SERVER_NAME).serial_number
                    return serial not in (first.serial_number, second.serial_number)

                await eventually(renewed_again, "a second renewal", [tracker], within=60)
                async with cert_manager.api_client() as api:
                    await objects.create_pod(api, "default", "after-second-renewal", ips=["10.3.0.2"])
                await eventually(
                    lambda: any(p.name == "after-second-renewal" for p in store.pods()),
                    "the watch gets another pod",
                    [tracker],
                )

                # The CA is renewed with its key kept (rotationPolicy: Never): serving certificates
                # signed after that still verify with the CA certificate the agents hold.
                old_ca = x509.load_pem_x509_certificate(ca_pem)
                ca_cert = find(objs, "Certificate", CA)
                ca_cert["spec"]["duration"] = "87599h"  # a spec change: cert-manager issues it again
                await apply_overlay(cert_manager, [ca_cert])

                async def ca_renewed() -> x509.Certificate | None:
                    new = x509.load_pem_x509_certificate((await secret_files(cert_manager, NS, CA))[1]["tls.crt"])
                    return new if new.serial_number != old_ca.serial_number else None

                await eventually(ca_renewed, "the CA renewed", [tracker], within=60)
                new_ca = await ca_renewed()
                assert new_ca is not None and new_ca.public_key() == old_ca.public_key()
                assert new_ca.subject == old_ca.subject

                def signed_after_ca_renewal() -> bool:
                    cert = certs.peer_certificate(tracker.address, ca_pem, SERVER_NAME)  # the agents' old CA file
                    return cert.not_valid_before_utc > new_ca.not_valid_before_utc

                await eventually(
                    signed_after_ca_renewal, "a certificate issued after the CA renewal", [tracker], within=60
                )
                assert watcher.connected and client_reconnects(watcher.target) == before, "the watch reconnected"
            finally:
                await watcher.stop()
        finally:
            tracker.stop()
    assert "Reloaded TLS certificate" in tracker.log_path.read_text()
