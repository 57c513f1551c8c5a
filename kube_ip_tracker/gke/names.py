"""Parsing of ``--gcp-cluster-names`` entries into GKE cluster references.

Accepted forms for one entry (entries are comma-separated, the flag may be repeated):

* ``project/location/cluster``
* ``projects/PROJECT/locations/LOCATION/clusters/CLUSTER`` (the GKE API resource name)
* ``location/cluster`` when ``--gcp-project`` is set
* ``cluster`` when both ``--gcp-project`` and ``--gcp-location`` are set
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Project ids: 6-30 chars, lower case letters, digits, hyphens; optionally domain-scoped ("example.com:proj").
_PROJECT = re.compile(r"^(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
# Locations: a region ("europe-west1") or a zone ("europe-west1-b").
_LOCATION = re.compile(r"^[a-z]+(?:-[a-z]+)+[0-9]+(?:-[a-z])?$")
# Cluster names: start with a letter, at most 40 chars, lower case letters, digits and hyphens.
_CLUSTER = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_RESOURCE = re.compile(r"^projects/([^/]+)/locations/([^/]+)/clusters/([^/]+)$")


class ClusterNameError(ValueError):
    """A ``--gcp-cluster-names`` entry (or a default project/location) is malformed."""


@dataclass(frozen=True, order=True)
class GkeClusterName:
    """One GKE cluster: project, location (region or zone) and cluster name."""

    project: str
    location: str
    name: str

    @property
    def resource(self) -> str:
        """The GKE API resource name, as ``GetCluster`` takes it."""
        return f"projects/{self.project}/locations/{self.location}/clusters/{self.name}"

    @property
    def default_cluster_id(self) -> str:
        """The id used when the cluster does not name itself: ``gke_<project>_<location>_<name>``.

        This is the context name ``gcloud container clusters get-credentials`` writes.
        """
        return f"gke_{self.project}_{self.location}_{self.name}"

    def __str__(self) -> str:
        return f"{self.project}/{self.location}/{self.name}"


def _check(kind: str, value: str, pattern: re.Pattern[str], entry: str, hint: str) -> None:
    if not pattern.match(value):
        raise ClusterNameError(f"invalid GKE cluster entry {entry!r}: {kind} {value!r} is not valid ({hint})")


def parse_cluster_name(
    entry: str, default_project: str | None = None, default_location: str | None = None
) -> GkeClusterName:
    """Parse one entry; raise :class:`ClusterNameError` naming the entry when it is malformed."""
    text = entry.strip()
    if not text:
        raise ClusterNameError("invalid GKE cluster entry '': empty name (check for a stray comma)")
    resource = _RESOURCE.match(text)
    if resource:
        project, location, name = resource.groups()
    else:
        parts = text.split("/")
        if len(parts) == 3:
            project, location, name = parts
        elif len(parts) == 2:
            if not default_project:
                raise ClusterNameError(
                    f"invalid GKE cluster entry {entry!r}: 'location/cluster' needs --gcp-project; "
                    "use 'project/location/cluster'"
                )
            project, (location, name) = default_project, parts
        elif len(parts) == 1:
            if not default_project or not default_location:
                missing = " and ".join(
                    flag
                    for flag, value in (("--gcp-project", default_project), ("--gcp-location", default_location))
                    if not value
                )
                raise ClusterNameError(
                    f"invalid GKE cluster entry {entry!r}: a bare cluster name needs {missing}; "
                    "use 'project/location/cluster'"
                )
            project, location, name = default_project, default_location, text
        else:
            raise ClusterNameError(
                f"invalid GKE cluster entry {entry!r}: expected 'project/location/cluster', "
                f"got {len(parts)} '/'-separated parts"
            )
    _check("project", project, _PROJECT, entry, "6-30 chars: lower case letters, digits, hyphens")
    _check("location", location, _LOCATION, entry, "a region like 'europe-west1' or a zone like 'europe-west1-b'")
    _check("cluster name", name, _CLUSTER, entry, "1-40 chars: lower case letters, digits, hyphens")
    return GkeClusterName(project, location, name)


def parse_cluster_names(
    values: Iterable[str], default_project: str | None = None, default_location: str | None = None
) -> list[GkeClusterName]:
    """Parse repeated, comma-separated flag values into unique cluster names (first occurrence order).

    Defaults are validated too, so a bad ``--gcp-project`` is reported even before it is used.
    """
    if default_project:
        _check("--gcp-project", default_project, _PROJECT, default_project, "a GCP project id")
    if default_location:
        _check("--gcp-location", default_location, _LOCATION, default_location, "a GCP region or zone")
    result: list[GkeClusterName] = []
    seen: set[GkeClusterName] = set()
    for value in values:
        for entry in value.split(","):
            if not entry.strip() and value.strip():
                # "a,,b" or a trailing comma: name the whole flag value so the typo is easy to find.
                raise ClusterNameError(f"invalid --gcp-cluster-names value {value!r}: empty entry between commas")
            if not entry.strip():
                continue
            parsed = parse_cluster_name(entry, default_project, default_location)
            if parsed not in seen:
                seen.add(parsed)
                result.append(parsed)
    return result
