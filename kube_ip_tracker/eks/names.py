"""Parsing of ``--aws-cluster-names`` entries (``REGION/NAME``, comma-separated, repeatable)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Regions: "us-east-1", "eu-central-2", "us-gov-west-1", "cn-north-1", "ap-southeast-4", "us-isob-east-1".
_REGION = re.compile(r"^[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$")
# EKS cluster names: 1-100 chars, letters, digits, hyphens, underscores; starting with a letter or digit.
_CLUSTER = re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$")


class ClusterNameError(ValueError):
    """An ``--aws-cluster-names`` entry is malformed."""


@dataclass(frozen=True, order=True)
class EksClusterName:
    """One EKS cluster: its region and name (the account is the one of the tracker's AWS credentials)."""

    region: str
    name: str

    @property
    def default_cluster_id(self) -> str:
        """The id used when the cluster does not name itself: ``eks_<region>_<name>``."""
        return f"eks_{self.region}_{self.name}"

    def __str__(self) -> str:
        return f"{self.region}/{self.name}"


def parse_cluster_name(entry: str) -> EksClusterName:
    """Parse one ``REGION/NAME`` entry; raise :class:`ClusterNameError` naming it when it is malformed."""
    text = entry.strip()
    parts = text.split("/")
    if len(parts) != 2:
        raise ClusterNameError(
            f"invalid EKS cluster entry {entry!r}: expected 'REGION/NAME' (e.g. 'us-east-1/prod'), "
            f"got {len(parts)} '/'-separated part{'s' if len(parts) != 1 else ''}"
        )
    region, name = parts
    if not _REGION.match(region):
        raise ClusterNameError(
            f"invalid EKS cluster entry {entry!r}: region {region!r} is not an AWS region (like 'us-east-1')"
        )
    if not _CLUSTER.match(name):
        raise ClusterNameError(
            f"invalid EKS cluster entry {entry!r}: cluster name {name!r} is not valid "
            "(1-100 chars: letters, digits, hyphens, underscores; starting with a letter or digit)"
        )
    return EksClusterName(region, name)


def parse_cluster_names(values: Iterable[str]) -> list[EksClusterName]:
    """Parse repeated, comma-separated flag values into unique cluster names (first occurrence order)."""
    result: list[EksClusterName] = []
    seen: set[EksClusterName] = set()
    for value in values:
        for entry in value.split(","):
            if not entry.strip():
                if value.strip():
                    raise ClusterNameError(f"invalid --aws-cluster-names value {value!r}: empty entry between commas")
                continue
            parsed = parse_cluster_name(entry)
            if parsed not in seen:
                seen.add(parsed)
                result.append(parsed)
    return result
