"""The tracker's gRPC server: Watch fan-out, GetPodByIP, ListClusters, health, reflection, metrics."""

from __future__ import annotations

from kube_ip_tracker.server.grpc_server import TrackerServer

__all__ = ["TrackerServer"]
