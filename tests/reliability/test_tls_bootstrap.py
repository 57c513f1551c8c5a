"""The built-in TLS bootstrap (--tls-bootstrap-secret) on real tracker processes and a real API server.

Agents know only the CA bundle the trackers publish in a ConfigMap; two replicas starting together
end up with one CA; renewals and a CA rotation keep running watches while new connections get the
new certificate; a Secret holding garbage or a certificate for other names is handled as documented
in docs/security.md.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from kubernetes_asyncio import client

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.client import ClientOptions, TlsOptions, TrackerClient
from kube_ip_tracker.model import ClusterSpec
from kube_ip_tracker.server import bootstrap_pki, tls_bootstrap
from kube_ip_tracker.testing import certs, objects
from kube_ip_tracker.testing.clusters import LocalCluster
from kube_ip_tracker.testing.trackers import TRACKER_CMD, TrackerProcess, client_reconnects, eventually, http_status

pytestmark = pytest.mark.cluster

NS = "kube-system"
SECRET, CONFIGMAP = "kube-ip-tracker-tls", "kube-ip-tracker-ca"
SERVER_NAME = f"kube-ip-tracker.{NS}.svc.cluster.local"
NAMES = ["kube-ip-tracker", f"kube-ip-tracker.{NS}", f"kube-ip-tracker.{NS}.svc", SERVER_NAME]


def bootstrap_args(cluster: LocalCluster, *extra: str) -> list[str]:
    """A tracker watching ``cluster`` that bootstraps its TLS in the same cluster."""
    return [
        "--kubeconfig",
        str(cluster.kubeconfig),
        f"--tls-bootstrap-secret={SECRET}",
        f"--tls-bootstrap-ca-configmap={CONFIGMAP}",
        f"--tls-bootstrap-namespace={NS}",
        f"--tls-bootstrap-kubeconfig={cluster.kubeconfig}",
        *extra,
    ]


async def published_bundle(cluster: LocalCluster) -> bytes:
    """The ConfigMap's ca.crt, b'' while there is none."""
    async with cluster.api_client() as api:
        try:
            cm = await client.CoreV1Api(api).read_namespaced_config_map(CONFIGMAP, NS)
        except client.ApiException as e:
            if e.status == 404:
                return b""
            raise
    return (cm.data or {}).get("ca.crt", "").encode()


async def secret_data(cluster: LocalCluster) -> dict[str, bytes]:
    async with cluster.api_client() as api:
        secret = await client.CoreV1Api(api).read_namespaced_secret(SECRET, NS)
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


async def put_secret(
    cluster: LocalCluster, data: dict[str, bytes], type_: str = "Opaque", annotations: dict[str, str] | None = None
) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=SECRET, namespace=NS, annotations=annotations),
        type=type_,
        data={k: base64.b64encode(v).decode() for k, v in data.items()},
    )
    async with cluster.api_client() as api:
        await client.CoreV1Api(api).create_namespaced_secret(NS, body)


async def replace_secret_data(cluster: LocalCluster, data: dict[str, bytes]) -> None:
    """What an operator's ``kubectl edit`` does: the Secret's data replaced."""
    async with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        secret = await core.read_namespaced_secret(SECRET, NS)
        secret.data = {k: base64.b64encode(v).decode() for k, v in data.items()} or None
        await core.replace_namespaced_secret(SECRET, NS, secret)


def subjects(bundle: bytes) -> list[str]:
    return [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(bundle)] if bundle else []


def peer_certificate(address: str, bundle: bytes, server_name: str = SERVER_NAME) -> x509.Certificate:
    """The certificate a new TLS connection to ``address`` gets, verified against ``bundle`` for ``server_name``."""
    return certs.peer_certificate(address, bundle, server_name)


