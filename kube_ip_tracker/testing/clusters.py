"""Real local Kubernetes clusters for tests and the demo: etcd + kube-apiserver on loopback.

Each :class:`LocalCluster` has its own etcd data directory and ports, a self-signed serving
certificate, a bearer-token file and a kubeconfig with one context named after the cluster.
``python -m kube_ip_tracker.testing.clusters up --count 2`` starts clusters by hand (``make clusters``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kube_ip_tracker.testing.certs import write_self_signed
from kube_ip_tracker.testing.crds import install_crds

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = PROJECT_ROOT / "hack" / "build-kube-apiserver.sh"
READY_TIMEOUT = 60.0


class ClusterStartError(RuntimeError):
    """A local cluster did not come up; the message carries the tail of its log."""


def find_kube_apiserver() -> str:
    """Path of a kube-apiserver binary: $KUBE_APISERVER, else the cached build (built on first use)."""
    explicit = os.environ.get("KUBE_APISERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ClusterStartError(f"KUBE_APISERVER={explicit} is not an executable file")
        return explicit
    cache = Path(os.environ.get("KIT_CACHE_DIR", Path.home() / ".cache" / "kube-ip-tracker"))
    # The Debian source build (kube-apiserver-1.20...), not a module build (kube-apiserver-vX.Y.Z) whose
    # flags this file does not pass yet.
    cached = sorted(cache.glob("kube-apiserver-[0-9]*"))
    cached = [p for p in cached if p.is_file() and os.access(p, os.X_OK)]
    if cached:
        return str(cached[-1])
    log.info("no cached kube-apiserver; building it with %s", BUILD_SCRIPT)
    out = subprocess.run([str(BUILD_SCRIPT)], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def find_etcd() -> str:
    """Path of Debian's etcd (package etcd-server)."""
    path = os.environ.get("ETCD") or shutil.which("etcd")
    if not path:
        raise ClusterStartError("etcd not found: install Debian's etcd-server (make system-deps)")
    return path


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Ports are drawn at random below the kernel's ephemeral range, so the source port of some
    outgoing connection cannot take it between now and the server's bind, and never twice in one
    process. Another process can still take it: :func:`start_clusters` relaunches a cluster whose
    bind failed.
    """
    low, high = 15000, _ephemeral_low() - 1
    for _ in range(200):
        port = secrets.randbelow(high - low) + low if high > low else 0
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _handed_out.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class TokenUser:
    """A user of the static token file, e.g. a service account identity for RBAC tests."""

    token: str
    user: str
    groups: Sequence[str] = ()

    @classmethod
    def service_account(cls, namespace: str, name: str, token: str | None = None) -> TokenUser:
        """The identity the API server gives a service account token (user and groups)."""
        return cls(
            token or secrets.token_hex(16),
            f"system:serviceaccount:{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}"),
        )

    def row(self) -> str:
        return f'{self.token},{self.user},{self.user}-uid,"{",".join(self.groups)}"'


@dataclass
class _Process:
    """One child process with its command line and log file, restartable in place."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        logf.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class LocalCluster:
    """One real cluster: etcd and kube-apiserver processes on loopback."""

    name: str
    base_dir: Path
    watch_cache: bool = True
    authorization_mode: str = "AlwaysAllow"
    extra_tokens: Sequence[str] = ()
    token_users: Sequence[TokenUser] = ()
    extra_apiserver_args: Sequence[str] = ()
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = field(default_factory=free_port)
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    _etcd: _Process | None = field(default=None, init=False, repr=False)
    _apiserver: _Process | None = field(default=None, init=False, repr=False)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def ca_file(self) -> Path:
        return self.base_dir / "pki" / "serving.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.base_dir / "kubeconfig"

    @property
    def token_file(self) -> Path:
        return self.base_dir / "tokens.csv"

    # ----------------------------------------------------------------------------- lifecycle

    def start(self, kube_apiserver: str | None = None, etcd: str | None = None) -> None:
        """Write certificates, token file and kubeconfig, start etcd and the API server, await /readyz."""
        self.launch(kube_apiserver, etcd)
        self.wait_ready()

    def launch(self, kube_apiserver: str | None = None, etcd: str | None = None) -> None:
        """Like :meth:`start` but returns once the processes are started (call wait_ready next)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        pki = self.base_dir / "pki"
        write_self_signed(pki / "serving.crt", pki / "serving.key", hosts=["127.0.0.1", "localhost"])
        write_self_signed(pki / "sa.crt", pki / "sa.key", hosts=["service-accounts"])
        self.write_token_file()
        self._write_kubeconfig()
        self._etcd = _Process("etcd", self._etcd_argv(etcd or find_etcd()), self.base_dir / "etcd.log")
        self._apiserver = _Process(
            "kube-apiserver",
            self._apiserver_argv(kube_apiserver or find_kube_apiserver()),
            self.base_dir / "kube-apiserver.log",
        )
        self._etcd.start()
        self._apiserver.start()

    def relaunch_on_new_ports(self, kube_apiserver: str | None = None, etcd: str | None = None) -> None:
        """After a failed start (a port taken by another process): wipe, pick new ports, launch again."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self.port, self.etcd_port, self.etcd_peer_port = free_port(), free_port(), free_port()
        self.launch(kube_apiserver, etcd)

    def stop(self) -> None:
        """Stop both processes (data directory is kept until the owner removes base_dir)."""
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop()

    def write_token_file(self) -> None:
        """(Re)write the static token file: the admin token plus extra_tokens, all in system:masters, and token_users."""
        rows = [f"{self.token},admin,admin-uid,system:masters"]
        rows += [f"{tok},user-{i},user-uid-{i},system:masters" for i, tok in enumerate(self.extra_tokens)]
        rows += [u.row() for u in self.token_users]
        self.token_file.write_text("\n".join(rows) + "\n")

    def add_token(self, token: str, user: str, groups: Sequence[str] = ()) -> None:
        """Append a token for a user (the API server reads the file at start: restart it to apply)."""
        with self.token_file.open("a") as f:
            f.write(TokenUser(token, user, tuple(groups)).row() + "\n")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until /readyz answers ok, or raise ClusterStartError with the log tails."""
        deadline = time.monotonic() + timeout
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        last = ""
        while time.monotonic() < deadline:
            for proc in (self._etcd, self._apiserver):
                if proc is not None and not proc.alive():
                    raise ClusterStartError(
                        f"{self.name}: {proc.name} exited with {proc.proc.returncode if proc.proc else '?'}:\n"
                        f"{_tail(proc.log_path)}"
                    )
            req = urllib.request.Request(self.server + "/readyz", headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ClusterStartError(
            f"{self.name}: not ready after {timeout:.0f}s ({last}):\n{_tail(self.base_dir / 'kube-apiserver.log')}"
        )

    # ----------------------------------------------------------------------------- faults

    def stop_apiserver(self) -> None:
        assert self._apiserver is not None
        self._apiserver.stop()

    def start_apiserver(self, wait: bool = True) -> None:
        assert self._apiserver is not None
        self._apiserver.start()
        if wait:
            self.wait_ready()

    def restart_apiserver(self) -> None:
        """Stop and start the API server in place (same port, same etcd)."""
        self.stop_apiserver()
        self.start_apiserver()

    def stop_etcd(self) -> None:
        assert self._etcd is not None
        self._etcd.stop()

    def start_etcd(self, wait: bool = True) -> None:
        assert self._etcd is not None
        self._etcd.start()
        if wait:
            self.wait_ready()

    def restart_etcd(self) -> None:
        """Stop and start etcd in place (same data directory); waits until the API server is ready again."""
        self.stop_etcd()
        self.start_etcd()

    def freeze_apiserver(self) -> None:
        """SIGSTOP the API server: connections stay open but nothing answers."""
        assert self._apiserver is not None
        self._apiserver.signal(signal.SIGSTOP)

    def thaw_apiserver(self) -> None:
        assert self._apiserver is not None
        self._apiserver.signal(signal.SIGCONT)

    def compact_etcd(self) -> int:
        """Compact etcd history up to its current revision; returns that revision.

        Combined with ``watch_cache=False`` this makes watches from older resourceVersions fail with 410.
        """
        header = self._etcd_post("/v3/kv/range", {"key": "AA==", "limit": 1})["header"]
        revision = int(header["revision"])
        self._etcd_post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def _etcd_post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        req = urllib.request.Request(
            self.etcd_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    # ----------------------------------------------------------------------------- clients

    def api_client(self):  # -> kubernetes_asyncio.client.ApiClient
        """A kubernetes_asyncio ApiClient authenticated as admin (use as an async context manager)."""
        from kubernetes_asyncio import client

        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.api_key = {"BearerToken": self.token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(cfg)

    def kubeconfig_dict(self, token: str | None = None, user: str = "admin") -> dict[str, object]:
        """A kubeconfig (as a dict) with one context named after the cluster."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": self.name,
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": f"{self.name}-{user}", "user": {"token": token or self.token}}],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": f"{self.name}-{user}"}}],
            "current-context": self.name,
        }

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict(), sort_keys=False))

    # ----------------------------------------------------------------------------- argv

    def _etcd_argv(self, etcd: str) -> list[str]:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            etcd,
            "--name=default",
            f"--data-dir={self.base_dir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--log-level=warn",
            "--logger=zap",
        ]

    def _apiserver_argv(self, binary: str) -> list[str]:
        pki = self.base_dir / "pki"
        return [
            binary,
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            "--insecure-port=0",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'serving.crt'}",
            f"--tls-private-key-file={pki / 'serving.key'}",
            f"--token-auth-file={self.token_file}",
            f"--authorization-mode={self.authorization_mode}",
            f"--service-account-key-file={pki / 'sa.crt'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            f"--watch-cache={'true' if self.watch_cache else 'false'}",
            "--v=1",
            *self.extra_apiserver_args,
        ]


