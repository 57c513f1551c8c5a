"""The bootstrap's certificates as data: a CA, a serving certificate it signs, and when to renew them.

:class:`Pki` is what the Secret holds (:data:`SECRET_KEYS`); :func:`parse` reads it back, strictly
for the CA (garbage there is a :class:`PkiError` naming the key: replacing a CA that agents may
trust is the operator's decision) and leniently for the rest (a serving certificate that is
unreadable, expired, for other names or not signed by the CA is simply reissued). :func:`plan`
turns what is stored into what should be stored now, with the reasons; it is deterministic, so
replicas that race compute the same kind of change and the API server's optimistic concurrency
(resourceVersion) lets one of them win.

CA rotation keeps an overlap: with ``ca_validity`` V, a *next* CA is made when the current one has
less than V/3 left and published next to it in the bundle; it signs the serving certificate once
the current CA has less than V/6 left and the next one has been published for at least V/6 (or
the current one has expired); the old CA stays in the bundle, as *previous*, until it expires.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
TLS_CERT, TLS_KEY = "tls.crt", "tls.key"
NEXT_CA_CERT, NEXT_CA_KEY = "next-ca.crt", "next-ca.key"
PREVIOUS_CA_CERT = "previous-ca.crt"
SECRET_KEYS = (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY, NEXT_CA_CERT, NEXT_CA_KEY, PREVIOUS_CA_CERT)
#: The ConfigMap key the agents read: every CA a serving certificate may be signed by.
BUNDLE_KEY = "ca.crt"
#: notBefore lies this far in the past, for nodes whose clocks are a little behind.
BACKDATE = datetime.timedelta(minutes=1)


class PkiError(ValueError):
    """The stored CA is unusable; the message names the key and what is wrong."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, with their PEM encodings."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


@dataclass(frozen=True)
class Pki:
    """The Secret's contents: the signing CA, the serving pair, and a CA being rotated in or out."""

    ca: KeyPair
    serving: KeyPair
    next_ca: KeyPair | None = None
    previous_ca: x509.Certificate | None = None

    def bundle(self) -> bytes:
        """The CA bundle for the agents: previous, current and next CA (those present)."""
        certs = [c for c in (self.previous_ca, self.ca.cert, self.next_ca.cert if self.next_ca else None) if c]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def secret_data(self) -> dict[str, bytes]:
        data = {CA_CERT: self.ca.cert_pem, CA_KEY: self.ca.key_pem, TLS_CERT: self.serving.cert_pem}
        data[TLS_KEY] = self.serving.key_pem
        if self.next_ca is not None:
            data[NEXT_CA_CERT], data[NEXT_CA_KEY] = self.next_ca.cert_pem, self.next_ca.key_pem
        if self.previous_ca is not None:
            data[PREVIOUS_CA_CERT] = self.previous_ca.public_bytes(serialization.Encoding.PEM)
        return data


@dataclass(frozen=True)
class Stored:
    """What a Secret holds, parsed: ``ca`` is None for an empty Secret; a bad serving pair is None with a reason."""

    ca: KeyPair | None
    serving: KeyPair | None
    serving_problem: str
    next_ca: KeyPair | None
    previous_ca: x509.Certificate | None
    problems: tuple[str, ...] = ()  # other keys that were unreadable and will be dropped


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pair(data: Mapping[str, bytes], cert_key: str, key_key: str) -> KeyPair:
    """Parse one pair; ValueError naming the key on anything wrong."""
    try:
        cert = x509.load_pem_x509_certificate(data[cert_key])
    except KeyError:
        raise ValueError(f"{cert_key} is missing") from None
    except ValueError as e:
        raise ValueError(f"{cert_key} holds no PEM certificate ({e})") from None
    try:
        key = serialization.load_pem_private_key(data[key_key], password=None)
    except KeyError:
        raise ValueError(f"{key_key} is missing") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{key_key} holds no unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_key} is a {type(key).__name__}, not an ECDSA key")
    pub = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*pub) != cert.public_key().public_bytes(*pub):
        raise ValueError(f"{key_key} does not match the certificate in {cert_key}")
    return KeyPair(cert, key)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _ca_pair(data: Mapping[str, bytes], cert_key: str, key_key: str) -> KeyPair:
    pair = _pair(data, cert_key, key_key)
    if not _is_ca(pair.cert):
        raise ValueError(f"{cert_key} is not a CA certificate (no basicConstraints CA:TRUE)")
    return pair


def dns_names(cert: x509.Certificate) -> set[str]:
    try:
        return set(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        )
    except x509.ExtensionNotFound:
        return set()


def serving_problem(serving: KeyPair, ca: x509.Certificate, names: Sequence[str], now: datetime.datetime) -> str:
    """Why ``serving`` cannot be used with ``ca`` for ``names`` now ('' when it can)."""
    try:
        serving.cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the CA in ca.crt"
    # More names are fine: replicas of two versions with different names during a rolling update
    # then settle on the wider certificate instead of reissuing in turn (the next renewal narrows it).
    if not set(names) <= dns_names(serving.cert):
        return f"is for {sorted(dns_names(serving.cert))}, not {sorted(names)}"
    if serving.cert.not_valid_after_utc <= now:
        return f"expired at {serving.cert.not_valid_after_utc.isoformat()}"
    return ""