def tls_tracker(name: str, args: list[str], tmp_path: Path, bundle_file: Path) -> TrackerProcess:
    """A tracker process whose test helpers verify it with the CA bundle in ``bundle_file`` (read per channel)."""
    return TrackerProcess(
        name,
        args,
        tmp_path,
        tls=lambda: grpc.ssl_channel_credentials(bundle_file.read_bytes()),
        server_name=SERVER_NAME,
    )


async def wait_bundle(cluster: LocalCluster, path: Path, trackers: list[TrackerProcess]) -> bytes:
    """Wait for the ConfigMap's bundle and copy it to ``path``, as the kubelet does for the agents' mount."""
    await eventually(lambda: published_bundle(cluster), "CA bundle published in the ConfigMap", trackers)
    bundle = await published_bundle(cluster)
    await asyncio.to_thread(path.write_bytes, bundle)
    return bundle


@pytest.mark.parametrize("precreated", [False, True], ids=["created-by-the-trackers", "empty-from-the-manifest"])
async def test_two_replicas_starting_together_share_one_ca_that_agents_verify(
    cluster_factory, tmp_path: Path, precreated: bool
) -> None:
    [cluster] = cluster_factory(1, names=["boot"])
    if precreated:  # manifests/install.yaml creates the Secret without data
        await put_secret(cluster, {})
    bundle_file = tmp_path / "bundle" / "ca.crt"
    bundle_file.parent.mkdir()
    replicas = [tls_tracker(f"replica-{i}", bootstrap_args(cluster), tmp_path, bundle_file) for i in range(2)]
    for replica in replicas:  # at once: both find no CA and race to store theirs
        replica.start()
    try:
        bundle = await wait_bundle(cluster, bundle_file, replicas)
        for replica in replicas:
            await eventually(replica.serving, f"{replica.name} serves TLS verified by the bundle", replicas)
        # One CA: in the bundle, in the Secret, and behind both replicas' serving certificate.
        [ca] = x509.load_pem_x509_certificates(bundle)
        assert (await secret_data(cluster))["ca.crt"] == ca.public_bytes(bootstrap_pki.serialization.Encoding.PEM)
        served = [peer_certificate(r.address, bundle) for r in replicas]
        for cert in served:
            cert.verify_directly_issued_by(ca)
            assert bootstrap_pki.dns_names(cert) == set(NAMES)
        assert served[0].serial_number == served[1].serial_number
        logs = "\n".join(r.log_path.read_text() for r in replicas)
        assert logs.count("with a new CA") + logs.count("no CA yet: created one") == 1, logs

        # An agent that knows only the published bundle syncs the cluster's pods over TLS.
        async with cluster.api_client() as api:
            await objects.create_namespace(api, "team-a")
            await objects.create_pod(api, "team-a", "web", ips=["10.1.0.7"])
        store = AgentStore()
        options = ClientOptions(
            backoff_base=0.1, backoff_cap=1.0, tls=TlsOptions(ca_file=bundle_file, server_name=SERVER_NAME)
        )
        agent = TrackerClient(replicas[1].address, store, options)
        agent.start()
        try:
            await eventually(lambda: any(p.name == "web" for p in store.pods()), "agent has the pod", replicas)
        finally:
            await agent.stop()
        # The operator command of docs/deploy.md, with the bundle and one of the Service's names.
        status = await asyncio.create_subprocess_exec(
            *TRACKER_CMD, "status", "--address", replicas[0].address, "--tracker-ca-file", str(bundle_file),
            "--tracker-server-name", f"kube-ip-tracker.{NS}.svc",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await status.communicate()
        assert f"tracker {replicas[0].address}: SERVING" in out.decode(), err.decode()

        # Verification is real: another CA, or another name, is refused at the handshake.
        rogue = certs.TestCA(tmp_path / "rogue", "rogue")
        with pytest.raises(ssl.SSLCertVerificationError):
            peer_certificate(replicas[0].address, rogue.cert_path.read_bytes())
        with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|match"):
            peer_certificate(replicas[0].address, bundle, server_name="evil.example.com")
    finally:
        for replica in replicas:
            replica.stop()


async def test_renewal_and_ca_rotation_keep_running_watches(cluster_factory, tmp_path: Path) -> None:
    [cluster] = cluster_factory(1, names=["rotate"])
    bundle_file = tmp_path / "ca.crt"
    # Serving certificates for 6s (renewed after 4s); CAs for 36s: a next CA after 24s, signing after 30s.
    args = bootstrap_args(cluster, "--tls-bootstrap-cert-validity=6s", "--tls-bootstrap-ca-validity=36s")
    tracker = tls_tracker("rotating", args, tmp_path, bundle_file).start()
    try:
        first_bundle = await wait_bundle(cluster, bundle_file, [tracker])
        [first_ca] = x509.load_pem_x509_certificates(first_bundle)
        await eventually(tracker.serving, "tracker serves TLS", [tracker])
        first_cert = peer_certificate(tracker.address, first_bundle)

        store = AgentStore()
        options = ClientOptions(
            backoff_base=0.1, backoff_cap=1.0, tls=TlsOptions(ca_file=bundle_file, server_name=SERVER_NAME)
        )
        watcher = TrackerClient(tracker.address, store, options)
        watcher.start()
        try:
            await asyncio.wait_for(watcher.wait_ready(), 30)
            before = client_reconnects(watcher.target)

            created: list[str] = []

            async def pod_arrives(name: str) -> None:
                created.append(name)
                async with cluster.api_client() as api:
                    await objects.create_pod(api, "default", name, ips=[f"10.2.0.{len(created)}"])
                await eventually(lambda: any(p.name == name for p in store.pods()), f"watcher gets {name}", [tracker])

            # Serving certificate renewed with the same CA: new connections get it, the watch streams on.
            async def renewed() -> bool:
                return peer_certificate(tracker.address, first_bundle).serial_number != first_cert.serial_number

            await eventually(renewed, "a new connection gets a renewed certificate", [tracker], within=20, interval=0.3)
            await pod_arrives("after-renewal")

            # CA rotation: the bundle holds old and new CA, then the new CA signs, then the old one leaves.
            async def both_cas() -> bool:
                return len(subjects(await published_bundle(cluster))) == 2

            await eventually(both_cas, "bundle with the next CA", [tracker], within=40, interval=0.2)
            overlap = await published_bundle(cluster)
            bundle_file.write_bytes(overlap)  # the kubelet updates the agents' mount

            async def signed_by_new_ca() -> bool:
                cert = peer_certificate(tracker.address, overlap)
                return cert.issuer != first_ca.subject

            await eventually(signed_by_new_ca, "new connections get a certificate of the new CA", [tracker], within=30)
            await pod_arrives("after-ca-rotation")

            async def old_ca_gone() -> bool:
                return subjects(await published_bundle(cluster)) == subjects(overlap)[1:]

            await eventually(old_ca_gone, "the expired CA leaves the bundle", [tracker], within=30, interval=0.2)
            bundle_file.write_bytes(await published_bundle(cluster))
            await pod_arrives("after-old-ca-expired")
            assert watcher.connected and client_reconnects(watcher.target) == before, "the watch never reconnected"
            # A new connection verified by the old CA alone is refused now.
            with pytest.raises(ssl.SSLCertVerificationError):
                peer_certificate(tracker.address, first_bundle)
            # ...and one with the current bundle (a restarted agent) works.
            assert await tracker.serving()
        finally:
            await watcher.stop()
        log = tracker.log_path.read_text()
        assert "next CA created and added to the bundle" in log and "next CA now signs" in log
        assert "previous CA expired: removed from the bundle" in log
    finally:
        tracker.stop()


async def test_secret_with_garbage_ca_is_a_named_error_and_a_foreign_certificate_is_reissued(
    cluster_factory, tmp_path: Path
) -> None:
    [cluster] = cluster_factory(1, names=["garbage"])
    await put_secret(cluster, {"ca.crt": b"not a certificate", "ca.key": b"nor a key"})
    broken = TrackerProcess("broken", bootstrap_args(cluster), tmp_path).start()
    assert broken.proc is not None
    assert await asyncio.to_thread(broken.proc.wait, 60) == 1
    log = broken.log_path.read_text()
    assert f"Secret {NS}/{SECRET} holds an unusable CA: ca.crt holds no PEM certificate" in log, log
    assert "remove the Secret's data" in log

    # A usable CA with a serving certificate for other names (and not signed by it): the CA is kept,
    # the certificate reissued.
    async with cluster.api_client() as api:
        await client.CoreV1Api(api).delete_namespaced_secret(SECRET, NS)
    ca = bootstrap_pki.new_ca("operator CA", bootstrap_pki.datetime.timedelta(days=3650))
    foreign = certs.TestCA(tmp_path / "foreign", "foreign")
    cert_path, key_path = foreign.issue("other", hosts=["other.example.com"])
    await put_secret(
        cluster,
        {
            "ca.crt": ca.cert_pem,
            "ca.key": ca.key_pem,
            "tls.crt": cert_path.read_bytes(),
            "tls.key": key_path.read_bytes(),
        },
    )
    bundle_file = tmp_path / "ca.crt"
    # 20s certificates: the Secret is read again every 2s.
    args = bootstrap_args(cluster, "--tls-bootstrap-cert-validity=20s")
    tracker = tls_tracker("recovers", args, tmp_path, bundle_file).start()
    try:
        bundle = await wait_bundle(cluster, bundle_file, [tracker])
        assert bundle == ca.cert_pem
        await eventually(tracker.serving, "tracker serves with a reissued certificate", [tracker])
        served = peer_certificate(tracker.address, bundle)
        served.verify_directly_issued_by(ca.cert)
        assert "serving certificate not signed by the CA in ca.crt: reissued" in tracker.log_path.read_text()
        assert (await secret_data(cluster))["ca.key"] == ca.key_pem

        # Garbage while running: logged (with the Secret and key), the certificate in use stays in use.
        await replace_secret_data(cluster, {**(await secret_data(cluster)), "ca.key": b"garbage"})
        await eventually(
            lambda: "ca.key holds no unencrypted PEM private key" in tracker.log_path.read_text(),
            "the running tracker logs the unusable CA",
            [tracker],
        )
        assert "the current certificate stays in use" in tracker.log_path.read_text()
        assert tracker.alive and await tracker.serving()
        assert peer_certificate(tracker.address, bundle).serial_number == served.serial_number
        # The documented way to start over: remove the Secret's data; a new CA is made and published.
        await replace_secret_data(cluster, {})

        async def new_ca_published() -> bool:
            published = await published_bundle(cluster)
            return bool(published) and published != bundle

        await eventually(new_ca_published, "a new CA in the ConfigMap", [tracker], within=30)
        bundle_file.write_bytes(await published_bundle(cluster))
        await eventually(tracker.serving, "tracker serves a certificate of the new CA", [tracker])
    finally:
        tracker.stop()

    # A Secret of another type (one the tracker did not make) is refused, named.
    async with cluster.api_client() as api:
        await client.CoreV1Api(api).delete_namespaced_secret(SECRET, NS)
    await put_secret(cluster, {"tls.crt": b"", "tls.key": b""}, type_="kubernetes.io/tls")
    typed = TrackerProcess("typed", bootstrap_args(cluster), tmp_path).start()
    assert typed.proc is not None
    assert await asyncio.to_thread(typed.proc.wait, 60) == 1
    assert "has type kubernetes.io/tls, not Opaque" in typed.log_path.read_text()


@pytest.mark.every_apiserver
@pytest.mark.parametrize("precreated", [False, True], ids=["create-race", "update-race"])
async def test_concurrent_bootstraps_agree_on_one_ca_through_conflicts(
    cluster_factory, tmp_path: Path, precreated: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Five bootstraps in one event loop read the missing (or empty) Secret before any of them writes:
    all but one get 409 (AlreadyExists on create, Conflict on update), read again and reuse its CA."""
    [cluster] = cluster_factory(1, names=["race"])
    applied = {"kubectl.kubernetes.io/last-applied-configuration": '{"kind":"Secret"}'}
    if precreated:  # as kubectl apply leaves it: the replace keeps the annotation
        await put_secret(cluster, {}, annotations=applied)
    lifetimes = tls_bootstrap.lifetimes(3600, 7200)
    spec = ClusterSpec("race", kubeconfig=str(cluster.kubeconfig))
    bootstraps = [
        tls_bootstrap.TlsBootstrap(
            spec,
            tls_bootstrap.BootstrapConfig(NS, SECRET, CONFIGMAP, tuple(NAMES), lifetimes, tmp_path / f"replica-{i}"),
        )
        for i in range(5)
    ]
    caplog.set_level(logging.INFO, logger=tls_bootstrap.__name__)
    results = await asyncio.gather(*(b.sync() for b in bootstraps))
    assert len({r.ca.cert.serial_number for r in results}) == 1
    assert "by another replica meanwhile" in caplog.text
    stored = await secret_data(cluster)
    assert stored["ca.crt"] == results[0].ca.cert_pem
    async with cluster.api_client() as api:
        meta = (await client.CoreV1Api(api).read_namespaced_secret(SECRET, NS)).metadata
    assert meta.labels["app.kubernetes.io/component"] == "tls-bootstrap"
    assert (meta.annotations or {}).items() >= (applied.items() if precreated else set())
    assert await published_bundle(cluster) == results[0].ca.cert_pem
    for b in bootstraps:  # every replica serves a certificate of that CA from its files
        cert = x509.load_pem_x509_certificate(b.config.files.cert_file.read_bytes())
        cert.verify_directly_issued_by(results[0].ca.cert)


async def test_a_tracker_waiting_for_its_api_server_is_alive_not_ready_and_serves_once_it_answers(
    cluster_factory, tmp_path: Path
) -> None:
    [cluster] = cluster_factory(1, names=["late"])
    cluster.stop_apiserver()
    bundle_file = tmp_path / "ca.crt"
    tracker = TrackerProcess(
        "late",
        bootstrap_args(cluster),
        tmp_path,
        metrics=True,
        tls=lambda: grpc.ssl_channel_credentials(bundle_file.read_bytes()),
        server_name=SERVER_NAME,
    ).start()
    base = f"http://127.0.0.1:{tracker.metrics_port}"
    try:
        await eventually(
            lambda: (
                "TLS bootstrap: sync Secret kube-system/kube-ip-tracker-tls: cannot connect to"
                in tracker.log_path.read_text()
            ),
            "the bootstrap logs that it cannot reach the API server",
            [tracker],
        )
        assert await asyncio.to_thread(http_status, f"{base}/healthz") == 200  # not restarted by liveness
        assert await asyncio.to_thread(http_status, f"{base}/readyz") == 503
        assert tracker.alive
        await asyncio.to_thread(cluster.start_apiserver)
        await wait_bundle(cluster, bundle_file, [tracker])
        await eventually(tracker.serving, "tracker serves TLS once the API server answers", [tracker], within=60)

        async def ready() -> bool:
            return await asyncio.to_thread(http_status, f"{base}/readyz") == 200

        await eventually(ready, "/readyz 200", [tracker])
        metrics = tracker.metrics_text()
        assert 'kube_ip_tracker_tls_bootstrap_syncs_total{result="error"}' in metrics
        assert 'kube_ip_tracker_tls_bootstrap_writes_total{object="secret",verb="create"} 1.0' in metrics
    finally:
        tracker.stop()
