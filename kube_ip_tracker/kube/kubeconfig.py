"""The static cluster set (kubeconfig files, in-cluster config) and API clients for a ClusterSpec.

Each context of a ``--kubeconfig`` file is one cluster whose id is the context name. A file of a
``--kubeconfig-dir`` is one cluster: its current context (or its only context). Files are checked
when they are read, so a bad file is reported with its path and what is wrong with it instead of
failing later inside a client library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.config import ConfigException, load_incluster_config
from kubernetes_asyncio.config.kube_config import KubeConfigLoader

from kube_ip_tracker.model import ClusterSpec, TokenProvider

log = logging.getLogger(__name__)


class KubeconfigError(ValueError):
    """A kubeconfig file is missing, unreadable or invalid; the message names the file."""


def read_kubeconfig(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a kubeconfig file: every context must name a defined cluster (with a server) and user."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise KubeconfigError(f"kubeconfig {path}: file does not exist") from None
    except IsADirectoryError:
        raise KubeconfigError(f"kubeconfig {path}: is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KubeconfigError(f"kubeconfig {path}: cannot read it: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"kubeconfig {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise KubeconfigError(f"kubeconfig {path}: not a kubeconfig (expected a mapping with clusters and contexts)")
    clusters = _named(path, data, "clusters", "cluster")
    users = _named(path, data, "users", "user")
    contexts = _named(path, data, "contexts", "context")
    if not contexts:
        raise KubeconfigError(f"kubeconfig {path}: has no contexts")
    for name, context in contexts.items():
        cluster_name = context.get("cluster")
        if not cluster_name:
            raise KubeconfigError(f"kubeconfig {path}: context {name!r} names no cluster")
        if cluster_name not in clusters:
            raise KubeconfigError(f"kubeconfig {path}: context {name!r} refers to undefined cluster {cluster_name!r}")
        if not clusters[cluster_name].get("server"):
            raise KubeconfigError(f"kubeconfig {path}: cluster {cluster_name!r} has no server")
        user_name = context.get("user")
        if user_name and user_name not in users:
            raise KubeconfigError(f"kubeconfig {path}: context {name!r} refers to undefined user {user_name!r}")
    current = data.get("current-context")
    if current and current not in contexts:
        raise KubeconfigError(f"kubeconfig {path}: current-context {current!r} is not a defined context")
    return data


def _named(path: str, data: Mapping[str, Any], section: str, field: str) -> dict[str, dict[str, Any]]:
    entries = data.get(section) or []
    if not isinstance(entries, list):
        raise KubeconfigError(f"kubeconfig {path}: {section} must be a list")
    found: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise KubeconfigError(f"kubeconfig {path}: an entry of {section} has no name")
        body = entry.get(field)
        if not isinstance(body, dict):
            raise KubeconfigError(f"kubeconfig {path}: {field} {entry['name']!r} has no {field!r} mapping")
        found[entry["name"]] = body
    return found


def context_names(path: str | os.PathLike[str]) -> list[str]:
    """The context names of a checked kubeconfig file, in file order."""
    return [c["name"] for c in read_kubeconfig(path)["contexts"]]


def specs_from_kubeconfig(path: str | os.PathLike[str]) -> list[ClusterSpec]:
    """One spec per context of the file; the cluster id is the context name."""
    absolute = os.path.abspath(path)
    return [ClusterSpec(cluster_id=name, kubeconfig=absolute, context=name) for name in context_names(path)]


def spec_from_cluster_file(path: str | os.PathLike[str]) -> ClusterSpec:
    """The one cluster of a ``--kubeconfig-dir`` file: its current context, or its only context."""
    data = read_kubeconfig(path)
    names = [c["name"] for c in data["contexts"]]
    name = data.get("current-context") or (names[0] if len(names) == 1 else None)
    if not name:
        raise KubeconfigError(
            f"kubeconfig {path}: has {len(names)} contexts and no current-context; a --kubeconfig-dir file "
            "describes one cluster"
        )
    return ClusterSpec(cluster_id=name, kubeconfig=os.path.abspath(path), context=name)


def static_specs(paths: Iterable[str | os.PathLike[str]]) -> list[ClusterSpec]:
    """Specs of all contexts of all files; a cluster id defined in two files is an error naming both."""
    owner: dict[str, str] = {}
    specs: list[ClusterSpec] = []
    for path in paths:
        for spec in specs_from_kubeconfig(path):
            if spec.cluster_id in owner:
                other = owner[spec.cluster_id]
                where = f"both {other} and {path}" if other != str(path) else f"{path} twice"
                raise KubeconfigError(f"cluster id {spec.cluster_id!r} (a context name) is defined in {where}")
            owner[spec.cluster_id] = str(path)
            specs.append(spec)
    return specs


def in_cluster_spec(cluster_id: str) -> ClusterSpec:
    """The cluster the process runs in (service account token, KUBERNETES_SERVICE_HOST)."""
    return ClusterSpec(cluster_id=cluster_id, in_cluster=True)


def check_in_cluster() -> None:
    """Raise KubeconfigError when the in-cluster configuration is not available."""
    try:
        load_incluster_config(client_configuration=client.Configuration())
    except ConfigException as exc:
        raise KubeconfigError(
            f"no --kubeconfig or --kubeconfig-dir given and the in-cluster configuration is unusable: {exc}"
        ) from None


def install_token_provider(configuration: client.Configuration, provider: TokenProvider) -> None:
    """Ask ``provider`` for the bearer token before every request.

    Watches already open keep their connection; every new request (list, watch, get) carries the
    provider's current token, so a refreshed token never needs an informer restart.
    """

    async def refresh(config: client.Configuration) -> None:
        config.api_key["BearerToken"] = await provider()
        config.api_key_prefix["BearerToken"] = "Bearer"

    configuration.api_key["BearerToken"] = ""  # the hook is only consulted when the key exists
    configuration.api_key_prefix["BearerToken"] = "Bearer"
    configuration.refresh_api_key_hook = refresh


def _loader(path: str, context: str | None) -> KubeConfigLoader:
    """A client-library loader for one context; relative file paths resolve against the file's directory."""
    data = read_kubeconfig(path)
    base = os.path.dirname(os.path.abspath(path))
    return KubeConfigLoader(config_dict=data, active_context=context, config_base_path=base)