def parse(data: Mapping[str, bytes], names: Sequence[str], now: datetime.datetime | None = None) -> Stored:
    """Read a Secret's data; PkiError when it has a CA that cannot be used."""
    now = now or _now()
    if not data.get(CA_CERT) and not data.get(CA_KEY):
        return Stored(None, None, "", None, None)
    try:
        ca = _ca_pair(data, CA_CERT, CA_KEY)
    except ValueError as e:
        raise PkiError(str(e)) from None
    problems: list[str] = []
    serving: KeyPair | None = None
    try:
        serving = _pair(data, TLS_CERT, TLS_KEY)
        why = serving_problem(serving, ca.cert, names, now)
    except ValueError as e:
        why = str(e)
    if why:
        serving = None
    next_ca = None
    if data.get(NEXT_CA_CERT) or data.get(NEXT_CA_KEY):
        try:
            next_ca = _ca_pair(data, NEXT_CA_CERT, NEXT_CA_KEY)
        except ValueError as e:
            problems.append(str(e))
    previous = None
    if data.get(PREVIOUS_CA_CERT):
        try:
            previous = x509.load_pem_x509_certificate(data[PREVIOUS_CA_CERT])
        except ValueError as e:
            problems.append(f"{PREVIOUS_CA_CERT} holds no PEM certificate ({e})")
    return Stored(ca, serving, why, next_ca, previous, tuple(problems))


def new_ca(common_name: str, validity: datetime.timedelta, now: datetime.datetime | None = None) -> KeyPair:
    """A self-signed ECDSA P-256 CA that may sign end-entity certificates only (pathlen 0)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} {now.strftime('%Y%m%dT%H%M%S.%fZ')}")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def new_serving(
    ca: KeyPair, names: Sequence[str], validity: datetime.timedelta, now: datetime.datetime | None = None
) -> KeyPair:
    """An ECDSA P-256 serving certificate for ``names``, signed by ``ca``, never outliving it."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + validity, ca.cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digitalSignature
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert, key)


@dataclass(frozen=True)
class Lifetimes:
    """The configured validity of serving certificates and CAs."""

    cert: datetime.timedelta
    ca: datetime.timedelta

    def __post_init__(self) -> None:
        if self.ca < 2 * self.cert:
            raise ValueError(
                f"the CA validity ({self.ca}) must be at least twice the certificate validity ({self.cert})"
            )


def plan(
    stored: Stored, names: Sequence[str], lifetimes: Lifetimes, ca_name: str, now: datetime.datetime | None = None
) -> tuple[Pki, list[str]]:
    """What the Secret should hold now and why it changes (an empty list: keep it as it is)."""
    now = now or _now()
    reasons = [f"dropping unreadable {p}" for p in stored.problems]
    if stored.ca is None:
        ca = new_ca(ca_name, lifetimes.ca, now)
        return Pki(ca, new_serving(ca, names, lifetimes.cert, now)), ["no CA yet: created one"]
    pki = Pki(stored.ca, stored.serving or stored.ca, stored.next_ca, stored.previous_ca)  # serving set below
    if pki.previous_ca is not None and pki.previous_ca.not_valid_after_utc <= now:
        pki = replace(pki, previous_ca=None)
        reasons.append("previous CA expired: removed from the bundle")
    ca_left = pki.ca.cert.not_valid_after_utc - now
    if pki.next_ca is None and ca_left < lifetimes.ca / 3:
        pki = replace(pki, next_ca=new_ca(ca_name, lifetimes.ca, now))
        reasons.append(f"CA expires in {ca_left}: next CA created and added to the bundle")
    serving_why = stored.serving_problem if stored.serving is None else ""
    if pki.next_ca is not None:
        published = now - (pki.next_ca.cert.not_valid_before_utc + BACKDATE)
        if ca_left <= datetime.timedelta(0) or (ca_left < lifetimes.ca / 6 and published >= lifetimes.ca / 6):
            pki = Pki(pki.next_ca, pki.serving, None, pki.ca.cert)
            reasons.append("next CA now signs; the old one stays in the bundle until it expires")
            serving_why = "the CA changed"
    if not serving_why and stored.serving is not None:
        left = stored.serving.cert.not_valid_after_utc - now
        # Not when it already ends with the CA: a new one could not last longer (rotation comes first).
        if left < lifetimes.cert / 3 and stored.serving.cert.not_valid_after_utc < pki.ca.cert.not_valid_after_utc:
            serving_why = f"expires in {left}"
    if serving_why or stored.serving is None:
        pki = replace(pki, serving=new_serving(pki.ca, names, lifetimes.cert, now))
        reasons.append(f"serving certificate {serving_why or 'missing'}: reissued")
    return pki, reasons
