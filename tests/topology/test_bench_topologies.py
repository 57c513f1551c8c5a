"""bench/bench_topologies.py: its Markdown section, and (slow) a quick run against real clusters."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_topologies.py"
_spec = importlib.util.spec_from_file_location("bench_topologies_under_test", BENCH)
assert _spec is not None and _spec.loader is not None
bench_topologies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_topologies)


def summary(p50: float) -> dict[str, float]:
    return {"samples": 3, "p50_ms": p50, "p99_ms": p50 * 2, "max_ms": p50 * 3}


def test_markdown_has_a_row_per_topology_and_path() -> None:
    results = {
        "clusters": 3,
        "writes": 3,
        "full_mesh": {"all": summary(1.5)},
        "hub_and_spoke": {"all": summary(2.0), "local": summary(1.0), "via_hub": summary(4.0)},
    }
    text = bench_topologies.markdown(results)
    assert "| full mesh (3 trackers, each watching 3 API servers) | any | 3 | 1.5 | 3.0 | 4.5 |" in text
    assert "| hub and spoke | other clusters (via the hub) | 3 | 4.0 | 8.0 | 12.0 |" in text


@pytest.mark.slow
@pytest.mark.cluster
def test_quick_run_measures_every_path() -> None:
    results = bench_topologies.run(quick=True)
    assert results["full_mesh"]["all"]["samples"] == 27
    hub = results["hub_and_spoke"]
    assert (hub["local"]["samples"], hub["via_hub"]["samples"]) == (9, 18)
    assert 0 < hub["via_hub"]["p50_ms"] <= hub["via_hub"]["p99_ms"]
