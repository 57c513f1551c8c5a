"""TLS with nothing to prepare: the tracker keeps its own CA and serving certificate in a Secret.

``TlsBootstrap(spec, config)`` talks to the API server of the tracker's own cluster (``spec``).
Each :meth:`~TlsBootstrap.sync`:

1. reads the Secret ``config.secret`` (Opaque; keys in :mod:`.bootstrap_pki`); when it does not
   exist, creates it (POST; a 409 AlreadyExists means another replica was first: read and reuse
   its CA). When it is empty (the manifest creates it without data) or needs a change (renewal,
   CA rotation, a serving certificate for other names), replaces it with the resourceVersion it
   read: a 409 Conflict means another replica changed it first, so read it again. Replicas that
   start together thus end up with one CA;
2. publishes the CA bundle (previous + current + next CA) under ``ca.crt`` in the ConfigMap
   ``config.configmap`` that the agents mount (created, or replaced when it differs);
3. writes ``tls.crt``, ``tls.key`` and ``ca.crt`` into ``config.directory`` when they differ, as
   one version (:class:`~.atomic_files.AtomicDirectory`: a new directory, then one rename), so no
   reader sees a new certificate with the old key. The gRPC server reads those files through
   :class:`kube_ip_tracker.server.tls.ReloadingTls`, which picks up a renewal on the next
   handshake while open streams keep their session.

:meth:`~TlsBootstrap.run` repeats that every :attr:`BootstrapConfig.check_interval`, with backoff on
errors (the files on disk stay in use). A Secret whose CA is unusable raises
:class:`~.bootstrap_pki.PkiError` naming the key: the tracker does not replace a CA agents may trust;
empty the Secret to start over.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import Counter, Gauge

from kube_ip_tracker.backoff import Backoff
from kube_ip_tracker.kube.errors import describe_error
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.model import ClusterSpec
from kube_ip_tracker.server import bootstrap_pki as pki
from kube_ip_tracker.server.atomic_files import AtomicDirectory
from kube_ip_tracker.tls_files import TlsFiles

log = logging.getLogger(__name__)

BOOTSTRAP_SYNCS = Counter(
    "kube_ip_tracker_tls_bootstrap_syncs_total",
    "Passes of the TLS bootstrap over its Secret and ConfigMap, by result (ok, error: the files on disk "
    "stay in use and the pass is retried with backoff)",
    ["result"],
)
BOOTSTRAP_WRITES = Counter(
    "kube_ip_tracker_tls_bootstrap_writes_total",
    "Objects the TLS bootstrap created or replaced, by object (secret, configmap) and verb (create, update)",
    ["object", "verb"],
)
BOOTSTRAP_CA_EXPIRY = Gauge(
    "kube_ip_tracker_tls_bootstrap_ca_expiry_timestamp_seconds",
    "Expiry (notAfter, Unix time) of the CA that signs the serving certificate",
)

MAX_CONFLICTS = 5
LABELS = {"app.kubernetes.io/name": "kube-ip-tracker", "app.kubernetes.io/component": "tls-bootstrap"}
REQUEST_TIMEOUT = 30.0


class BootstrapError(RuntimeError):
    """The API server could not be asked or refused a request; the message names the object."""


@dataclass(frozen=True)
class BootstrapConfig:
    """Where the material lives and what it is for."""

    namespace: str
    secret: str
    configmap: str
    names: tuple[str, ...]
    lifetimes: pki.Lifetimes
    directory: Path

    @property
    def files(self) -> TlsFiles:
        return TlsFiles(self.directory / pki.TLS_CERT, self.directory / pki.TLS_KEY)

    @property
    def ca_file(self) -> Path:
        return self.directory / pki.BUNDLE_KEY

    @property
    def check_interval(self) -> float:
        """How often the Secret is read again: a tenth of the certificate lifetime, at most a minute."""
        return max(0.2, min(60.0, self.lifetimes.cert.total_seconds() / 10))


def service_names(service: str, namespace: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The DNS names of a Service in its cluster (``svc``, ``svc.ns``, ``svc.ns.svc``, ``...cluster.local``) + extra."""
    base = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    return tuple(dict.fromkeys([*base, *extra]))


