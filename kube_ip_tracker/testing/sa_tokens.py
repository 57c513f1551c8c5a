"""Service-account tokens from a real local API server, for token-authentication tests.

``await service_account_token(api, "kube-system", "kube-ip-agent", audiences=["kube-ip-tracker"])``
creates the service account if needed and asks the TokenRequest API for a token (what the kubelet
projects into a pod). :func:`expired_copy` re-signs a real token's claims with the cluster's
service-account key and an expiry in the past: a token the API server itself issued in every other
respect, but expired (TokenRequest does not issue tokens shorter than 10 minutes).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException


async def service_account_token(
    api: client.ApiClient,
    namespace: str,
    name: str,
    *,
    audiences: Sequence[str],
    expiration_seconds: int = 600,
) -> str:
    """A TokenRequest token of ``namespace/name`` (created if missing) for ``audiences``."""
    core = client.CoreV1Api(api)
    try:
        await core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
    except ApiException as e:
        if e.status != 409:
            raise
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=list(audiences), expiration_seconds=expiration_seconds)
    )
    answer = await core.create_namespaced_service_account_token(name, namespace, request)
    return str(answer.status.token)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def expired_copy(token: str, signing_key: Path, expired_for: float = 3600.0) -> str:
    """``token`` with ``exp`` ``expired_for`` seconds ago, re-signed (ES256) with the cluster's key."""
    header, payload, _ = token.split(".")
    claims = json.loads(_unb64(payload))
    now = int(time.time())
    claims.update(iat=now - int(2 * expired_for), nbf=now - int(2 * expired_for), exp=now - int(expired_for))
    key = serialization.load_pem_private_key(signing_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{signing_key}: expected an EC service-account key (ES256)")
    signed = f"{header}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
    r, s = decode_dss_signature(key.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signed}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
