"""Smoke test: the index benchmark runs on a tiny shape and reports sane figures (no speed targets)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_index.py"


def test_bench_index_runs_small() -> None:
    spec = importlib.util.spec_from_file_location("bench_index_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.run(pods=600, clusters=3, nodes=30, namespaces=10)
    assert figures["load_events"] == 3 + 30 + 30 + 600
    assert (
        100 < figures["snapshot_bytes_per_pod"]
        and figures["snapshot_gzip_bytes_per_pod"] < figures["snapshot_bytes_per_pod"]
    )
    assert figures["traced_bytes_per_pod"] > 0
