"""Self-signed certificates and small CAs for local clusters, TLS tests and the demo."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path) -> None:
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)


def _builder(subject: str, issuer: x509.Name | None, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
    )


def write_self_signed(cert_path: Path, key_path: Path, hosts: Sequence[str]) -> None:
    """Write a self-signed serving certificate (also usable as its own CA) valid for ``hosts``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(hosts[0], None, key.public_key())
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(cert, key, cert_path, key_path)


class TestCA:
    """A small certificate authority that issues server and client certificates."""

    def __init__(self, directory: Path, name: str = "kube-ip-tracker-test-ca") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            _builder(name, None, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = directory / f"{name}.crt"
        _write(self.cert, self.key, self.cert_path, directory / f"{name}.key")

    def issue(self, name: str, hosts: Sequence[str] = (), client: bool = False) -> tuple[Path, Path]:
        """Issue a certificate for ``name`` (server: SANs from hosts; client: clientAuth usage)."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = _builder(name, self.cert.subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if hosts:
            builder = builder.add_extension(_san(hosts), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        _write(cert, key, cert_path, key_path)
        return cert_path, key_path


def peer_certificate(address: str, bundle: bytes, server_name: str) -> x509.Certificate:
    """The certificate a new TLS connection to ``address`` (host:port) gets, verified against the PEM
    ``bundle`` for ``server_name`` (ALPN h2, as gRPC offers); ssl.SSLCertVerificationError when it fails."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cadata=bundle.decode())
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
