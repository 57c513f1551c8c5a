"""bench/bench_dataplane.py at its quick shape: every mode measures real connections through real rules."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bench import bench_dataplane

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_quick_run_measures_every_mode_and_leaves_no_rules() -> None:
    results = bench_dataplane.run(quick=True)
    for protocol in bench_dataplane.PROTOCOLS:
        for mode in bench_dataplane.MODES:
            summary = results["summary"][protocol][mode.name]
            assert summary["connections"] > 0, (protocol, mode.name)
            assert summary["p50_us"] <= summary["p99_us"]
            assert (summary["agent_cpu_ms_per_1000"] > 0) == mode.agent, (protocol, mode.name)
    assert results["profile"]["rows"], "the queue path profile is empty"
    assert results["targets"]
    text = bench_dataplane.markdown(results)
    assert "## Dataplane: new connections" in text and "| TCP | no rules |" in text
    assert "Verdict log overhead" in text  # first-seen with --log-verdicts=all beside off
    if shutil.which("perf"):  # syscalls of the agent per connection, counted by perf stat
        assert results["summary"]["tcp"]["cache off"]["agent_syscalls_per_conn"] > 0
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert "kipb-" not in tables
