"""Local AWS endpoints for tests and demos: EKS ``DescribeCluster``, STS, and an EKS-style token webhook.

* :class:`FakeEks` answers ``GET /clusters/{name}`` in the EKS REST-JSON protocol (errors carry the
  ``x-amzn-ErrorType`` header and a JSON body, as AWS sends them) after checking the request's SigV4
  ``Authorization`` header against the known access keys. botocore reaches it through
  ``AWS_ENDPOINT_URL_EKS`` (or ``endpoint_url``).
* :class:`FakeSts` speaks the STS query protocol: ``GetCallerIdentity`` (header-signed or presigned,
  the signature recomputed with botocore's own SigV4 code and the secret key) and
  ``AssumeRoleWithWebIdentity`` (IRSA: a web identity token file traded for temporary credentials).
  :class:`FakePodIdentityAgent` hands out temporary credentials as the EKS Pod Identity agent does.
  A presigned request is accepted for ``presign_lifetime`` seconds after its ``X-Amz-Date`` (EKS: 15 minutes).
* :class:`TokenWebhook` is what aws-iam-authenticator is to EKS: a TokenReview v1 webhook for
  ``kube-apiserver --authentication-token-webhook-config-file``. It accepts a token only if it is
  ``k8s-aws-v1.`` + base64url of a presigned ``GetCallerIdentity`` URL of the local STS that signs
  ``x-k8s-aws-id`` with the cluster's name; it replays the URL to STS, which checks the signature and
  the age, and maps the caller's ARN to a Kubernetes user (like an access entry or aws-auth mapping).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kube_ip_tracker.testing.loopback_http import LoopbackHttpServer

ACCOUNT = "111122223333"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
SIGV4_DATE = "%Y%m%dT%H%M%SZ"
TOKEN_PREFIX = "k8s-aws-v1."
_CREDENTIAL = re.compile(r"^([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request$")


@dataclass(frozen=True)
class AwsIdentity:
    """An IAM principal with an access key (long-term, or temporary with a session token)."""

    arn: str
    access_key_id: str
    secret_key: str
    session_token: str | None = None

    @classmethod
    def user(cls, name: str) -> AwsIdentity:
        return cls(f"arn:aws:iam::{ACCOUNT}:user/{name}", "AKIA" + secrets.token_hex(8).upper(), secrets.token_hex(20))

    @property
    def user_id(self) -> str:
        return "AIDA" + self.access_key_id[4:]


class SignatureError(ValueError):
    """A request's SigV4 signature, credential or age is not acceptable; the message says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def canonical_principal(arn: str) -> str:
    """``arn:aws:sts::A:assumed-role/ROLE/SESSION`` -> ``arn:aws:iam::A:role/ROLE`` (as EKS maps roles)."""
    match = re.match(r"^arn:aws:sts::(\d+):assumed-role/([^/]+)/[^/]+$", arn)
    return f"arn:aws:iam::{match.group(1)}:role/{match.group(2)}" if match else arn


class _Keys:
    """The access keys an endpoint knows, shared by FakeEks and FakeSts (thread-safe)."""

    def __init__(self) -> None:
        self._by_key: dict[str, AwsIdentity] = {}
        self._lock = threading.Lock()

    def add(self, identity: AwsIdentity) -> AwsIdentity:
        with self._lock:
            self._by_key[identity.access_key_id] = identity
        return identity

    def get(self, access_key_id: str) -> AwsIdentity | None:
        with self._lock:
            return self._by_key.get(access_key_id)


def _scope(credential: str, keys: _Keys, service: str) -> tuple[AwsIdentity, str, str]:
    match = _CREDENTIAL.match(credential)
    if not match:
        raise SignatureError("IncompleteSignature", f"malformed credential scope {credential!r}")
    key_id, day, region, signed_service = match.groups()
    identity = keys.get(key_id)
    if identity is None:
        raise SignatureError(
            "InvalidClientTokenId", f"The security token included in the request is invalid ({key_id})"
        )
    if signed_service != service:
        raise SignatureError(
            "SignatureDoesNotMatch", f"credential scope names service {signed_service!r}, not {service}"
        )
    return identity, day, region


