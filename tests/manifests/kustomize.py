"""Render the kustomize overlays of manifests/overlays without kustomize (CI has no kubectl).

Supports exactly what the overlays use: ``resources`` (files and directories) and ``patches`` with
a ``target`` (kind, name) and an inline JSON 6902 patch (test, add, replace, remove) or a strategic
merge patch that is only ``$patch: delete`` (the target is removed). Anything else in a
kustomization is an error, so the overlays cannot grow a feature this renderer would ignore.
Where ``kubectl`` is installed a test compares the result with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .manifest import MANIFESTS, Obj, key, load

OVERLAYS = MANIFESTS / "overlays"
OVERLAY_NAMES = ["base", "full-mesh", "hub-and-spoke/hub", "hub-and-spoke/spoke", "cert-manager"]
SUPPORTED = {"apiVersion", "kind", "resources", "patches"}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot build, or a patch that does not apply."""


def build(directory: Path) -> list[Obj]:
    """The objects of the kustomization in ``directory``."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unsupported)}")
    objects: list[Obj] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects += build(path) if path.is_dir() else load(path)
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        if set(target) - {"kind", "name"} or set(patch) != {"target", "patch"}:
            raise KustomizeError(f"{directory}: unsupported patch form {sorted(patch)} / target {sorted(target)}")
        matched = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        if not matched:
            raise KustomizeError(f"{directory}: patch target {target} matches nothing")
        operations = yaml.safe_load(patch["patch"])
        if isinstance(operations, dict):
            _check_delete(directory, operations, target)
            objects = [o for o in objects if not any(o is m for m in matched)]
            continue
        for obj in matched:
            try:
                json_patch(obj, operations)
            except (KeyError, IndexError, ValueError) as exc:
                raise KustomizeError(f"{directory}: patch of {key(obj)} failed: {exc}") from exc
    return objects


def _check_delete(directory: Path, patch: dict[str, Any], target: dict[str, str]) -> None:
    """A strategic merge patch must be exactly a ``$patch: delete`` of its target."""
    if patch.get("$patch") != "delete" or set(patch) - {"$patch", "apiVersion", "kind", "metadata"}:
        raise KustomizeError(f"{directory}: only '$patch: delete' strategic merge patches are supported, got {patch}")
    meta = patch.get("metadata") or {}
    if patch.get("kind") != target["kind"] or meta.get("name") != target["name"] or set(meta) != {"name"}:
        raise KustomizeError(f"{directory}: delete patch {patch} does not name its target {target}")


def _tokens(pointer: str) -> list[str]:
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer {pointer!r} must start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _parent(doc: Any, pointer: str) -> tuple[Any, str]:
    tokens = _tokens(pointer)
    for token in tokens[:-1]:
        doc = doc[int(token)] if isinstance(doc, list) else doc[token]
    return doc, tokens[-1]


def json_patch(doc: Obj, operations: list[dict[str, Any]]) -> None:
    """Apply JSON 6902 operations (test, add, replace, remove) to ``doc`` in place."""
    for op in operations:
        parent, last = _parent(doc, op["path"])
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
                continue
            current = parent[index]
        else:
            if kind == "add":
                parent[last] = copy.deepcopy(op["value"])
                continue
            current = parent[last]
        if kind == "test":
            if current != op["value"]:
                raise ValueError(f"test {op['path']}: {current!r} != {op['value']!r}")
        elif kind == "replace":
            parent[index if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[index if isinstance(parent, list) else last]
        else:
            raise ValueError(f"unsupported operation {kind!r}")
