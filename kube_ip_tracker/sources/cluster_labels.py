"""The index writer of the clusters watched directly: stamps ClusterSet labels on their namespaces.

:class:`ClusterLabelWriter` wraps the local informers' writer (``Upstreams.local_writer``) and
applies the ``--cluster-labels`` rule (:mod:`kube_ip_tracker.cluster_labels`) to every namespace
record on its way in. Data learned from upstream trackers does not pass through it: a spoke serves
its hub's namespaces as the hub stamped them, and the hub stamps the clusters it watches directly,
so every tracker on the path serves the same labels.

The informers remember fingerprints of the records they convert (before stamping), so a namespace
update that changes nothing the index keeps still never reaches the index.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from prometheus_client import Counter

from kube_ip_tracker.cluster_labels import LabelRule, NamespaceStamper
from kube_ip_tracker.model import ClusterStatusRecord, IndexWriter, Kind, NamespaceRecord, Record

MISMATCHES = Counter(
    "kube_ip_tracker_cluster_label_mismatches_total",
    "Namespaces of a cluster watched directly whose --cluster-label-keys held another value than the "
    "cluster's id (counted once per namespace and value found; overwritten in enforce mode, kept in fill).",
    ["cluster"],
)


class ClusterLabelWriter:
    """An :class:`IndexWriter` that stamps namespace records, then hands everything to ``inner``."""

    def __init__(self, inner: IndexWriter, rule: LabelRule) -> None:
        self._inner = inner
        self.stamper = NamespaceStamper(rule, "tracker", lambda cluster: MISMATCHES.labels(cluster).inc())

    def upsert(self, record: Record) -> None:
        if isinstance(record, NamespaceRecord):
            record = self.stamper.apply(record)
        self._inner.upsert(record)

    def delete(self, kind: Kind, cluster: str, namespace: str, name: str) -> None:
        if kind is Kind.NAMESPACE:
            self.stamper.forget(cluster, name)
        self._inner.delete(kind, cluster, namespace, name)

    def replace(self, cluster: str, kind: Kind, records: Iterable[Record]) -> None:
        if kind is Kind.NAMESPACE:
            records = self.stamper.apply_all(cluster, cast(Iterable[NamespaceRecord], records))
        self._inner.replace(cluster, kind, records)

    def set_cluster_status(self, status: ClusterStatusRecord) -> None:
        self._inner.set_cluster_status(status)

    def remove_cluster(self, cluster: str) -> None:
        self.stamper.forget_cluster(cluster)
        self._inner.remove_cluster(cluster)
        try:
            MISMATCHES.remove(cluster)
        except KeyError:
            pass
