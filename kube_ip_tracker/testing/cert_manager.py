"""A real cert-manager controller against a local cluster, for the tests of the cert-manager overlay.

The binary and cert-manager's CRDs come from ``hack/build-cert-manager.sh`` (``make cert-manager``,
part of ``make setup``), cached outside the clone. A missing build is an error that says how to make
it, never a skip: ``make test`` builds it first.
"""

from __future__ import annotations

import functools
import logging
import subprocess
from pathlib import Path

from kube_ip_tracker.testing import polling
from kube_ip_tracker.testing.clusters import PROJECT_ROOT, ChildProcess, LocalCluster, free_port
from kube_ip_tracker.testing.crds import install_crds
from kube_ip_tracker.testing.trackers import http_status

log = logging.getLogger(__name__)

BUILD_SCRIPT = PROJECT_ROOT / "hack" / "build-cert-manager.sh"
#: Exit code of ``hack/build-cert-manager.sh --cached`` when the binary is not built.
NOT_BUILT = 3


class CertManagerError(RuntimeError):
    """The cert-manager controller is not built, or did not start; the message says why."""


@functools.cache
def find_cert_manager() -> Path:
    """The cached controller binary (its CRDs in ``<binary>.crds``); CertManagerError when not built."""
    done = subprocess.run([str(BUILD_SCRIPT), "--cached"], capture_output=True, text=True)
    if done.returncode == NOT_BUILT:
        raise CertManagerError(f"cert-manager controller not built: {done.stderr.strip()}")
    if done.returncode != 0:
        raise CertManagerError(f"{BUILD_SCRIPT} --cached failed with {done.returncode}:\n{done.stderr[-3000:]}")
    binary = Path(done.stdout.strip().splitlines()[-1])
    if not crd_dir(binary).is_dir():
        raise CertManagerError(f"{binary}: no CRD directory {crd_dir(binary)}: run make cert-manager")
    return binary


def crd_dir(binary: Path) -> Path:
    """cert-manager's CRDs (deploy/crds of the same module version) beside the binary."""
    return binary.with_name(binary.name + ".crds")


def install_cert_manager_crds(cluster: LocalCluster, timeout: float = 60.0) -> None:
    """Create cert-manager's CRDs (Issuer, ClusterIssuer, Certificate, CertificateRequest, ACME) and wait until served."""
    install_crds(cluster, timeout=timeout, path=crd_dir(find_cert_manager()))


class CertManagerController:
    """The controller process (issuers, certificates, certificate requests) for one cluster.

    It acts with the cluster's administrator kubeconfig, as cert-manager's own service account
    would with its Helm chart's roles, and is ready once its informer caches synced (``/readyz``).
    """

    def __init__(self, cluster: LocalCluster, log_dir: Path) -> None:
        self.cluster = cluster
        self.ready_port = free_port()
        argv = [
            str(find_cert_manager()),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--ready-address=127.0.0.1:{self.ready_port}",
            # A failed request is retried after a second here, not after cert-manager's default hour.
            "--certificate-request-minimum-backoff=1s",
            "-v=2",
        ]
        self.process = ChildProcess(f"cert-manager {cluster.name}", argv, log_dir / f"cert-manager-{cluster.name}.log")

    def start(self) -> CertManagerController:
        """Start the process (then :meth:`wait_ready`)."""
        self.process.start()
        return self

    async def wait_ready(self, within: float = 60.0) -> None:
        """Wait until ``/readyz`` answers 200; CertManagerError when the process exits first."""
        readyz = f"http://127.0.0.1:{self.ready_port}/readyz"

        def ready() -> bool:
            if not self.process.alive():
                raise CertManagerError(f"cert-manager controller exited:\n{self.process.log_tail()}")
            return http_status(readyz) == 200

        await polling.eventually(
            ready,
            "cert-manager controller ready",
            within=within,
            interval=0.2,
            detail=self.process.log_tail,
            in_thread=True,
        )
        log.info("cert-manager controller ready for %s (%s)", self.cluster.name, self.process.log_path)

    def stop(self) -> None:
        self.process.stop()
