"""The package layers stay as docs/architecture.md draws them, checked by parsing every import.

- Shared core (records, wire, tracker client, Kubernetes access, small shared pieces) imports
  neither program.
- The tracker (``sources``, ``cloud``, ``gke``, ``eks``, ``server``, ``index``, ``cli``, ``ctl``) never imports the agent.
- The agent never imports the tracker's program code.
- ``index`` imports nothing from ``server``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kube_ip_tracker"

AGENT = ("kube_ip_tracker.agent",)
TRACKER = (
    "kube_ip_tracker.cli",
    "kube_ip_tracker.ctl",
    "kube_ip_tracker.tracker_entry",
    "kube_ip_tracker.server",
    "kube_ip_tracker.sources",
    "kube_ip_tracker.cloud",
    "kube_ip_tracker.gke",
    "kube_ip_tracker.eks",
    "kube_ip_tracker.index",
)
SHARED = (
    "kube_ip_tracker.model",
    "kube_ip_tracker.wire",
    "kube_ip_tracker.ipclaims",
    "kube_ip_tracker.interning",
    "kube_ip_tracker.client",
    "kube_ip_tracker.kube",
    "kube_ip_tracker.api",
    "kube_ip_tracker.backoff",
    "kube_ip_tracker.durations",
    "kube_ip_tracker.flag_values",
    "kube_ip_tracker.listen",
    "kube_ip_tracker.logs",
    "kube_ip_tracker.metrics_http",
    "kube_ip_tracker.tls_files",
    "kube_ip_tracker.index_metrics",
    "kube_ip_tracker.cluster_labels",
)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute module an ``import`` or ``from ... import`` names (relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from kube_ip_tracker import agent`` names a package too.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _violations(source: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if not _within(module, source):
            continue
        for line, imported in _imports(path):
            if _within(imported, forbidden):
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    return out


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        pytest.param(TRACKER, AGENT, id="tracker-does-not-import-agent"),
        pytest.param(AGENT, TRACKER, id="agent-does-not-import-tracker"),
        pytest.param(SHARED, AGENT + TRACKER, id="shared-core-imports-neither-program"),
        pytest.param(("kube_ip_tracker.index",), ("kube_ip_tracker.server",), id="index-does-not-import-server"),
    ],
)
def test_layer_rule(source: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    assert _violations(source, forbidden) == []


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """The parser finds both absolute and relative imports (so the rules above can fail)."""
    pkg = tmp_path / "kube_ip_tracker" / "agent"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("from ..server import grpc_server\nimport kube_ip_tracker.cli\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "kube_ip_tracker"
    try:
        assert len(_violations(AGENT, TRACKER)) == 3
    finally:
        PACKAGE = saved