class ClusterSet(list[LocalCluster]):
    """Several local clusters plus one merged kubeconfig with a context per cluster."""

    def __init__(self, base_dir: Path, clusters: Sequence[LocalCluster] = ()) -> None:
        super().__init__(clusters)
        self.base_dir = base_dir

    @property
    def merged_kubeconfig(self) -> Path:
        return self.base_dir / "kubeconfig-merged"

    def write_merged_kubeconfig(self) -> Path:
        merged: dict[str, object] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [],
            "users": [],
            "contexts": [],
        }
        for c in self:
            one = c.kubeconfig_dict()
            for key in ("clusters", "users", "contexts"):
                merged[key].extend(one[key])  # type: ignore[union-attr]
        if self:
            merged["current-context"] = self[0].name
        self.merged_kubeconfig.write_text(yaml.safe_dump(merged, sort_keys=False))
        return self.merged_kubeconfig

    def stop(self) -> None:
        for c in self:
            c.stop()


def start_clusters(
    count: int,
    base_dir: Path,
    *,
    names: Sequence[str] | None = None,
    watch_cache: bool = True,
    authorization_mode: str = "AlwaysAllow",
    extra_tokens: Sequence[str] = (),
    token_users: Sequence[TokenUser] = (),
    extra_apiserver_args: Sequence[str] = (),
    crds: bool = True,
) -> ClusterSet:
    """Start ``count`` clusters (named cluster-1..N unless ``names``) under base_dir; all or none.

    ``extra_apiserver_args`` go to every API server (e.g. an authentication webhook's flags).
    ``crds``: install the ClusterNetworkPolicy/AdminNetworkPolicy/BaselineAdminNetworkPolicy CRDs
    (:mod:`kube_ip_tracker.testing.crds`).
    """
    names = list(names) if names else [f"cluster-{i + 1}" for i in range(count)]
    if len(names) != count:
        raise ValueError(f"{count} clusters but {len(names)} names")
    apiserver, etcd = find_kube_apiserver(), find_etcd()
    clusters = ClusterSet(base_dir)
    try:
        for name in names:
            cluster = LocalCluster(
                name,
                base_dir / name,
                watch_cache=watch_cache,
                authorization_mode=authorization_mode,
                extra_tokens=extra_tokens,
                token_users=token_users,
                extra_apiserver_args=extra_apiserver_args,
            )
            clusters.append(cluster)
            cluster.launch(apiserver, etcd)
        for cluster in clusters:
            _wait_ready_or_relaunch(cluster, apiserver, etcd)
            if crds:
                install_crds(cluster)
    except BaseException:
        clusters.stop()
        raise
    clusters.write_merged_kubeconfig()
    return clusters


