"""PEM files for TLS, shared by the tracker's server and the tracker client: read, check, fingerprint.

Errors name the file and what is wrong (:class:`TlsConfigError`); :func:`stat_fingerprint` tells
when a rotated file must be read again. :func:`load` reads a certificate and its key as one version
(:func:`read_together`), so a rotation between the two reads is read again rather than taken for a
mismatched pair.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization


class TlsConfigError(ValueError):
    """A TLS file is missing, unreadable or not what it should be; the message names it."""


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the serving certificate chain, its private key and the optional client CA bundle."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def paths(self) -> tuple[Path | None, ...]:
        """The files, for :func:`stat_fingerprint`."""
        return (self.cert_file, self.key_file, self.client_ca_file)


Fingerprint = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class LoadedTls:
    """Checked PEM material of a :class:`TlsFiles` and the serving certificate's expiry (Unix time)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    not_after: float


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TlsConfigError(f"cannot read TLS {what} {path}: {e.strerror}") from e


#: How often :func:`read_together` reads again when the files keep changing under it.
READ_ATTEMPTS = 5
#: The symlink naming the current version in the kubelet's AtomicWriter layout (Secret volumes).
DATA_LINK = "..data"


def _in_version(path: Path, versions: dict[Path, str]) -> Path:
    """``path`` inside the version its directory's ``..data`` names (kubelet layout), else ``path`` itself.

    ``versions`` keeps one ``readlink`` of ``..data`` per directory, so the files of one read come
    from one version directory even when ``..data`` is swapped between them.
    """
    try:
        link = os.readlink(path)
    except OSError:
        return path
    prefix = DATA_LINK + "/"
    if not link.startswith(prefix):
        return path
    if path.parent not in versions:
        try:
            versions[path.parent] = os.readlink(path.parent / DATA_LINK)
        except OSError:
            return path
    return path.parent / versions[path.parent] / link[len(prefix) :]


def _read_version(paths: Sequence[tuple[Path, str]]) -> list[bytes]:
    versions: dict[Path, str] = {}
    data = []
    for path, what in paths:
        try:
            data.append(_in_version(path, versions).read_bytes())
        except OSError as e:
            raise TlsConfigError(f"cannot read TLS {what} {path}: {e.strerror}") from e
    return data


def _identity(paths: Sequence[tuple[Path, str]]) -> tuple[tuple[str, tuple[int, int, int]], ...]:
    """Per file: where it resolves to (an AtomicWriter version directory is new per version) and its stat."""
    return tuple((os.path.realpath(p), *stat_fingerprint([p])) for p, _ in paths)


def read_together(paths: Sequence[tuple[Path, str]]) -> list[bytes]:
    """Read files rotated together (``(path, what)`` pairs) as one version; TlsConfigError naming a bad file.

    A file set published the kubelet's way (:mod:`kube_ip_tracker.server.atomic_files`, Secret
    volumes) is read from the one version directory that ``..data`` named when the read began. For
    other layouts, and when a version vanished while it was read: when any file's target or stat
    changed while they were read, all are read again (up to :data:`READ_ATTEMPTS` times; then the
    last read is returned and checked as it is).
    """
    data: list[bytes] = []
    for attempt in range(READ_ATTEMPTS):
        before = _identity(paths)
        try:
            data = _read_version(paths)
        except TlsConfigError:
            if attempt + 1 < READ_ATTEMPTS and _identity(paths) != before:
                continue
            raise
        if _identity(paths) == before:
            break
    return data


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TlsConfigError(f"TLS {what} {path} holds no valid PEM certificate: {e}") from e
    return certs


def read_certificates(path: Path, what: str) -> bytes:
    """The PEM bytes of ``path``, checked to hold at least one certificate (``TlsConfigError`` naming it)."""
    data = _read(path, what)
    _certificates(data, path, what)
    return data


def load(files: TlsFiles) -> LoadedTls:
    """Read and check the files: PEM certificates, a PEM key that matches the first certificate."""
    chain, key_pem = read_together([(files.cert_file, "certificate file"), (files.key_file, "key file")])
    ca = read_certificates(files.client_ca_file, "client CA file") if files.client_ca_file is not None else None
    leaf = _certificates(chain, files.cert_file, "certificate file")[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise TlsConfigError(f"TLS key file {files.key_file} holds no usable unencrypted PEM private key: {e}") from e
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != leaf.public_key().public_bytes(enc, pub):
        raise TlsConfigError(
            f"TLS key file {files.key_file} does not match the certificate in {files.cert_file} (different public keys)"
        )
    return LoadedTls(chain, key_pem, ca, leaf.not_valid_after_utc.timestamp())


def stat_fingerprint(paths: Iterable[Path | None]) -> Fingerprint:
    """(inode, size, mtime ns) per file, following symlinks (Kubernetes secret volumes swap a symlink).

    ``None`` entries are skipped; a file that cannot be stat'ed counts as ``(-1, -1, -1)``.
    """
    out = []
    for path in paths:
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            out.append((-1, -1, -1))
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)
