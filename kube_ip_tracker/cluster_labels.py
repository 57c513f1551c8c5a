"""Authoritative ClusterSet labels: every namespace carries the id of the cluster it comes from.

Cross-cluster selectors stand on one namespace label, ``cluster.clusterset.k8s.io: <cluster-id>``
(NPEP-311 writes ``cluster.clusterset.k8s.io/cluster-name``). Whoever knows which cluster a
namespace came from stamps it, so a forgotten label does not drop the namespace out of every
cross-cluster rule and a namespace of cluster-1 labelled ``cluster-2`` is not taken for cluster-2:

- the tracker, for the namespaces of the clusters it watches directly (upstream data passes
  through as the upstream stamped it);
- the agent, for what it receives (so it is safe against a tracker running ``off``).

:func:`stamp` is the rule; :class:`NamespaceStamper` applies it to a stream of namespace records
and reports each namespace's mismatch once. :func:`add_arguments` and :func:`rule_from_args` give
both programs the same ``--cluster-labels`` and ``--cluster-label-keys`` flags.
"""

from __future__ import annotations

import argparse
import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kube_ip_tracker.kube.names import label_value_problem, qualified_name_problem
from kube_ip_tracker.model import NamespaceRecord

log = logging.getLogger(__name__)

CLUSTER_LABEL = "cluster.clusterset.k8s.io"
CLUSTER_NAME_LABEL = "cluster.clusterset.k8s.io/cluster-name"
DEFAULT_KEYS = (CLUSTER_LABEL, CLUSTER_NAME_LABEL)


class Mode(enum.Enum):
    """How the listed keys are set on a namespace."""

    ENFORCE = "enforce"  # set to the cluster's id, overwriting a different value
    FILL = "fill"  # set only where missing
    OFF = "off"  # labels pass through unchanged


@dataclass(frozen=True, slots=True)
class LabelRule:
    """A mode and the label keys it applies to."""

    mode: Mode = Mode.ENFORCE
    keys: tuple[str, ...] = DEFAULT_KEYS

    def describe(self) -> str:
        return f"--cluster-labels={self.mode.value}"


DEFAULT_RULE = LabelRule()


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A listed key whose value on the namespace is not the cluster's id."""

    key: str
    found: str


def stamp(rule: LabelRule, cluster: str, labels: Mapping[str, str]) -> tuple[Mapping[str, str], tuple[Mismatch, ...]]:
    """The labels to serve for a namespace of ``cluster``, and the listed keys that held another value.

    ``labels`` itself is returned when nothing changes (so the index's shared label maps stay shared).
    Mismatches are reported in ``enforce`` (overwritten) and ``fill`` (kept) modes, never in ``off``.
    """
    if rule.mode is Mode.OFF:
        return labels, ()
    mismatches = tuple(Mismatch(key, labels[key]) for key in rule.keys if key in labels and labels[key] != cluster)
    missing = [key for key in rule.keys if key not in labels]
    overwrite = mismatches if rule.mode is Mode.ENFORCE else ()
    if not missing and not overwrite:
        return labels, mismatches
    served = dict(labels)
    for key in missing:
        served[key] = cluster
    for mismatch in overwrite:
        served[mismatch.key] = cluster
    return served, mismatches


