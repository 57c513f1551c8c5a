"""A tracker client's service-account token: read from its file, re-read when the kubelet rotates it.

The agent and a spoke tracker send a projected service-account token (audience
:data:`TOKEN_AUDIENCE`) with every call, as ``authorization: Bearer ...`` metadata, together with
the id of the cluster that issued it (``kube-ip-tracker-cluster``); a tracker with
``--client-auth=token`` checks it with that cluster's TokenReview API.

Usage::

    token = TokenOptions(Path("/var/run/secrets/kube-ip-tracker/token"), cluster="prod-a")
    token.check()                          # at start: ValueError naming an unreadable or empty file
    source = token.reloading()
    stub.Watch(request, metadata=source.metadata())   # the file's current token (last good one on error)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kube_ip_tracker.tls_files import Fingerprint, stat_fingerprint

log = logging.getLogger(__name__)

#: The audience the projected tokens are requested for, and that the tracker's TokenReview asks for.
TOKEN_AUDIENCE = "kube-ip-tracker"
#: Call metadata naming the cluster whose API server issued the token (the tracker asks that cluster).
CLUSTER_METADATA = "kube-ip-tracker-cluster"
AUTHORIZATION_METADATA = "authorization"


class TokenFileError(ValueError):
    """The token file cannot be read or holds no token; the message names the file."""


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace removed); TokenFileError naming the file if unusable."""
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenFileError(f"cannot read token file {path}: {getattr(e, 'strerror', None) or e}") from e
    if not token or any(c.isspace() for c in token):
        raise TokenFileError(f"token file {path} does not hold one token (empty, or several words)")
    return token


@dataclass(frozen=True)
class TokenOptions:
    """Which token file to send and which cluster issued it (the cluster id as the tracker names it)."""

    file: Path
    cluster: str

    def __post_init__(self) -> None:
        if not self.cluster.strip():
            raise ValueError(f"token file {self.file}: the id of the cluster that issues it must not be empty")

    def check(self) -> None:
        """Read the file now (at start): TokenFileError naming it when unusable."""
        read_token(self.file)

    def reloading(self) -> ReloadingToken:
        return ReloadingToken(self)


class ReloadingToken:
    """The token of a file, re-read when the file changed (inode, size or mtime; a symlink swap counts)."""

    def __init__(self, options: TokenOptions) -> None:
        self.options = options
        self._fingerprint: Fingerprint = stat_fingerprint([options.file])
        self._token = read_token(options.file)
        self._failed: Fingerprint | None = None
        self.reloads = 0

    def token(self) -> str:
        """The file's current token; the last good one if the file changed into something unusable."""
        current = stat_fingerprint([self.options.file])
        if current in (self._fingerprint, self._failed):
            return self._token
        try:
            token = read_token(self.options.file)
        except TokenFileError as e:
            self._failed = current
            log.error("Token file changed but cannot be used; sending the previous token: %s", e)
            return self._token
        self._token, self._fingerprint, self._failed = token, current, None
        self.reloads += 1
        log.info("Re-read the token file %s", self.options.file)
        return self._token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token and its cluster."""
        return ((AUTHORIZATION_METADATA, f"Bearer {self.token()}"), (CLUSTER_METADATA, self.options.cluster))
