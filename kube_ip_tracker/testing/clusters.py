"""Real local Kubernetes clusters for tests and the demo: etcd + kube-apiserver on loopback.

Each :class:`LocalCluster` has its own etcd data directory and ports, a self-signed serving
certificate, a bearer-token file and a kubeconfig with one context named after the cluster.
``python -m kube_ip_tracker.testing.clusters up --count 2`` starts clusters by hand (``make clusters``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import logging
import os
import re
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kube_ip_tracker.testing.certs import write_self_signed
from kube_ip_tracker.testing.crds import install_crds

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0

#: Environment variable selecting the kube-apiserver build the clusters run (see :data:`BUILD_SCRIPTS`).
APISERVER_BUILD_ENV = "KIT_KUBE_APISERVER"
#: The builds: ``module`` (default) is a current release built from the k8s.io/kubernetes Go module
#: with Go 1.26; ``debian`` is 1.20.2 from Debian 12's source package, the compatibility target.
BUILD_SCRIPTS = {
    "module": PROJECT_ROOT / "hack" / "build-kube-apiserver-module.sh",
    "debian": PROJECT_ROOT / "hack" / "build-kube-apiserver.sh",
}
DEFAULT_BUILD = "module"


class ClusterStartError(RuntimeError):
    """A local cluster did not come up; the message carries the tail of its log."""


def selected_build() -> str:
    """The build named by $KIT_KUBE_APISERVER (``module`` when unset)."""
    build = os.environ.get(APISERVER_BUILD_ENV, "") or DEFAULT_BUILD
    if build not in BUILD_SCRIPTS:
        raise ClusterStartError(f"{APISERVER_BUILD_ENV}={build!r}: expected one of {', '.join(BUILD_SCRIPTS)}")
    return build


def other_builds() -> list[str]:
    """The builds other than :func:`selected_build` (compatibility runs in slow tests)."""
    return [b for b in BUILD_SCRIPTS if b != selected_build()]


def find_kube_apiserver(build: str | None = None) -> str:
    """Path of a kube-apiserver binary: $KUBE_APISERVER, else the cached ``build`` (built on first use).

    ``build`` defaults to :func:`selected_build`; an explicit ``build`` wins over $KUBE_APISERVER.
    """
    explicit = os.environ.get("KUBE_APISERVER")
    if explicit and build is None:
        if not os.access(explicit, os.X_OK):
            raise ClusterStartError(f"KUBE_APISERVER={explicit} is not an executable file")
        return explicit
    return _built(build or selected_build())


@functools.cache
def _built(build: str) -> str:
    if build not in BUILD_SCRIPTS:
        raise ClusterStartError(f"unknown kube-apiserver build {build!r}: expected one of {', '.join(BUILD_SCRIPTS)}")
    script = BUILD_SCRIPTS[build]
    log.info("kube-apiserver build %r: %s (builds and caches it on first use)", build, script)
    out = subprocess.run([str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        raise ClusterStartError(f"{script} failed with {out.returncode}:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


_VERSION = re.compile(r"v?(\d+)\.(\d+)\.\d+")


@functools.cache
def apiserver_version(binary: str) -> tuple[int, int]:
    """(major, minor) of a kube-apiserver binary, from ``--version`` or, when unstamped, its file name.

    Debian's GOPATH build reports ``v0.0.0-master``; its cached file name carries the package version
    (``kube-apiserver-1.20.5+really1.20.2-...``, of which the ``really`` part is the source).
    """
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    reported = _VERSION.search(out.stdout)
    if reported and reported.group(1) != "0":
        return int(reported.group(1)), int(reported.group(2))
    name = Path(binary).name
    named = _VERSION.search(name.partition("really")[2]) or _VERSION.search(name)
    if named:
        return int(named.group(1)), int(named.group(2))
    raise ClusterStartError(
        f"{binary}: cannot tell its Kubernetes version (--version says {out.stdout.strip()!r}); "
        "name the file kube-apiserver-1.X.Y"
    )


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


_refusing: list[socket.socket] = []


def refusing_port() -> int:
    """A TCP port on 127.0.0.1 that refuses connections for the rest of this process.

    The port is bound and never listened on, so no other process (another test's tracker on a
    shared machine) can take it: a dial gets "connection refused", unlike a :func:`free_port`
    that some other server may bind a moment later.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", free_port()))
    _refusing.append(sock)
    return int(sock.getsockname()[1])


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
class ChildProcess:
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

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of its log, headed by its name (for failure messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"--- {self.name} --- (no log)"
        return f"--- {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])

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
    #: (major, minor) of the running kube-apiserver, known once launched.
    apiserver_version: tuple[int, int] | None = field(default=None, init=False)
    _etcd: ChildProcess | None = field(default=None, init=False, repr=False)
    _apiserver: ChildProcess | None = field(default=None, init=False, repr=False)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def namespace_labels(self, name: str, labels: Mapping[str, str] | None = None) -> dict[str, str]:
        """The labels this server gives namespace ``name`` created with ``labels``.

        Servers since 1.21 add ``kubernetes.io/metadata.name``; the 1.20 build does not.
        """
        implied = {"kubernetes.io/metadata.name": name} if (self.apiserver_version or (0, 0)) >= (1, 21) else {}
        return {**(labels or {}), **implied}

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
        self._etcd = ChildProcess("etcd", self._etcd_argv(etcd or find_etcd()), self.base_dir / "etcd.log")
        binary = kube_apiserver or find_kube_apiserver()
        self.apiserver_version = apiserver_version(binary)
        self._apiserver = ChildProcess(
            "kube-apiserver", self._apiserver_argv(binary), self.base_dir / "kube-apiserver.log"
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

    @property
    def apiserver_pid(self) -> int:
        """PID of the running kube-apiserver (for memory readings in benchmarks)."""
        assert self._apiserver is not None and self._apiserver.proc is not None
        return self._apiserver.proc.pid

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

    def kubeconfig_dict(
        self, token: str | None = None, user: str = "admin", *, embed_ca: bool = False
    ) -> dict[str, object]:
        """A kubeconfig (as a dict) with one context named after the cluster.

        ``embed_ca`` puts the CA into the file (``certificate-authority-data``) instead of naming
        :attr:`ca_file`: self-contained, as a Secret or a container mount needs it.
        """
        ca: dict[str, str] = (
            {"certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode()}
            if embed_ca
            else {"certificate-authority": str(self.ca_file)}
        )
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": self.name, "cluster": {"server": self.server, **ca}}],
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
            *version_specific_apiserver_args(self.apiserver_version or apiserver_version(binary)),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
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


def version_specific_apiserver_args(version: tuple[int, int]) -> list[str]:
    """Flags that only some kube-apiserver versions take (the rest of the argv works on 1.20 and 1.3x)."""
    args = []
    if version < (1, 24):
        args.append("--insecure-port=0")  # removed in 1.24; before 1.20 it defaulted to 8080
    else:
        # New servers refuse a loopback --advertise-address for the `kubernetes` Service's endpoints;
        # nothing here needs that Service, so its endpoint reconciler is off.
        args.append("--endpoint-reconciler-type=none")
    return args


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
    build: str | None = None,
) -> ClusterSet:
    """Start ``count`` clusters (named cluster-1..N unless ``names``) under base_dir; all or none.

    ``extra_apiserver_args`` go to every API server (e.g. an authentication webhook's flags).
    ``crds``: install the ClusterNetworkPolicy/AdminNetworkPolicy/BaselineAdminNetworkPolicy CRDs
    (:mod:`kube_ip_tracker.testing.crds`).
    ``build`` names the kube-apiserver build (:data:`BUILD_SCRIPTS`); default :func:`find_kube_apiserver`'s.
    """
    names = list(names) if names else [f"cluster-{i + 1}" for i in range(count)]
    if len(names) != count:
        raise ValueError(f"{count} clusters but {len(names)} names")
    apiserver, etcd = find_kube_apiserver(build), find_etcd()
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
