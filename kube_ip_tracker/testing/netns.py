"""Pods as network namespaces, for tests and demos of the node agent (needs root).

Each pod is a network namespace with one veth pair into the root namespace (the "host"). The
host routes each pod address (/32 or /128) to its veth and forwards between them; a pod reaches
the whole test subnet through a link-local gateway on its veth, like Calico does. So all pods share
one flat network, and pod-to-pod traffic crosses the host's netfilter FORWARD hook. Neighbour
entries are static: no ARP or neighbour discovery. A pod may be dual-stack (``extra_ips``).

IPv4 forwarding is enabled per veth only. IPv6 forwards only when
``net.ipv6.conf.all.forwarding`` is 1 (per-interface forwarding is not enough), so while any
network with an IPv6 subnet exists (in any process on the host: a lock file and one holder file per
network under ``/run/kube-ip-tracker-testing`` count them) it is set to 1, and the value found
before the first is restored when the last one closes. Duplicate address detection is off on the
veths, so no address stays "tentative" (unusable) for a second or two.

Only private addresses inside the configured test subnets are accepted, and pods get no default
route, so they cannot send traffic anywhere else.

Sockets are created inside a pod by switching the calling thread's network namespace for the
duration of ``socket()``; the returned socket stays in the pod and can be used from any thread.
The probes and servers here block: call them from a thread (``asyncio.to_thread``) when an
asyncio loop must keep running, e.g. one that serves NFQUEUE verdicts.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import itertools
import json
import logging
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("kube_ip_tracker.testing.netns")

_CLONE_NEWNET = 0x40000000
_GATEWAY4 = "169.254.1.1"
_GATEWAY6 = "fe80::1"
_libc = ctypes.CDLL(None, use_errno=True)
_BLOCK_COUNTER = itertools.count(secrets.randbelow(1 << 16))
_STATE_DIR = "/run/kube-ip-tracker-testing"
_FORWARDING6 = "/proc/sys/net/ipv6/conf/all/forwarding"
_HOLDER = "ipv6-forwarding.holder."
_SAVED = "ipv6-forwarding.saved"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class NetnsError(RuntimeError):
    """Creating or using a pod namespace failed."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(netns_path: str) -> Iterator[None]:
    """Run the body with the calling thread in the network namespace at ``netns_path``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read().strip()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _forwarding_holders() -> Iterator[list[str]]:
    """Under the host-wide lock: the holder files of live processes (those of dead ones are removed)."""
    os.makedirs(_STATE_DIR, exist_ok=True)
    with open(os.path.join(_STATE_DIR, "ipv6-forwarding.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        holders = []
        for name in os.listdir(_STATE_DIR):
            if not name.startswith(_HOLDER):
                continue
            pid = name[len(_HOLDER) :].split(".")[0]
            if pid.isdigit() and _pid_alive(int(pid)):
                holders.append(name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(_STATE_DIR, name))
        yield holders


def hold_ipv6_forwarding(token: str) -> None:
    """Set ``net.ipv6.conf.all.forwarding`` to 1 until :func:`release_ipv6_forwarding` of every holder."""
    with _forwarding_holders() as holders:
        saved = os.path.join(_STATE_DIR, _SAVED)
        if not holders and not os.path.exists(saved):  # (a saved value without holders: a holder crashed)
            _write(saved, _read(_FORWARDING6))
        _write(os.path.join(_STATE_DIR, f"{_HOLDER}{os.getpid()}.{token}"), "")
        _write(_FORWARDING6, "1")


def release_ipv6_forwarding(token: str) -> None:
    """Drop one hold; the last one restores the value found before the first."""
    with _forwarding_holders() as holders:
        name = f"{_HOLDER}{os.getpid()}.{token}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(_STATE_DIR, name))
        if any(holder != name for holder in holders):
            return
        saved = os.path.join(_STATE_DIR, _SAVED)
        with contextlib.suppress(FileNotFoundError):
            previous = _read(saved)
            _write(_FORWARDING6, previous)
            os.unlink(saved)
            log.info("net.ipv6.conf.all.forwarding restored to %s", previous)


def _no_dad(interface: str, netns_path: str | None = None) -> None:
    """Turn duplicate address detection off on ``interface`` (before it is up: no tentative addresses)."""
    path = f"/proc/sys/net/ipv6/conf/{interface}/accept_dad"
    if netns_path is None:
        _write(path, "0")
    else:
        with inside(netns_path):  # /proc/sys/net belongs to the namespace of the opening thread
            _write(path, "0")


def _wait_not_tentative(interface: str, netns: str | None = None, within: float = 5.0) -> None:
    """Wait until no IPv6 address of ``interface`` is tentative (DAD still running)."""
    argv = ["ip", "-j", "-6", *(["-n", netns] if netns else []), "addr", "show", "dev", interface]
    deadline = time.monotonic() + within
    while True:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise NetnsError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        tentative = [
            a["local"]
            for link in json.loads(result.stdout or "[]")
            for a in link.get("addr_info", [])
            if a.get("tentative")
        ]
        if not tentative:
            return
        if time.monotonic() > deadline:
            raise NetnsError(f"addresses {', '.join(tentative)} of {interface} still tentative after {within}s")
        time.sleep(0.05)


# --- servers --------------------------------------------------------------------------------------


class TcpEchoServer:
    """Echoes everything each TCP client sends, one thread per connection."""

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-echo", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), name="tcp-echo-conn", daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        """Stop accepting, close every connection."""
        self._stop.set()
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                conn.close()
        self._thread.join(timeout=2)


class UdpEchoServer:
    """Sends every datagram back to its sender."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self.received = 0
        self._thread = threading.Thread(target=self._loop, name="udp-echo", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1
            with contextlib.suppress(OSError):
                self._sock.sendto(data, peer)

    def close(self) -> None:
        """Stop the server."""
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=2)


