"""TLS for the tracker's gRPC API from PEM files that are re-read when they change.

``ReloadingTls(cert_file, key_file, client_ca_file)`` checks the files when it is created (an error
names the file and what is wrong) and gives ``grpc.dynamic_ssl_server_credentials``. gRPC asks it for
the current configuration on every new TLS handshake; it compares the files' stat fingerprints
(inode, size, mtime) with the loaded ones and re-reads them only when one changed. A rotation is thus
used by the next connection, while established connections (and their Watch streams) keep the session
they negotiated. The certificate and key are read as one version
(:func:`kube_ip_tracker.tls_files.read_together`), so files published as the TLS bootstrap and the
kubelet's Secret volumes do (:mod:`.atomic_files`: a swap of the ``..data`` symlink, every file a
new inode) are never combined across versions. A mismatched set from a writer that replaces files
one by one (new certificate, old key) is not used: the previous configuration stays in force, the problem is logged once and counted, and the files are
checked again on the next handshake.

With a client CA every client must present a certificate signed by it (mTLS); the CA bundle is
reloaded like the serving certificate.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc
from cryptography import x509
from prometheus_client import Counter, Gauge

from kube_ip_tracker.tls_files import Fingerprint, LoadedTls, TlsConfigError, TlsFiles, load, stat_fingerprint

log = logging.getLogger(__name__)

TLS_RELOADS = Counter(
    "kube_ip_tracker_tls_reloads_total",
    "Reloads of the gRPC TLS files after they changed, by result (ok: in use for new connections; "
    "error: unusable, the previous certificate stays in use)",
    ["result"],
)
TLS_CERT_EXPIRY = Gauge(
    "kube_ip_tracker_tls_certificate_expiry_timestamp_seconds",
    "Expiry (notAfter, Unix time) of the serving certificate in use for new connections",
)


def _configuration(loaded: LoadedTls) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(loaded.private_key, loaded.cert_chain)], root_certificates=loaded.client_ca
    )


class ReloadingTls:
    """Server TLS from files, re-read for new connections when they change. Thread-safe."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._fingerprint = stat_fingerprint(files.paths)
        self._loaded = load(files)  # raises TlsConfigError naming the bad file
        self._failed: Fingerprint | None = None
        self.reloads = 0
        TLS_CERT_EXPIRY.set(self._loaded.not_after)

    @property
    def require_client_auth(self) -> bool:
        return self.files.client_ca_file is not None

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic server credentials backed by this object (one per server port)."""
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._loaded), self._fetch, require_client_authentication=self.require_client_auth
        )

    def check(self) -> bool:
        """Re-read the files if they changed; True if a new configuration was loaded."""
        with self._lock:
            current = stat_fingerprint(self.files.paths)
            if current == self._fingerprint or current == self._failed:
                return False
            try:
                loaded = load(self.files)
            except TlsConfigError as e:
                self._failed = current
                TLS_RELOADS.labels("error").inc()
                log.error("TLS files changed but cannot be used; new connections keep the previous certificate: %s", e)
                return False
            if stat_fingerprint(self.files.paths) != current:  # rewritten while we read: read again next time
                return False
            self._loaded, self._fingerprint, self._failed = loaded, current, None
            self.reloads += 1
            TLS_RELOADS.labels("ok").inc()
            TLS_CERT_EXPIRY.set(loaded.not_after)
            log.info(
                "Reloaded TLS certificate %s (expires %s) for new connections",
                self.files.cert_file,
                x509.load_pem_x509_certificates(loaded.cert_chain)[0].not_valid_after_utc.isoformat(),
            )
            return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's per-handshake callback: a new configuration, or None to keep the current one."""
        try:
            if self.check():
                return _configuration(self._loaded)
        except Exception:  # never fail a handshake because of the check itself
            log.exception("Checking the TLS files for changes failed")
        return None


def reloading_credentials(
    cert_file: str | Path, key_file: str | Path, client_ca_file: str | Path | None = None
) -> tuple[ReloadingTls, grpc.ServerCredentials]:
    """Check the files now and return the reloader with its gRPC credentials (``TlsConfigError`` if bad)."""
    tls = ReloadingTls(
        TlsFiles(Path(cert_file), Path(key_file), Path(client_ca_file) if client_ca_file is not None else None)
    )
    return tls, tls.credentials()
