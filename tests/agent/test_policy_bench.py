"""Smoke test of bench/bench_evaluator.py at a tiny size (figures are not checked: no speed targets here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_evaluator.py"


def test_bench_runs_and_reports_figures() -> None:
    spec = importlib.util.spec_from_file_location("bench_evaluator_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.measure(60, 40, 300, repeats=2)
    assert result["pods"] == 60 and result["policies"] == 40 and result["decisions"] == 300
    assert result["warm_decisions_per_second"] > 0 and len(result["warm_decisions_per_second_runs"]) == 2
    assert result["calls_per_decision"] > 1
    assert 0 < result["allowed_fraction"] < 1


def test_bench_with_admin_policies_changes_verdicts() -> None:
    spec = importlib.util.spec_from_file_location("bench_evaluator_smoke_admin", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plain = module.measure(200, 40, 600, repeats=1)
    tiered = module.measure(200, 40, 600, repeats=1, admin=12)
    assert tiered["admin_policies"] == 12
    assert tiered["allowed_fraction"] != plain["allowed_fraction"]  # the admin rules decide some probes
