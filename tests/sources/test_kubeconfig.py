"""Kubeconfig checks, the static cluster set and the --kubeconfig-dir watcher (no API server needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_ip_tracker.kube.kubeconfig import (
    KubeconfigError,
    read_kubeconfig,
    spec_from_cluster_file,
    static_specs,
)
from kube_ip_tracker.model import ClusterSpec
from kube_ip_tracker.sources.kubeconfig_dir import KubeconfigDirWatcher


def kubeconfig(*contexts: str, server: str = "https://127.0.0.1:6443", current: str | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": f"{c}-cl", "cluster": {"server": server}} for c in contexts],
        "users": [{"name": f"{c}-u", "user": {"token": "t"}} for c in contexts],
        "contexts": [{"name": c, "context": {"cluster": f"{c}-cl", "user": f"{c}-u"}} for c in contexts],
    }
    if current:
        cfg["current-context"] = current
    return cfg


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "file does not exist"),
        ("clusters: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "not a kubeconfig"),
        (kubeconfig(), "has no contexts"),
        ({**kubeconfig("a"), "clusters": []}, "context 'a' refers to undefined cluster 'a-cl'"),
        ({**kubeconfig("a"), "clusters": [{"name": "a-cl", "cluster": {}}]}, "cluster 'a-cl' has no server"),
        ({**kubeconfig("a"), "users": []}, "context 'a' refers to undefined user 'a-u'"),
        (kubeconfig("a", current="b"), "current-context 'b' is not a defined context"),
        ({**kubeconfig("a"), "contexts": [{"context": {}}]}, "an entry of contexts has no name"),
    ],
)
def test_invalid_kubeconfig_names_file_and_problem(tmp_path: Path, content: Any, expected: str) -> None:
    path = tmp_path / "kc.yaml"
    if content is not None:
        write(path, content)
    with pytest.raises(KubeconfigError) as err:
        read_kubeconfig(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_directory_is_not_a_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="is a directory"):
        read_kubeconfig(tmp_path)


def test_static_specs_one_cluster_per_context(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", kubeconfig("c1", "c2"))
    b = write(tmp_path / "b.yaml", kubeconfig("c3"))
    specs = static_specs([a, b])
    assert [(s.cluster_id, s.context, s.kubeconfig) for s in specs] == [
        ("c1", "c1", str(a)),
        ("c2", "c2", str(a)),
        ("c3", "c3", str(b)),
    ]


def test_duplicate_cluster_ids_across_files_name_both(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", kubeconfig("c1", "c2"))
    b = write(tmp_path / "b.yaml", kubeconfig("c2"))
    with pytest.raises(KubeconfigError) as err:
        static_specs([a, b])
    assert "'c2'" in str(err.value) and str(a) in str(err.value) and str(b) in str(err.value)


def test_cluster_file_uses_current_or_only_context(tmp_path: Path) -> None:
    assert spec_from_cluster_file(write(tmp_path / "one", kubeconfig("x"))).cluster_id == "x"
    assert spec_from_cluster_file(write(tmp_path / "cur", kubeconfig("x", "y", current="y"))).cluster_id == "y"
    with pytest.raises(KubeconfigError, match="2 contexts and no current-context"):
        spec_from_cluster_file(write(tmp_path / "two", kubeconfig("x", "y")))


class FakeSupervisor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.running: dict[str, ClusterSpec] = {}

    async def ensure(self, spec: ClusterSpec, *, restart: bool = False) -> None:
        self.calls.append(("ensure", spec.cluster_id, restart))
        self.running[spec.cluster_id] = spec

    async def remove(self, cluster_id: str, grace_seconds: float = 0.0) -> None:
        self.calls.append(("remove", cluster_id, grace_seconds == 0))
        self.running.pop(cluster_id, None)


async def test_dir_watcher_add_change_remove(tmp_path: Path) -> None:
    sup = FakeSupervisor()
    write(tmp_path / "one.yaml", kubeconfig("c1"))
    (tmp_path / ".hidden").write_text("not yaml: [")
    (tmp_path / "..data").mkdir()
    watcher = KubeconfigDirWatcher(tmp_path, sup, interval=0.05)
    await watcher.start()
    assert sup.calls == [("ensure", "c1", False)] and watcher.cluster_ids() == {"c1"}

    await watcher.poll()  # nothing changed
    assert len(sup.calls) == 1

    write(tmp_path / "two.yaml", kubeconfig("c2"))
    await watcher.poll()
    assert sup.calls[-1] == ("ensure", "c2", False)

    write(tmp_path / "one.yaml", kubeconfig("c1", server="https://127.0.0.1:7443"))
    await watcher.poll()
    assert sup.calls[-1] == ("ensure", "c1", True)

    # An invalid edit keeps the cluster with its last good configuration.
    write(tmp_path / "one.yaml", "clusters: [")
    await watcher.poll()
    assert sup.calls[-1] == ("ensure", "c1", True) and set(sup.running) == {"c1", "c2"}

    (tmp_path / "one.yaml").unlink()
    await watcher.poll()
    assert sup.calls[-1] == ("remove", "c1", True) and set(sup.running) == {"c2"}

    # A second file with an id already taken is ignored; the first (by name) wins.
    write(tmp_path / "zz.yaml", kubeconfig("c2", server="https://127.0.0.1:9443"))
    await watcher.poll()
    assert sup.running["c2"].kubeconfig == str(tmp_path / "two.yaml")


async def test_dir_watcher_start_errors(tmp_path: Path) -> None:
    sup = FakeSupervisor()
    with pytest.raises(KubeconfigError, match="missing"):
        await KubeconfigDirWatcher(tmp_path / "missing", sup).start()
    write(tmp_path / "bad.yaml", "x: [")
    with pytest.raises(KubeconfigError, match=r"bad\.yaml"):
        await KubeconfigDirWatcher(tmp_path, sup).start()
    (tmp_path / "bad.yaml").unlink()
    write(tmp_path / "a.yaml", kubeconfig("c1"))
    write(tmp_path / "b.yaml", kubeconfig("c1"))
    with pytest.raises(KubeconfigError, match="both"):
        await KubeconfigDirWatcher(tmp_path, sup).start()
    assert sup.calls == []


async def test_dir_watcher_refuses_ids_defined_by_kubeconfig(tmp_path: Path) -> None:
    sup = FakeSupervisor()
    write(tmp_path / "a.yaml", kubeconfig("mine"))
    write(tmp_path / "b.yaml", kubeconfig("static"))
    with pytest.raises(KubeconfigError, match=r"'static' of .* is already defined by --kubeconfig"):
        await KubeconfigDirWatcher(tmp_path, sup, reserved={"static"}).start()
    (tmp_path / "b.yaml").unlink()
    watcher = KubeconfigDirWatcher(tmp_path, sup, reserved={"static"})
    await watcher.start()
    write(tmp_path / "b.yaml", kubeconfig("static"))  # appears later: ignored, the static cluster is untouched
    await watcher.poll()
    await watcher.poll()
    assert sup.calls == [("ensure", "mine", False)]
