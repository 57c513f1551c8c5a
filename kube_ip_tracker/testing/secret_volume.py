"""A Secret volume as the kubelet keeps it, for processes that read mounted certificates in tests.

The kubelet writes a Secret's keys into a timestamped directory, points the ``..data`` symlink at it
with an atomic rename, and exposes each key as a symlink ``KEY -> ..data/KEY``; on a change it
writes a new directory and swaps ``..data``, so a reader sees the old set or the new one, never a
mix. :class:`~kube_ip_tracker.server.atomic_files.AtomicDirectory` writes that same layout.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from pathlib import Path

from kubernetes_asyncio import client

from kube_ip_tracker.server.atomic_files import AtomicDirectory
from kube_ip_tracker.testing.clusters import LocalCluster


async def secret_files(cluster: LocalCluster, namespace: str, name: str) -> tuple[str, dict[str, bytes]]:
    """(resourceVersion, decoded data) of a Secret; ("", {}) while it does not exist."""
    async with cluster.api_client() as api:
        try:
            secret = await client.CoreV1Api(api).read_namespaced_secret(name, namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return "", {}
            raise
    data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
    return secret.metadata.resource_version, data


async def mirror_secret(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    directory: Path,
    items: Sequence[str] | None = None,
    interval: float = 0.2,
) -> None:
    """Keep ``directory`` in step with the Secret, as the kubelet does for a pod mounting it (until cancelled).

    ``items`` limits the files to those keys, as a volume's ``items`` does.
    """
    seen = ""
    while True:
        version, files = await secret_files(cluster, namespace, name)
        if items is not None:
            files = {k: v for k, v in files.items() if k in items}
        if version and version != seen and files:
            await asyncio.to_thread(AtomicDirectory(directory).write, files)
            seen = version
        await asyncio.sleep(interval)