def _decode(data: dict[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


def _encode(data: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


class TlsBootstrap:
    """Keeps the Secret, the ConfigMap and the serving files in step; see the module docstring."""

    def __init__(self, spec: ClusterSpec, config: BootstrapConfig) -> None:
        self.spec = spec
        self.config = config
        self.current: pki.Pki | None = None

    @property
    def _where(self) -> str:
        return f"{self.config.namespace}/{self.config.secret}"

    def _error(self, exc: BaseException, what: str) -> BootstrapError:
        return BootstrapError(describe_error(exc, what)[1])

    async def _get(self, read: Any, kind: str, name: str) -> Any:
        try:
            return await read(name, self.config.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise self._error(e, f"get {kind} {self.config.namespace}/{name}") from None

    async def _write(self, kind: str, verb: str, name: str, call: Any, *args: Any) -> bool:
        """Create or replace; False on 409 (another replica was first), BootstrapError on other refusals."""
        try:
            await call(*args)
        except ApiException as e:
            if e.status == 409:
                return False
            raise self._error(e, f"{verb} {kind} {self.config.namespace}/{name}") from None
        BOOTSTRAP_WRITES.labels(kind, verb).inc()
        return True

    def _metadata(self, name: str, current: client.V1ObjectMeta | None) -> client.V1ObjectMeta:
        """Metadata for a create (``current`` None) or a replace: the object's own (labels, annotations
        such as kubectl's last-applied configuration, resourceVersion for the conflict check) plus ours."""
        meta = current or client.V1ObjectMeta(name=name, namespace=self.config.namespace)
        meta.labels = {**(meta.labels or {}), **LABELS}
        return meta

    def _secret_body(self, material: pki.Pki, current: client.V1ObjectMeta | None) -> client.V1Secret:
        meta = self._metadata(self.config.secret, current)
        return client.V1Secret(metadata=meta, type="Opaque", data=_encode(material.secret_data()))

    async def _sync_secret(self, api: client.CoreV1Api) -> pki.Pki:
        names, lifetimes = self.config.names, self.config.lifetimes
        ca_name = f"kube-ip-tracker CA {self.config.namespace}"
        for _ in range(MAX_CONFLICTS):
            secret = await self._get(api.read_namespaced_secret, "secret", self.config.secret)
            if secret is None:
                material, reasons = pki.plan(pki.parse({}, names), names, lifetimes, ca_name)
                if await self._write(
                    "secret",
                    "create",
                    self.config.secret,
                    api.create_namespaced_secret,
                    self.config.namespace,
                    self._secret_body(material, None),
                ):
                    log.info(
                        "Created Secret %s with a new CA and serving certificate for %s", self._where, ", ".join(names)
                    )
                    return material
                log.info("Secret %s was created by another replica meanwhile; reading it", self._where)
                continue
            if secret.type not in (None, "Opaque"):
                raise pki.PkiError(f"has type {secret.type}, not Opaque")
            stored = pki.parse(_decode(secret.data), names)
            material, reasons = pki.plan(stored, names, lifetimes, ca_name)
            if not reasons:
                return material
            body = self._secret_body(material, secret.metadata)
            if await self._write(
                "secret",
                "update",
                self.config.secret,
                api.replace_namespaced_secret,
                self.config.secret,
                self.config.namespace,
                body,
            ):
                log.info("Updated Secret %s: %s", self._where, "; ".join(reasons))
                return material
            log.info("Secret %s was changed by another replica meanwhile; reading it again", self._where)
        raise BootstrapError(f"Secret {self._where}: still conflicting after {MAX_CONFLICTS} attempts")

    async def _sync_configmap(self, api: client.CoreV1Api, bundle: str) -> None:
        name, namespace = self.config.configmap, self.config.namespace
        for _ in range(MAX_CONFLICTS):
            current = await self._get(api.read_namespaced_config_map, "configmap", name)
            if current is None:
                body = client.V1ConfigMap(metadata=self._metadata(name, None), data={pki.BUNDLE_KEY: bundle})
                if await self._write("configmap", "create", name, api.create_namespaced_config_map, namespace, body):
                    log.info("Published the CA bundle in ConfigMap %s/%s", namespace, name)
                    return
                continue
            if (current.data or {}).get(pki.BUNDLE_KEY) == bundle:
                return
            data = {**(current.data or {}), pki.BUNDLE_KEY: bundle}
            body = client.V1ConfigMap(metadata=self._metadata(name, current.metadata), data=data)
            if await self._write("configmap", "update", name, api.replace_namespaced_config_map, name, namespace, body):
                log.info("Published the new CA bundle in ConfigMap %s/%s", namespace, name)
                return
        raise BootstrapError(f"ConfigMap {namespace}/{name}: still conflicting after {MAX_CONFLICTS} attempts")

    def _write_files(self, material: pki.Pki) -> None:
        files = {
            pki.BUNDLE_KEY: material.bundle(),
            pki.TLS_CERT: material.serving.cert_pem,
            pki.TLS_KEY: material.serving.key_pem,
        }
        if pki.TLS_CERT in AtomicDirectory(self.config.directory).write(files):
            log.info(
                "Serving certificate for %s (expires %s) written to %s",
                ", ".join(self.config.names),
                material.serving.cert.not_valid_after_utc.isoformat(),
                self.config.directory,
            )

    async def sync(self) -> pki.Pki:
        """One pass; PkiError when the Secret's CA is unusable, BootstrapError when the API server refused."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT), api_client(self.spec) as api_:
                api = client.CoreV1Api(api_)
                try:
                    material = await self._sync_secret(api)
                except pki.PkiError as e:
                    raise pki.PkiError(
                        f"Secret {self._where} holds an unusable CA: {e}; the tracker does not replace a CA the agents "
                        "may trust: remove the Secret's data (or delete it, where the tracker may create it) to have a new CA "
                        "made (docs/security.md)"
                    ) from None
                await self._sync_configmap(api, material.bundle().decode())
        except (BootstrapError, pki.PkiError):
            raise
        except Exception as e:  # unreachable, timed out, bad kubeconfig: named, retried
            raise self._error(e, f"sync Secret {self._where}") from None
        try:
            self._write_files(material)
        except OSError as e:
            raise BootstrapError(f"cannot write the TLS files to {self.config.directory}: {e}") from None
        self.current = material
        BOOTSTRAP_CA_EXPIRY.set(material.ca.cert.not_valid_after_utc.timestamp())
        return material

    async def first_sync(self, backoff: Backoff | None = None) -> pki.Pki:
        """Sync until it works (the tracker cannot serve before); PkiError is not retried."""
        backoff = backoff or Backoff(0.5, 30.0)
        while True:
            try:
                material = await self.sync()
            except BootstrapError as e:
                BOOTSTRAP_SYNCS.labels("error").inc()
                delay = backoff.next_delay()
                log.error("TLS bootstrap: %s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                continue
            BOOTSTRAP_SYNCS.labels("ok").inc()
            return material

    async def run(self) -> None:
        """Re-read and renew every check interval until cancelled; errors are logged, counted and retried."""
        backoff = Backoff(self.config.check_interval, max(60.0, self.config.check_interval))
        delay = self.config.check_interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.sync()
            except Exception as e:  # never end the loop: the current certificate stays in use
                BOOTSTRAP_SYNCS.labels("error").inc()
                delay = backoff.next_delay()
                if not isinstance(e, (BootstrapError, pki.PkiError)):
                    log.exception("TLS bootstrap failed unexpectedly")
                log.error("TLS bootstrap: %s; the current certificate stays in use; retrying in %.1fs", e, delay)
                continue
            BOOTSTRAP_SYNCS.labels("ok").inc()
            backoff.reset()
            delay = self.config.check_interval


def lifetimes(cert_seconds: float, ca_seconds: float) -> pki.Lifetimes:
    """Lifetimes from seconds; ValueError when the CA would not outlive two certificates."""
    return pki.Lifetimes(datetime.timedelta(seconds=cert_seconds), datetime.timedelta(seconds=ca_seconds))