class TcpStream:
    """A long-lived TCP connection to an echo server; :meth:`exchange` checks it still carries data."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._counter = 0

    def exchange(self, timeout: float = 1.0) -> bool:
        """Send a message and wait for its echo; False when no echo arrives in time or the stream broke."""
        self._counter += 1
        message = f"msg-{self._counter}\n".encode()
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(message)
            received = b""
            while len(received) < len(message):
                chunk = self._sock.recv(len(message) - len(received))
                if not chunk:
                    return False
                received += chunk
        except OSError:
            return False
        return received == message

    @property
    def local_port(self) -> int:
        """The client's port."""
        return int(self._sock.getsockname()[1])

    def close(self) -> None:
        self._sock.close()


# --- pods -----------------------------------------------------------------------------------------


@dataclass
class Pod:
    """One pod: a namespace with ``eth0`` holding ``ip`` (and ``extra_ips``), wired to ``host_if`` in the root namespace."""

    name: str
    netns: str
    ip: IPAddress
    host_if: str
    _closers: list[TcpEchoServer | UdpEchoServer | TcpStream] = field(default_factory=list, repr=False)
    extra_ips: tuple[IPAddress, ...] = ()

    @property
    def ips(self) -> tuple[IPAddress, ...]:
        """Every address of the pod, ``ip`` first."""
        return (self.ip, *self.extra_ips)

    def ip_of(self, version: int) -> IPAddress:
        """The pod's first address of IP ``version`` (4 or 6)."""
        for address in self.ips:
            if address.version == version:
                return address
        raise ValueError(f"pod {self.name} has no IPv{version} address")

    @property
    def netns_path(self) -> str:
        """The namespace file (the host's own namespace when ``netns`` is empty)."""
        return f"/run/netns/{self.netns}" if self.netns else "/proc/self/ns/net"

    @property
    def family(self) -> socket.AddressFamily:
        return _family(self.ip)

    def socket(
        self, kind: socket.SocketKind = socket.SOCK_STREAM, family: socket.AddressFamily | None = None
    ) -> socket.socket:
        """A new socket inside this pod's namespace (of the family of ``ip`` unless given)."""
        with inside(self.netns_path):
            return socket.socket(family or self.family, kind)

    def exec(self, *argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run a command inside the pod (``ip netns exec``)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def serve_tcp(self, port: int, ip: object = None) -> TcpEchoServer:
        """Start a TCP echo server on ``ip:port`` (default: the pod's ``ip``; stopped with the network)."""
        address = str(ip or self.ip)
        sock = self.socket(socket.SOCK_STREAM, _family(address))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(64)
        server = TcpEchoServer(sock)
        self._closers.append(server)
        return server

    def serve_udp(self, port: int, ip: object = None) -> UdpEchoServer:
        """Start a UDP echo server on ``ip:port`` (default: the pod's ``ip``; stopped with the network)."""
        address = str(ip or self.ip)
        sock = self.socket(socket.SOCK_DGRAM, _family(address))
        sock.bind((address, port))
        server = UdpEchoServer(sock)
        self._closers.append(server)
        return server

    def tcp_probe(self, ip: object, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection to ``ip:port`` opens and echoes within ``timeout`` seconds."""
        sock = self.socket(socket.SOCK_STREAM, _family(ip))
        sock.settimeout(timeout)
        try:
            sock.connect((str(ip), port))
            sock.sendall(b"probe")
            return sock.recv(16) == b"probe"
        except OSError:
            return False
        finally:
            sock.close()

    def udp_probe(self, ip: object, port: int, timeout: float = 1.0, payload: bytes = b"probe") -> bool:
        """Whether a datagram to ``ip:port`` is echoed within ``timeout`` seconds (fresh source port each call)."""
        sock = self.socket(socket.SOCK_DGRAM, _family(ip))
        sock.settimeout(timeout)
        try:
            sock.sendto(payload, (str(ip), port))
            data, _ = sock.recvfrom(65536)
            return data == payload
        except OSError:
            return False
        finally:
            sock.close()

    def sctp_probe(self, ip: object, port: int, timeout: float = 1.0) -> bool:
        """Whether an SCTP association to ``ip:port`` opens within ``timeout`` (OSError if the kernel lacks SCTP)."""
        with inside(self.netns_path):
            sock = socket.socket(_family(ip), socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        sock.settimeout(timeout)
        try:
            sock.connect((str(ip), port))
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def udp_socket(self, ip: object, port: int) -> socket.socket:
        """A UDP socket connected to ``ip:port`` (one flow for many datagrams); the caller closes it."""
        sock = self.socket(socket.SOCK_DGRAM, _family(ip))
        sock.connect((str(ip), port))
        return sock

    def open_stream(self, ip: object, port: int, timeout: float = 1.0) -> TcpStream:
        """A long-lived TCP connection to an echo server (closed with the network)."""
        sock = self.socket(socket.SOCK_STREAM, _family(ip))
        sock.settimeout(timeout)
        try:
            sock.connect((str(ip), port))
        except OSError:
            sock.close()
            raise
        stream = TcpStream(sock)
        self._closers.append(stream)
        return stream

    def close_servers(self) -> None:
        for closer in self._closers:
            closer.close()
        self._closers.clear()


class PodNetwork:
    """A set of pod namespaces on one flat routed network through the host.

    Use as a context manager (or call :meth:`close`): namespaces, veths and host routes are removed
    even when a test fails. ``subnet`` (and ``extra_subnets``) must be private; pods can reach only them.
    Automatic addresses come from a block of ``subnet`` and of the first extra subnet of the other IP
    family, if any (``next_ip(6)``), so ``PodNetwork("10.244.0.0/16", extra_subnets=["fd00:10:244::/64"])``
    holds dual-stack pods.
    """

    def __init__(
        self,
        subnet: str = "10.244.0.0/16",
        prefix: str | None = None,
        host_address: bool = False,
        extra_subnets: Sequence[str] = (),
    ) -> None:
        net = ipaddress.ip_network(subnet)
        self.subnet = net
        # Pods may also use addresses of extra_subnets (routed from every pod); automatic ones come from subnet.
        self.subnets = [net, *(ipaddress.ip_network(s) for s in extra_subnets)]
        for each in self.subnets:
            if not each.is_private or each.is_global:
                raise ValueError(f"test subnet {each} is not a private network")
        self.prefix = prefix or f"kipt{secrets.token_hex(2)}"
        if len(self.prefix) > 10:
            raise ValueError(f"prefix {self.prefix!r} is longer than 10 characters (interface names)")
        self.pods: list[Pod] = []
        # A random /24 (or /120) inside the subnet keeps parallel networks from colliding.
        self._auto: dict[int, list[IPAddress]] = {net.version: self._pick_block(net)}
        for each in self.subnets[1:]:
            if each.version not in self._auto:
                self._auto[each.version] = self._pick_block(each)
        self._next_host = {version: 2 for version in self._auto}
        self.host: Pod | None = None
        self._forwarding_token = secrets.token_hex(4) if 6 in self._auto else None
        if self._forwarding_token is not None:
            hold_ipv6_forwarding(self._forwarding_token)
        try:
            if host_address:
                self._add_host()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _pick_block(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[IPAddress]:
        """A /24 (/120) of ``subnet`` that no live network routes: blocks rotate within a process, so
        tests run one after another get different addresses (and cannot meet old conntrack entries)."""
        block_len = 24 if subnet.version == 4 else 120
        if subnet.prefixlen >= block_len:
            return list(subnet.hosts())
        blocks = 2 ** (block_len - subnet.prefixlen)
        size = 2 ** (subnet.max_prefixlen - block_len)
        for _ in range(min(blocks, 1 << 16)):
            index = next(_BLOCK_COUNTER) % (blocks - 1) + 1
            block = ipaddress.ip_network((int(subnet.network_address) + index * size, block_len))
            if not routed(block):
                return list(block.hosts())
        raise NetnsError(f"every block of {subnet} is in use")

    def _add_host(self) -> None:
        """Give the host an address of the block on its own veth (peer parked in a namespace)."""
        address = self._auto[self.subnet.version][0]
        host = Pod(name="host", netns="", ip=address, host_if=f"{self.prefix}hx")
        parking = f"{self.prefix}-hostaddr"
        self._parking = parking
        _ip("netns", "add", parking)
        _ip("link", "add", host.host_if, "type", "veth", "peer", "name", "eth0", "netns", parking)
        plen = "128" if address.version == 6 else "32"
        _ip("addr", "add", f"{address}/{plen}", "dev", host.host_if, *(["nodad"] if address.version == 6 else []))
        _ip("link", "set", host.host_if, "up")
        self.host = host

    def next_ip(self, version: int | None = None) -> IPAddress:
        """An unused address of this network's block of IP ``version`` (default: that of ``subnet``)."""
        version = version or self.subnet.version
        if version not in self._auto:
            raise ValueError(f"the network has no IPv{version} subnet")
        block = self._auto[version]
        if self._next_host[version] >= len(block):
            raise NetnsError(f"IPv{version} address block exhausted")
        ip = block[self._next_host[version]]
        self._next_host[version] += 1
        return ip

    def add_pod(self, name: str, ip: str | None = None, extra_ips: Sequence[object] = ()) -> Pod:
        """Create a pod namespace with address ``ip`` (default: the next free one) and ``extra_ips``."""
        address = ipaddress.ip_address(ip) if ip is not None else self.next_ip()
        extra = tuple(ipaddress.ip_address(str(each)) for each in extra_ips)
        for each in (address, *extra):
            if not any(each in subnet for subnet in self.subnets):
                subnets = ", ".join(str(subnet) for subnet in self.subnets)
                raise ValueError(f"pod address {each} is outside the test subnets {subnets}")
        index = len(self.pods)
        pod = Pod(name, f"{self.prefix}-{name}", address, f"{self.prefix}h{index}", extra_ips=extra)
        self.pods.append(pod)  # before creation, so close() removes half-built pods
        self._create(pod)
        log.info("pod %s: netns %s ips %s host veth %s", name, pod.netns, ", ".join(map(str, pod.ips)), pod.host_if)
        return pod

    def _create(self, pod: Pod) -> None:
        versions = sorted({each.version for each in pod.ips})
        _ip("netns", "add", pod.netns)
        _ip("link", "add", pod.host_if, "type", "veth", "peer", "name", "eth0", "netns", pod.netns)
        for version in versions:
            _write(f"/proc/sys/net/{'ipv6' if version == 6 else 'ipv4'}/conf/{pod.host_if}/forwarding", "1")
        if 6 in versions:
            _no_dad(pod.host_if)
            _no_dad("eth0", pod.netns_path)
        _ip("link", "set", pod.host_if, "up")
        _ip("-n", pod.netns, "link", "set", "lo", "up")
        for address in pod.ips:
            plen = "128" if address.version == 6 else "32"
            nodad = ["nodad"] if address.version == 6 else []
            _ip("-n", pod.netns, "addr", "add", f"{address}/{plen}", "dev", "eth0", *nodad)
        _ip("-n", pod.netns, "link", "set", "eth0", "up")
        host_mac = _mac(pod.host_if)
        pod_mac = _mac("eth0", pod.netns)
        for version in versions:
            gateway = _GATEWAY6 if version == 6 else _GATEWAY4
            _ip("-n", pod.netns, "neigh", "replace", gateway, "lladdr", host_mac, "dev", "eth0", "nud", "permanent")
            _ip("-n", pod.netns, "route", "add", gateway, "dev", "eth0", "scope", "link")
            for each in self.subnets:
                if each.version == version:
                    _ip("-n", pod.netns, "route", "add", str(each), "via", gateway, "dev", "eth0", "onlink")
        for address in pod.ips:
            plen = "128" if address.version == 6 else "32"
            host = self.host
            source = ["src", str(host.ip)] if host is not None and host.ip.version == address.version else []
            _ip("route", "add", f"{address}/{plen}", "dev", pod.host_if, *source)
            _ip("neigh", "replace", str(address), "lladdr", pod_mac, "dev", pod.host_if, "nud", "permanent")
        if 6 in versions:
            _wait_not_tentative("eth0", pod.netns)
            _wait_not_tentative(pod.host_if)

    def close(self) -> None:
        """Stop servers, delete every pod namespace (their veths and host routes go with them)."""
        for pod in self.pods:
            pod.close_servers()
        for pod in self.pods:
            subprocess.run(["ip", "link", "del", pod.host_if], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True, check=False)
            # Forget the pods' connections, so a later network reusing the addresses starts clean.
            for address in pod.ips:
                for direction in ("-s", "-d"):
                    subprocess.run(["conntrack", "-D", direction, str(address)], capture_output=True, check=False)
        self.pods.clear()
        if self.host is not None:
            self.host.close_servers()
            subprocess.run(["ip", "link", "del", self.host.host_if], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", self._parking], capture_output=True, check=False)
            self.host = None
        if self._forwarding_token is not None:
            release_ipv6_forwarding(self._forwarding_token)
            self._forwarding_token = None

    def __enter__(self) -> PodNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _family(ip: object) -> socket.AddressFamily:
    """The socket family of an address (or its text)."""
    return socket.AF_INET6 if ipaddress.ip_address(str(ip)).version == 6 else socket.AF_INET


def _mac(interface: str, netns: str | None = None) -> str:
    """The MAC address of ``interface`` (in ``netns``, or the root namespace)."""
    argv = ["ip", "-j", *(["-n", netns] if netns else []), "link", "show", "dev", interface]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return str(json.loads(result.stdout)[0]["address"])


def routed(block: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether the root namespace routes any address of ``block`` (another network uses it)."""
    argv = ["ip", "-j", f"-{block.version}", "route", "show", "root", str(block)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    return result.returncode != 0 or bool(json.loads(result.stdout or "[]"))


def pod_exists(netns: str) -> bool:
    """Whether a namespace of that name exists."""
    return os.path.exists(f"/run/netns/{netns}")
