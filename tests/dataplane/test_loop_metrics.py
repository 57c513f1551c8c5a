"""The lock-free per-packet metrics are exposed like prometheus_client's own."""

from __future__ import annotations

import secrets

import pytest
from prometheus_client import REGISTRY, generate_latest

from kube_ip_tracker.agent.dataplane.loop_metrics import LoopCounter, LoopHistogram


def test_counter_exposes_total_per_label_set() -> None:
    name = f"kipt_test_{secrets.token_hex(3)}_total"
    counter = LoopCounter(name, "a test counter", ["queue", "result"])
    counter.labels("1", "accept").inc()
    counter.labels("1", "accept").inc(2)
    counter.labels(1, "drop").value += 1  # the hot path's form; labels are strings like prometheus_client's
    assert REGISTRY.get_sample_value(name, {"queue": "1", "result": "accept"}) == 3
    assert REGISTRY.get_sample_value(name, {"queue": "1", "result": "drop"}) == 1
    assert f'{name}{{queue="1",result="accept"}} 3.0' in generate_latest(REGISTRY).decode()
    with pytest.raises(ValueError, match="expected labels"):
        counter.labels("1")


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    name = f"kipt_test_{secrets.token_hex(3)}_seconds"
    histogram = LoopHistogram(name, "a test histogram", ["queue"], buckets=(0.001, 0.01))
    child = histogram.labels("7")
    for seconds in (0.0005, 0.001, 0.005, 2.0):
        child.observe(seconds)

    def bucket(le: str) -> float | None:
        return REGISTRY.get_sample_value(f"{name}_bucket", {"queue": "7", "le": le})

    assert (bucket("0.001"), bucket("0.01"), bucket("+Inf")) == (2, 3, 4)  # le: less than or equal
    assert REGISTRY.get_sample_value(f"{name}_count", {"queue": "7"}) == 4
    assert REGISTRY.get_sample_value(f"{name}_sum", {"queue": "7"}) == pytest.approx(2.0065)
