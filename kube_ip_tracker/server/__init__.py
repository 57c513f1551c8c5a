"""The tracker's gRPC server: Watch fan-out, GetPodByIP, ListClusters, health, reflection, metrics.

``TrackerServer`` is imported lazily so that :mod:`kube_ip_tracker.index` can use
:mod:`kube_ip_tracker.server.metrics` without importing grpc server code (and without an import cycle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kube_ip_tracker.server.grpc_server import TrackerServer

__all__ = ["TrackerServer"]


def __getattr__(name: str) -> Any:
    if name == "TrackerServer":
        from kube_ip_tracker.server.grpc_server import TrackerServer

        return TrackerServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
