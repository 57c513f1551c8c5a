"""EKS in the shared reconcile loop: ``Reconciler(EKS, names, discovery, supervisor, ...)``.

A cluster DescribeCluster answers ``ResourceNotFoundException`` for was deleted; a usable cluster is ``ACTIVE``.
"""

from __future__ import annotations

import logging

from kube_ip_tracker.cloud.reconcile import Provider
from kube_ip_tracker.eks import metrics
from kube_ip_tracker.eks.discovery import ACTIVE, is_not_found

EKS = Provider(
    name="EKS",
    ready_status=ACTIVE,
    metrics=metrics.RECONCILE,
    is_not_found=is_not_found,
    log=logging.getLogger(__name__),
)
