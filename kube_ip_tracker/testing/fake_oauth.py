"""A local OAuth 2.0 token endpoint for Google service-account credentials (tests, offline demos).

google-auth refreshes service-account credentials by signing a JWT with the private key of the
credentials file and POSTing it to the file's ``token_uri`` (the JWT bearer grant of RFC 7523).
:class:`FakeTokenEndpoint` is such an endpoint on loopback: it checks the assertion's signature
against the service account's public key, its issuer, audience and scope, then answers with the
next access token of a list. :func:`write_service_account_file` writes a credentials file naming
it, so ``GOOGLE_APPLICATION_CREDENTIALS`` gives any process real application default credentials
without network access. API servers accept the tokens when they are in their token file.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import exceptions as ga_exceptions
from google.auth import jwt

from kube_ip_tracker.testing.loopback_http import LoopbackHttpServer

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# google-auth addresses its assertions to Google's token endpoint whatever the file's token_uri says.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


@dataclass(frozen=True)
class ServiceAccountKey:
    """A service account's identity and RSA key pair (PEM)."""

    email: str
    private_key_pem: bytes
    public_key_pem: bytes

    @classmethod
    def generate(cls, email: str) -> ServiceAccountKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(email, private, public)


def write_service_account_file(path: Path, key: ServiceAccountKey, token_uri: str, project: str) -> Path:
    """Write a service-account credentials file (the JSON key format) whose ``token_uri`` is ``token_uri``."""
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": project,
                "private_key_id": "fake-key-1",
                "private_key": key.private_key_pem.decode(),
                "client_email": key.email,
                "client_id": "100000000000000000001",
                "token_uri": token_uri,
            }
        )
    )
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Grant:
    """One token request the endpoint answered: who asked, for which scope, and the token given."""

    issuer: str
    scope: str
    token: str


class FakeTokenEndpoint(LoopbackHttpServer):
    """Loopback HTTP token endpoint handing out ``tokens`` in order, each valid ``lifetime`` seconds.

    Requests with a bad assertion, a missing scope, or after the tokens ran out get the
    ``invalid_grant`` error google-auth turns into a RefreshError. Use as a context manager.
    """

    def __init__(
        self, key: ServiceAccountKey, tokens: Sequence[str], *, lifetime: int = 3600, scope: str = CLOUD_PLATFORM_SCOPE
    ) -> None:
        self.key = key
        self.lifetime = lifetime
        self.scope = scope
        self.grants: list[Grant] = []
        self.rejections: list[str] = []
        self._tokens = list(tokens)
        self._lock = threading.Lock()
        super().__init__("fake-oauth")

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def tokens_issued(self) -> list[str]:
        with self._lock:
            return [g.token for g in self.grants]

    def answer(self, form: dict[str, list[str]]) -> tuple[int, dict[str, object]]:
        """Check one token request (the decoded form body); returns the HTTP status and JSON body."""
        grant_type = form.get("grant_type", [""])[0]
        if grant_type != JWT_BEARER_GRANT:
            return self._reject("unsupported_grant_type", f"grant_type {grant_type!r}")
        try:
            claims = jwt.decode(
                form.get("assertion", [""])[0],
                certs=self.key.public_key_pem,
                audience=[GOOGLE_TOKEN_AUDIENCE, self.token_uri],
            )
        except (ValueError, ga_exceptions.GoogleAuthError) as exc:
            return self._reject("invalid_grant", f"assertion rejected: {exc}")
        if claims.get("iss") != self.key.email:
            return self._reject("invalid_grant", f"assertion issuer {claims.get('iss')!r} is not {self.key.email}")
        scopes = str(claims.get("scope", "")).split()
        if self.scope not in scopes:
            return self._reject("invalid_scope", f"scope {self.scope} not requested (got {scopes})")
        with self._lock:
            if len(self.grants) >= len(self._tokens):
                return self._reject("invalid_grant", f"no access token left after {len(self.grants)}")
            token = self._tokens[len(self.grants)]
            self.grants.append(Grant(str(claims["iss"]), " ".join(scopes), token))
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}

    def _reject(self, error: str, description: str) -> tuple[int, dict[str, object]]:
        with self._lock:
            self.rejections.append(f"{error}: {description}")
        return 400, {"error": error, "error_description": description}

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method == "POST" and path == "/token":
            status, answer = self.answer(urllib.parse.parse_qs(body.decode()))
        else:
            status, answer = 404, {"error": "not_found"}
        return status, {"Content-Type": "application/json"}, json.dumps(answer).encode()