def _wait_ready_or_relaunch(cluster: LocalCluster, apiserver: str, etcd: str, attempts: int = 3) -> None:
    """Await readiness; a cluster that lost one of its ports to another process is started again."""
    for attempt in range(attempts):
        try:
            cluster.wait_ready()
            return
        except ClusterStartError as exc:
            if "address already in use" not in str(exc) or attempt == attempts - 1:
                raise
            log.warning("%s: a port was taken by another process; starting it again on new ports", cluster.name)
            cluster.relaunch_on_new_ports(apiserver, etcd)


@contextlib.contextmanager
def running_clusters(count: int, base_dir: Path, **kwargs: object) -> Iterator[ClusterSet]:
    """Context manager around :func:`start_clusters` that always stops them."""
    clusters = start_clusters(count, base_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield clusters
    finally:
        clusters.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``up``: start clusters, print where their kubeconfigs are, wait for Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m kube_ip_tracker.testing.clusters")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start local clusters and wait until interrupted")
    up.add_argument("--count", type=int, default=2)
    up.add_argument("--dir", type=Path, default=Path("/tmp/kube-ip-tracker-clusters"))
    up.add_argument("--no-watch-cache", action="store_true", help="start API servers with --watch-cache=false")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be at least 1, got {args.count}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.dir.exists():
        shutil.rmtree(args.dir)
    with running_clusters(args.count, args.dir, watch_cache=not args.no_watch_cache) as clusters:
        for c in clusters:
            print(f"{c.name}: {c.server} kubeconfig={c.kubeconfig}")
        print(f"merged kubeconfig: {clusters.merged_kubeconfig}")
        print("Ctrl-C stops the clusters.", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