async def _configure_from_kubeconfig(configuration: client.Configuration, path: str, context: str | None) -> None:
    loader = _loader(path, context)
    try:
        await loader.load_and_set(configuration)
    except (ConfigException, OSError, ValueError) as exc:
        raise KubeconfigError(f"kubeconfig {path}: context {context!r}: {exc}") from None
    user = loader._user
    if user is not None and "exec" in user and hasattr(loader, "exec_plugin_expiry"):
        # The exec plugin's token expires: before each request, re-run the plugin once it has expired
        # (the loader caches the token until its expirationTimestamp).
        async def refresh(config: client.Configuration) -> None:
            await loader.load_from_exec_plugin()
            config.api_key["BearerToken"] = loader.token

        configuration.refresh_api_key_hook = refresh


@contextlib.asynccontextmanager
async def api_client(spec: ClusterSpec) -> AsyncIterator[client.ApiClient]:
    """An ApiClient for one cluster; closed (and its temporary CA file removed) on exit."""
    configuration = client.Configuration()
    ca_path: str | None = None
    try:
        if spec.in_cluster:
            try:
                load_incluster_config(client_configuration=configuration)
            except ConfigException as exc:
                raise KubeconfigError(f"in-cluster configuration: {exc}") from None
        elif spec.kubeconfig:
            await _configure_from_kubeconfig(configuration, spec.kubeconfig, spec.context)
        elif spec.server:
            configuration.host = spec.server.rstrip("/")
            if spec.ca_pem:
                fd, ca_path = tempfile.mkstemp(prefix=f"kit-ca-{spec.cluster_id}-", suffix=".crt")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(spec.ca_pem)
                configuration.ssl_ca_cert = ca_path
            if spec.token_provider is not None:
                install_token_provider(configuration, spec.token_provider)
        else:
            raise KubeconfigError(f"cluster {spec.cluster_id}: spec has neither kubeconfig, server nor in_cluster")
        async with client.ApiClient(configuration) as api:
            yield api
    finally:
        if ca_path:
            with contextlib.suppress(OSError):
                os.unlink(ca_path)
