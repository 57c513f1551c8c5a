"""Regenerate the Python modules under kube_ip_tracker/api/ from protos/ with grpcio-tools.

``python -m kube_ip_tracker.api.generate [OUT_DIR]`` writes into OUT_DIR (default: the project
root, so the modules land in place). The test suite generates into a temporary directory and
compares, so committed code that is stale fails a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = PROJECT_ROOT / "protos"


def proto_files() -> list[Path]:
    """All .proto files under protos/, sorted."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc for every proto file, writing *_pb2.py, *_pb2.pyi and *_pb2_grpc.py into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else PROJECT_ROOT
    generate(out)


if __name__ == "__main__":
    main()