def _recompute(auth: SigV4Auth, method: str, url: str, headers: Mapping[str, str], body: bytes, timestamp: str) -> str:
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    request.context["timestamp"] = timestamp
    canonical = auth.canonical_request(request)
    return auth.signature(auth.string_to_sign(request, canonical), request)


def verify_header_signature(
    keys: _Keys, service: str, method: str, url: str, headers: Mapping[str, str], body: bytes
) -> tuple[AwsIdentity, str]:
    """Check a request signed in its ``Authorization`` header; returns the signer and the signed region."""
    authorization = headers.get("authorization", "")
    fields = dict(
        part.strip().split("=", 1) for part in authorization.removeprefix("AWS4-HMAC-SHA256 ").split(",") if "=" in part
    )
    if not authorization.startswith("AWS4-HMAC-SHA256 ") or not {"Credential", "SignedHeaders", "Signature"} <= set(
        fields
    ):
        raise SignatureError("MissingAuthenticationToken", "Missing Authentication Token")
    identity, _, region = _scope(fields["Credential"], keys, service)
    if identity.session_token is not None and headers.get("x-amz-security-token") != identity.session_token:
        raise SignatureError("InvalidClientTokenId", "The security token included in the request is invalid")
    signed = {name: headers.get(name, "") for name in fields["SignedHeaders"].split(";")}
    auth = SigV4Auth(Credentials(identity.access_key_id, identity.secret_key, identity.session_token), service, region)
    expected = _recompute(auth, method, url, signed, body, headers.get("x-amz-date", ""))
    if not secrets.compare_digest(expected, fields["Signature"]):
        raise SignatureError("SignatureDoesNotMatch", "The request signature we calculated does not match")
    return identity, region


