"""The GKE reconcile loop: the shared loop (:mod:`kube_ip_tracker.cloud.reconcile`) with GKE's names.

A cluster the GKE API answers ``NOT_FOUND`` for was deleted; a usable cluster is ``RUNNING``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from google.api_core import exceptions as core_exceptions

from kube_ip_tracker.cloud.reconcile import Backoff, ClusterSupervisorLike, DiscoveryLike, Provider, Reconciler
from kube_ip_tracker.gke import metrics
from kube_ip_tracker.gke.names import GkeClusterName

__all__ = ["GKE", "Backoff", "ClusterSupervisorLike", "GkeReconciler"]

GKE = Provider(
    name="GKE",
    ready_status="RUNNING",
    metrics=metrics.RECONCILE,
    is_not_found=lambda exc: isinstance(exc, core_exceptions.NotFound),
    log=logging.getLogger(__name__),
)


class GkeReconciler(Reconciler[GkeClusterName]):
    """The reconcile loop for ``--gcp-cluster-names``."""

    def __init__(
        self,
        names: Sequence[GkeClusterName] | Callable[[], Sequence[GkeClusterName]],
        discovery: DiscoveryLike[GkeClusterName],
        supervisor: ClusterSupervisorLike,
        **options: Any,
    ) -> None:
        """``options``: interval, removal_grace, backoff_base, rng (see :class:`Reconciler`)."""
        super().__init__(GKE, names, discovery, supervisor, **options)
