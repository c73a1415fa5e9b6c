"""Generate the Python gRPC/protobuf modules for every .proto under protos/ (one command).

    python -m protos.generate        # or: make protos

The modules are written next to their .proto files and imported as `protos.<path>`, for example
`protos.inference.grpc_service_pb2`. They are build outputs (git-ignored); `make` rebuilds them
whenever a .proto changes, so a fresh clone works with the two README commands.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# protoc writes `from inference import x_pb2`; the generated code lives in the `protos` package.
_IMPORT = re.compile(r"^(from|import) (inference|seqserve)([. ])", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.proto"))


def generate() -> list[Path]:
    from grpc_tools import protoc  # build-time only (grpcio-tools)

    sources = [str(p.relative_to(ROOT)) for p in proto_files()]
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(ROOT.rglob("*_pb2*.py*"))
    for path in written:
        text = path.read_text()
        fixed = _IMPORT.sub(lambda m: f"{m[1]} protos.{m[2]}{m[3]}", text)
        if fixed != text:
            path.write_text(fixed)
    return written


if __name__ == "__main__":
    files = generate()
    print(f"generated {len(files)} files under {ROOT}", file=sys.stderr)
