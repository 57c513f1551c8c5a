"""A tracker client's TLS files, re-read when they change, for the next connection.

``ReloadingClientTls(ca_file, cert_file, key_file, target)`` reads and checks the files when it is
created (``TlsConfigError`` names the bad file). :meth:`ReloadingClientTls.credentials` is called
for every new channel (each reconnect): it compares the files' stat fingerprints (inode, size,
mtime; see :func:`kube_ip_tracker.server.tls.stat_fingerprint`) with the loaded ones and re-reads
them only when one changed. Open streams keep the session they negotiated. A half-written or
mismatched set (new certificate, old key) is not used: the previous material stays in use, the
problem is logged once per change and counted, and the files are checked again on the next connect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client import Counter

from kube_ip_tracker.tls_files import TlsConfigError, TlsFiles, load, read_certificates, stat_fingerprint

log = logging.getLogger(__name__)

CLIENT_TLS_RELOADS = Counter(
    "kube_ip_tracker_client_tls_reloads_total",
    "Reloads of the tracker client's TLS files after they changed, by result (ok: used for the next "
    "connection; error: unusable, the previous material stays in use)",
    ["target", "result"],
)


@dataclass(frozen=True)
class ClientTlsMaterial:
    """Checked PEM bytes: the CA bundle and the client certificate chain with its key (each optional)."""

    ca: bytes | None
    cert_chain: bytes | None
    private_key: bytes | None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.private_key, certificate_chain=self.cert_chain
        )


def load_client_tls(
    ca_file: str | Path | None, cert_file: str | Path | None, key_file: str | Path | None
) -> ClientTlsMaterial:
    """Read and check the files: PEM certificates, a PEM key matching the client certificate."""
    ca = read_certificates(Path(ca_file), "CA file") if ca_file is not None else None
    if cert_file is None or key_file is None:
        return ClientTlsMaterial(ca, None, None)
    pair = load(TlsFiles(Path(cert_file), Path(key_file)))
    return ClientTlsMaterial(ca, pair.cert_chain, pair.private_key)


class ReloadingClientTls:
    """Channel credentials from files, re-read on :meth:`credentials` when the files changed."""

    def __init__(
        self, ca_file: str | Path | None, cert_file: str | Path | None, key_file: str | Path | None, target: str
    ) -> None:
        self.paths = tuple(Path(p) if p is not None else None for p in (ca_file, cert_file, key_file))
        self.target = target
        self._fingerprint = stat_fingerprint(self.paths)
        self._credentials = load_client_tls(*self.paths).credentials()  # raises TlsConfigError naming the file
        self._failed: tuple[tuple[int, int, int], ...] | None = None
        self.reloads = 0
        self.errors = 0

    def credentials(self) -> grpc.ChannelCredentials:
        """The credentials for a new channel: the files' current contents if usable, else the last good ones."""
        current = stat_fingerprint(self.paths)
        if current == self._fingerprint or current == self._failed:
            return self._credentials
        try:
            material = load_client_tls(*self.paths)
        except TlsConfigError as e:
            self._failed = current
            self.errors += 1
            CLIENT_TLS_RELOADS.labels(target=self.target, result="error").inc()
            log.error(
                "TLS files of the tracker client (%s) changed but cannot be used; keeping the previous ones: %s",
                self.target,
                e,
            )
            return self._credentials
        if stat_fingerprint(self.paths) != current:  # rewritten while we read: read again next time
            return self._credentials
        self._credentials, self._fingerprint, self._failed = material.credentials(), current, None
        self.reloads += 1
        CLIENT_TLS_RELOADS.labels(target=self.target, result="ok").inc()
        log.info("Reloaded the TLS files of the tracker client (%s) for new connections", self.target)
        return self._credentials
