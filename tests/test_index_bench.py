"""Smoke test: the index benchmark runs on a tiny shape and reports sane figures (no speed targets);
and the index's label pool (trimmed for the apply rate) drops maps no record uses any more."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kube_ip_tracker.index import Index
from kube_ip_tracker.model import Kind, PodRecord

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_index.py"


def test_bench_index_runs_small() -> None:
    spec = importlib.util.spec_from_file_location("bench_index_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.measure(pods=600, clusters=3, nodes=30, namespaces=10)
    assert figures["load_events"] == 3 + 30 + 30 + 600
    assert (
        100 < figures["snapshot_bytes_per_pod"]
        and figures["snapshot_gzip_bytes_per_pod"] < figures["snapshot_bytes_per_pod"]
    )
    assert figures["traced_bytes_per_pod"] > 0
    assert figures["load_events_per_s"] > 0 and figures["profile"]


def _pod(i: int, labels: dict[str, str]) -> PodRecord:
    return PodRecord("c", "ns", f"pod-{i}", labels, (), "node", (f"10.0.{i >> 8}.{i & 255}",))


def test_label_pool_prunes_unused_maps_and_keeps_shared_ones() -> None:
    index = Index(log_size=10)  # the change log keeps deleted records (and their labels) alive too
    index.upsert(_pod(0, {"app": "kept"}))
    for i in range(1, 3000):  # every pod its own map, then deleted: the pool must not keep them all
        index.upsert(_pod(i, {"app": f"gone-{i}"}))
        index.delete(Kind.POD, "c", "ns", f"pod-{i}")
        index.flush()
    pooled = index._interner.labels_pooled
    assert pooled < 2100, pooled
    index.upsert(_pod(5000, {"app": "kept"}))
    kept = [p for p in index.pods() if p.labels == {"app": "kept"}]
    assert len(kept) == 2 and kept[0].labels is kept[1].labels  # still shared after pruning
