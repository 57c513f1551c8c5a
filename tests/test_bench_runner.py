"""`python -m bench` runs benchmark modules at quick shapes, stores JSON results and rebuilds the document."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_runner_stores_results_and_rebuilds_the_document_from_all_of_them(tmp_path: Path) -> None:
    results, doc = tmp_path / "results", tmp_path / "benchmarks.md"
    done = _bench("--quick", "--results-dir", str(results), "--doc", str(doc), "index", "evaluator")
    assert done.returncode == 0, done.stderr
    for name in ("index", "evaluator"):
        record = json.loads((results / f"{name}.json").read_text())
        assert record["name"] == name and record["quick"] is True
        assert record["cores"] >= 1 and len(record["load_average_before"]) == 3 and record["python"]
        assert record["command"].startswith("python -m bench --quick") and record["date"].endswith("UTC")
        assert all({"name", "target", "value", "met"} <= set(t) for t in record["results"]["targets"])
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "cores" in text
    assert "## 1. Index apply rate" in text and "## 6. Evaluator" in text
    assert text.index("## 1. Index") < text.index("## 6. Evaluator")

    # One benchmark again: the other's stored result still makes its section.
    again = _bench("--quick", "--results-dir", str(results), "--doc", str(doc), "bench_evaluator")
    assert again.returncode == 0, again.stderr
    assert "## 1. Index apply rate" in doc.read_text()


def test_runner_refuses_an_unknown_benchmark_naming_the_known_ones(tmp_path: Path) -> None:
    done = _bench("--results-dir", str(tmp_path), "--doc", str(tmp_path / "b.md"), "nosuch")
    assert done.returncode == 2
    assert "unknown benchmark(s) nosuch" in done.stderr and "index" in done.stderr
    assert not (tmp_path / "b.md").exists()


@pytest.mark.slow
def test_grpc_benchmarks_run_at_quick_shapes(tmp_path: Path) -> None:
    """Snapshot, fan-out and resume: a real server and client worker processes (about a minute on a busy machine)."""
    results = tmp_path / "results"
    done = _bench(
        "--quick", "--results-dir", str(results), "--doc", str(tmp_path / "b.md"), "snapshot", "fanout", "resume"
    )
    assert done.returncode == 0, done.stderr
    snapshot = json.loads((results / "snapshot.json").read_text())["results"]
    assert 0 < snapshot["gzip_bytes_per_pod"] < snapshot["plain_bytes_per_pod"]
    fanout = json.loads((results / "fanout.json").read_text())["results"]
    assert {b["name"] for b in fanout["bursts"]} == {"one batch", "turns of 10"}
    resume = json.loads((results / "resume.json").read_text())["results"]
    assert 0 < resume["resume_bytes"]["median"] < resume["full_bytes"]["median"]