def verify_presigned(
    keys: _Keys, service: str, url: str, headers: Mapping[str, str], lifetime: float, now: dt.datetime
) -> AwsIdentity:
    """Check a presigned (query-signed) GET request and its age (``lifetime`` seconds after X-Amz-Date)."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    for param in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Expires"):
        if param not in query:
            raise SignatureError("AuthorizationQueryParametersError", f"query parameter {param} is missing")
    identity, _, region = _scope(query["X-Amz-Credential"], keys, service)
    try:
        signed_at = dt.datetime.strptime(query["X-Amz-Date"], SIGV4_DATE).replace(tzinfo=dt.UTC)
    except ValueError:
        raise SignatureError("AuthorizationQueryParametersError", "X-Amz-Date is malformed") from None
    age = (now - signed_at).total_seconds()
    if age > lifetime:
        raise SignatureError("ExpiredToken", f"Request has expired: signed {age:.0f}s ago (limit {lifetime:.0f}s)")
    if identity.session_token is not None and query.get("X-Amz-Security-Token") != identity.session_token:
        raise SignatureError("InvalidClientTokenId", "The security token included in the request is invalid")
    signature = query.pop("X-Amz-Signature")
    unsigned_url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    signed = {name: headers.get(name, "") for name in query["X-Amz-SignedHeaders"].split(";")}
    signed["host"] = parts.netloc
    auth = SigV4QueryAuth(
        Credentials(identity.access_key_id, identity.secret_key, identity.session_token), service, region
    )
    expected = _recompute(auth, "GET", unsigned_url, signed, b"", query["X-Amz-Date"])
    if not secrets.compare_digest(expected, signature):
        raise SignatureError("SignatureDoesNotMatch", "The request signature we calculated does not match")
    return identity


# ----------------------------------------------------------------------------- STS


def _xml(action: str, result: str) -> bytes:
    return (
        f'<{action}Response xmlns="{STS_NS}"><{action}Result>{result}</{action}Result>'
        f"<ResponseMetadata><RequestId>{secrets.token_hex(8)}</RequestId></ResponseMetadata></{action}Response>"
    ).encode()


def _xml_error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = (
        f'<ErrorResponse xmlns="{STS_NS}"><Error><Type>Sender</Type><Code>{escape(code)}</Code>'
        f"<Message>{escape(message)}</Message></Error><RequestId>{secrets.token_hex(8)}</RequestId></ErrorResponse>"
    )
    return status, {"Content-Type": "text/xml"}, body.encode()


@dataclass(frozen=True)
class WebIdentityRole:
    """A role IRSA may assume: the web identity token it takes, and how long its credentials last."""

    arn: str
    web_identity_token: str
    duration: int = 3600


class FakeSts(LoopbackHttpServer):
    """STS on loopback: GetCallerIdentity (signed or presigned) and AssumeRoleWithWebIdentity."""

    def __init__(self, *, presign_lifetime: float = 900.0) -> None:
        super().__init__("fake-sts")
        self.keys = _Keys()
        self.presign_lifetime = presign_lifetime
        self.roles: dict[str, WebIdentityRole] = {}
        self.callers: list[str] = []  # ARN of each accepted GetCallerIdentity
        self.rejections: list[str] = []  # "Code: message" of each rejected request
        self.issued: list[AwsIdentity] = []  # temporary credentials handed out
        self._lock = threading.Lock()

    def add_role(self, role: WebIdentityRole) -> WebIdentityRole:
        self.roles[role.arn] = role
        return role

    def _reject(self, status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.rejections.append(f"{code}: {message}")
        return _xml_error(status, code, message)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        url = self.url + path
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
        params = {**query, **dict(urllib.parse.parse_qsl(body.decode()))}
        action = params.get("Action", "")
        try:
            if action == "GetCallerIdentity":
                if "X-Amz-Signature" in query:
                    now = dt.datetime.now(dt.UTC)
                    identity = verify_presigned(self.keys, "sts", url, headers, self.presign_lifetime, now)
                else:
                    identity, _ = verify_header_signature(self.keys, "sts", method, url, headers, body)
                with self._lock:
                    self.callers.append(identity.arn)
                result = f"<Arn>{identity.arn}</Arn><UserId>{identity.user_id}</UserId><Account>{ACCOUNT}</Account>"
                return 200, {"Content-Type": "text/xml"}, _xml(action, result)
            if action == "AssumeRoleWithWebIdentity":
                return self._assume_role(params)
        except SignatureError as exc:
            return self._reject(403, exc.code, str(exc))
        return self._reject(400, "InvalidAction", f"Could not find operation {action!r}")

    def _assume_role(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        role = self.roles.get(params.get("RoleArn", ""))
        if role is None or params.get("WebIdentityToken") != role.web_identity_token:
            return self._reject(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        session = params.get("RoleSessionName", "session")
        role_name = role.arn.rsplit("/", 1)[1]
        identity = self.keys.add(
            AwsIdentity(
                f"arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{session}",
                "ASIA" + secrets.token_hex(8).upper(),
                secrets.token_hex(20),
                secrets.token_hex(32),
            )
        )
        with self._lock:
            self.issued.append(identity)
        expiration = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=role.duration)).strftime("%Y-%m-%dT%H:%M:%SZ")
        result = (
            f"<AssumedRoleUser><Arn>{identity.arn}</Arn><AssumedRoleId>AROA{identity.access_key_id[4:]}:{session}"
            f"</AssumedRoleId></AssumedRoleUser><Credentials><AccessKeyId>{identity.access_key_id}</AccessKeyId>"
            f"<SecretAccessKey>{identity.secret_key}</SecretAccessKey><SessionToken>{identity.session_token}"
            f"</SessionToken><Expiration>{expiration}</Expiration></Credentials><Audience>sts.amazonaws.com</Audience>"
        )
        return 200, {"Content-Type": "text/xml"}, _xml("AssumeRoleWithWebIdentity", result)


class FakePodIdentityAgent(LoopbackHttpServer):
    """The EKS Pod Identity agent on loopback: ``GET /v1/credentials`` with the pod's service account token
    in ``Authorization`` returns the role's temporary credentials (registered with ``sts``'s keys).

    botocore finds it through ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` and
    ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``, as EKS sets them in a pod with a Pod Identity association.
    """

    def __init__(self, sts: FakeSts, role_arn: str, service_account_token: str, *, duration: int = 3600) -> None:
        super().__init__("fake-pod-identity-agent")
        self.sts, self.role_arn, self.service_account_token, self.duration = (
            sts,
            role_arn,
            service_account_token,
            duration,
        )
        self.issued: list[AwsIdentity] = []

    @property
    def credentials_uri(self) -> str:
        return f"{self.url}/v1/credentials"

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path != "/v1/credentials":
            return 404, {}, b""
        if headers.get("authorization") != self.service_account_token:
            return 401, {"Content-Type": "application/json"}, b'{"message": "invalid service account token"}'
        role_name = self.role_arn.rsplit("/", 1)[1]
        identity = self.sts.keys.add(
            AwsIdentity(
                f"arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/eks-tracker-{secrets.token_hex(4)}",
                "ASIA" + secrets.token_hex(8).upper(),
                secrets.token_hex(20),
                secrets.token_hex(32),
            )
        )
        self.issued.append(identity)
        expiration = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.duration)).strftime("%Y-%m-%dT%H:%M:%SZ")
        answer = {
            "AccessKeyId": identity.access_key_id,
            "SecretAccessKey": identity.secret_key,
            "Token": identity.session_token,
            "AccountId": ACCOUNT,
            "Expiration": expiration,
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()


# ----------------------------------------------------------------------------- EKS


def eks_cluster(
    name: str, region: str, server: str, ca_pem: bytes | str | Path, *, status: str = "ACTIVE"
) -> dict[str, Any]:
    """A ``cluster`` object as DescribeCluster returns it (CA as base64 of the PEM)."""
    if isinstance(ca_pem, Path):
        ca_pem = ca_pem.read_bytes()
    if isinstance(ca_pem, str):
        ca_pem = ca_pem.encode()
    return {
        "name": name,
        "arn": f"arn:aws:eks:{region}:{ACCOUNT}:cluster/{name}",
        "createdAt": 1.7e9,
        "version": "1.31",
        "endpoint": server,
        "roleArn": f"arn:aws:iam::{ACCOUNT}:role/eks-cluster-role",
        "status": status,
        "certificateAuthority": {"data": base64.b64encode(ca_pem).decode()},
        "platformVersion": "eks.1",
    }


class FakeEks(LoopbackHttpServer):
    """EKS DescribeCluster on loopback; clusters by (region, name). Pass a FakeSts's ``keys`` to share them."""

    def __init__(self, keys: _Keys | None = None) -> None:
        super().__init__("fake-eks")
        self.keys = keys or _Keys()
        self.clusters: dict[tuple[str, str], dict[str, Any]] = {}
        self.denied: set[tuple[str, str]] = set()
        self.requests: list[str] = []  # "region/name" of each DescribeCluster
        self._lock = threading.Lock()

    def put(self, region: str, cluster: dict[str, Any]) -> tuple[str, str]:
        key = (region, cluster["name"])
        self.clusters[key] = cluster
        return key

    def delete(self, region: str, name: str) -> None:
        self.clusters.pop((region, name), None)

    def deny(self, region: str, name: str) -> None:
        """Answer AccessDeniedException for this cluster until :meth:`allow`."""
        self.denied.add((region, name))

    def allow(self, region: str, name: str) -> None:
        self.denied.discard((region, name))

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        match = re.fullmatch(r"/clusters/([^/?]+)", path)
        if method != "GET" or not match:
            return self._error(404, "UnknownOperationException", f"no operation {method} {path}")
        name = urllib.parse.unquote(match.group(1))
        try:
            identity, region = verify_header_signature(self.keys, "eks", method, self.url + path, headers, body)
        except SignatureError as exc:
            return self._error(
                403, exc.code if exc.code != "SignatureDoesNotMatch" else "InvalidSignatureException", str(exc)
            )
        with self._lock:
            self.requests.append(f"{region}/{name}")
        arn = f"arn:aws:eks:{region}:{ACCOUNT}:cluster/{name}"
        if (region, name) in self.denied:
            message = f"User: {identity.arn} is not authorized to perform: eks:DescribeCluster on resource: {arn}"
            return self._error(403, "AccessDeniedException", message)
        cluster = self.clusters.get((region, name))
        if cluster is None:
            return self._error(404, "ResourceNotFoundException", f"No cluster found for name: {name}.")
        return 200, {"Content-Type": "application/json"}, json.dumps({"cluster": cluster}).encode()

    @staticmethod
    def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json", "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/"}
        return status, headers, json.dumps({"message": message}).encode()


# ----------------------------------------------------------------------------- token webhook


@dataclass(frozen=True)
class MappedUser:
    """The Kubernetes identity an IAM principal maps to (an access entry or aws-auth mapRoles/mapUsers row)."""

    username: str
    groups: Sequence[str] = ()


class TokenWebhook(LoopbackHttpServer):
    """TokenReview v1 webhook for EKS tokens; ``POST /authenticate/<cluster name>`` per API server."""

    def __init__(self, sts: FakeSts, mappings: Mapping[str, MappedUser]) -> None:
        super().__init__("fake-eks-authenticator")
        self.sts = sts
        self.mappings = dict(mappings)  # canonical principal ARN -> user
        self.reviews: list[tuple[str, str]] = []  # (cluster, username or "rejected: reason")
        self._lock = threading.Lock()

    def config_file(self, path: Path, cluster_name: str) -> Path:
        """The kubeconfig-format file ``--authentication-token-webhook-config-file`` takes, for one cluster."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "eks-auth", "cluster": {"server": f"{self.url}/authenticate/{cluster_name}"}}
                    ],
                    "users": [{"name": "apiserver", "user": {}}],
                    "contexts": [{"name": "eks-auth", "context": {"cluster": "eks-auth", "user": "apiserver"}}],
                    "current-context": "eks-auth",
                }
            )
        )
        return path

    def apiserver_args(self, tmp_dir: Path, cluster_name: str) -> list[str]:
        """kube-apiserver flags authenticating this cluster's EKS tokens here (no cache: every request is checked)."""
        config = self.config_file(tmp_dir / f"eks-webhook-{cluster_name}.json", cluster_name)
        return [
            f"--authentication-token-webhook-config-file={config}",
            "--authentication-token-webhook-version=v1",
            "--authentication-token-webhook-cache-ttl=0s",
        ]

    def review(self, cluster: str, token: str) -> MappedUser:
        """The user behind ``token`` on ``cluster``; ValueError says why it is rejected."""
        if not token.startswith(TOKEN_PREFIX):
            raise ValueError("not an EKS token (no k8s-aws-v1. prefix)")
        encoded = token[len(TOKEN_PREFIX) :]
        try:
            url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"token is not base64url: {exc}") from None
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        if f"{parts.scheme}://{parts.netloc}" != self.sts.url or parts.path not in ("", "/"):
            raise ValueError(f"token is not a URL of the STS endpoint {self.sts.url}")
        if query.get("Action") != "GetCallerIdentity":
            raise ValueError(f"token is for action {query.get('Action')!r}, not GetCallerIdentity")
        if "x-k8s-aws-id" not in query.get("X-Amz-SignedHeaders", "").split(";"):
            raise ValueError("x-k8s-aws-id is not among the signed headers")
        request = urllib.request.Request(url, headers={"x-k8s-aws-id": cluster})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                answer = resp.read().decode()
        except urllib.error.HTTPError as exc:
            detail = re.search(r"<Code>(.*?)</Code><Message>(.*?)</Message>", exc.read().decode())
            raise ValueError(f"STS rejected the token: {': '.join(detail.groups()) if detail else exc}") from None
        arn_match = re.search(r"<Arn>(.*?)</Arn>", answer)
        if arn_match is None:
            raise ValueError("STS answered without an Arn")
        principal = canonical_principal(arn_match.group(1))
        user = self.mappings.get(principal)
        if user is None:
            raise ValueError(f"{principal} has no access entry in cluster {cluster}")
        return user

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        # Newer API servers add ?timeout=... to webhook requests.
        cluster = urllib.parse.urlsplit(path).path.removeprefix("/authenticate/")
        review = json.loads(body or b"{}")
        token = str((review.get("spec") or {}).get("token", ""))
        status: dict[str, Any]
        try:
            user = self.review(cluster, token)
        except ValueError as exc:
            outcome, status = f"rejected: {exc}", {"authenticated": False, "error": str(exc)}
        else:
            outcome = user.username
            status = {
                "authenticated": True,
                "user": {"username": user.username, "uid": f"aws-iam:{user.username}", "groups": list(user.groups)},
            }
        with self._lock:
            self.reviews.append((cluster, outcome))
        answer = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}
        return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()


def aws_environment(eks: FakeEks, sts: FakeSts, region: str = "us-east-1") -> dict[str, str]:
    """Environment variables pointing botocore at the local endpoints (credentials not included)."""
    return {
        "AWS_ENDPOINT_URL_EKS": eks.url,
        "AWS_ENDPOINT_URL_STS": sts.url,
        "AWS_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