class NamespaceStamper:
    """Applies a :class:`LabelRule` to namespace records; logs and counts each namespace's mismatch once.

    A namespace is reported again only when the values found change; deleting it (or its cluster)
    forgets it. ``on_mismatch(cluster)`` is called with each report (the program's counter).
    ``where`` names the program in the log lines ("tracker", "agent").
    """

    def __init__(self, rule: LabelRule, where: str, on_mismatch: Callable[[str], None] = lambda cluster: None) -> None:
        self.rule = rule
        self.where = where
        self.on_mismatch = on_mismatch
        self._reported: dict[tuple[str, str], tuple[Mismatch, ...]] = {}
        self._invalid_ids: set[str] = set()

    @property
    def active(self) -> bool:
        return self.rule.mode is not Mode.OFF

    def apply(self, record: NamespaceRecord) -> NamespaceRecord:
        """The record to serve for ``record`` (the same object when no label changes)."""
        if not self.active:
            return record
        labels, mismatches = stamp(self.rule, record.cluster, record.labels)
        self._report(record, mismatches)
        if labels is record.labels:
            return record
        self._check_id(record.cluster)
        return NamespaceRecord(record.cluster, record.name, labels)

    def apply_all(self, cluster: str, records: Iterable[NamespaceRecord]) -> list[NamespaceRecord]:
        """:meth:`apply` to a cluster's complete list of namespaces; namespaces not in it are forgotten."""
        served = [self.apply(record) for record in records]
        names = {record.name for record in served}
        self.keep_only(lambda key: key[0] != cluster or key[1] in names)
        return served

    def keep_only(self, wanted: Callable[[tuple[str, str]], bool]) -> None:
        """Forget the namespaces whose (cluster, name) is not ``wanted`` (after a snapshot, say)."""
        for key in [k for k in self._reported if not wanted(k)]:
            del self._reported[key]

    def forget(self, cluster: str, name: str) -> None:
        """The namespace is gone."""
        self._reported.pop((cluster, name), None)

    def forget_cluster(self, cluster: str) -> None:
        """The cluster is gone."""
        self.keep_only(lambda key: key[0] != cluster)
        self._invalid_ids.discard(cluster)

    def mismatched(self) -> set[tuple[str, str]]:
        """(cluster, namespace) of the namespaces whose listed labels hold another cluster's id now."""
        return set(self._reported)

    def _report(self, record: NamespaceRecord, mismatches: tuple[Mismatch, ...]) -> None:
        key = record.key
        if not mismatches:
            self._reported.pop(key, None)
            return
        if self._reported.get(key) == mismatches:
            return
        self._reported[key] = mismatches
        found = ", ".join(f"{m.key}={m.found!r}" for m in mismatches)
        action = (
            f"serving {record.cluster!r} instead"
            if self.rule.mode is Mode.ENFORCE
            else "kept (fill sets missing keys only)"
        )
        log.warning(
            "Cluster %s: namespace %s is labelled %s, not its cluster's id; %s (%s %s)",
            record.cluster,
            record.name,
            found,
            action,
            self.where,
            self.rule.describe(),
        )
        self.on_mismatch(record.cluster)

    def _check_id(self, cluster: str) -> None:
        if cluster in self._invalid_ids:
            return
        problem = label_value_problem(cluster)
        if problem is not None:
            self._invalid_ids.add(cluster)
            log.error(
                "Cluster id %r is not a valid label value (%s): no selector can match the %s labels stamped "
                "on its namespaces; give the cluster an id that is a valid label value (docs/tracker.md)",
                cluster,
                problem,
                ", ".join(self.rule.keys),
            )


# ----------------------------------------------------------------------------- flags


def _mode(text: str) -> Mode:
    try:
        return Mode(text)
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise argparse.ArgumentTypeError(f"invalid mode {text!r}: choose from {choices}") from None


def parse_keys(text: str) -> tuple[str, ...]:
    """A comma-separated list of label keys (duplicates dropped); ``ArgumentTypeError`` names a bad one."""
    keys: list[str] = []
    for part in text.split(","):
        key = part.strip()
        if not key:
            continue
        problem = qualified_name_problem(key)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"invalid label key {key!r}: {problem}")
        if key not in keys:
            keys.append(key)
    if not keys:
        raise argparse.ArgumentTypeError("no label key given (use --cluster-labels=off to stamp none)")
    return tuple(keys)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """``--cluster-labels`` and ``--cluster-label-keys``; ``what`` says which namespaces are stamped."""
    parser.add_argument(
        "--cluster-labels",
        type=_mode,
        default=Mode.ENFORCE,
        metavar="enforce|fill|off",
        help=f"set the --cluster-label-keys of {what} to the id of its cluster: enforce overwrites a "
        "different value (logged once per namespace, counted), fill sets missing keys only, off passes "
        "labels through (default enforce)",
    )
    parser.add_argument(
        "--cluster-label-keys",
        type=parse_keys,
        default=DEFAULT_KEYS,
        metavar="KEY[,KEY...]",
        help=f"the namespace label keys that hold the cluster id (default {','.join(DEFAULT_KEYS)})",
    )


def rule_from_args(args: argparse.Namespace) -> LabelRule:
    """The rule the parsed flags give."""
    return LabelRule(args.cluster_labels, args.cluster_label_keys)
