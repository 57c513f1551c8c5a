"""The committed generated gRPC/protobuf modules must match protos/."""

from pathlib import Path

from kube_ip_tracker.api import generate


def test_generated_modules_are_current(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*") if p.is_file())
    assert fresh, "protoc produced nothing"
    for rel in fresh:
        committed = generate.PROJECT_ROOT / rel
        assert committed.exists(), f"{rel} is missing: run 'make proto'"
        assert committed.read_text() == (tmp_path / rel).read_text(), f"{rel} is stale: run 'make proto'"
