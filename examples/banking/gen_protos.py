"""Regenerate examples/banking/gen/ from examples/banking/protos/ (run by `make proto`)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTOS = ("bank.proto", "chaos.proto")


def generate(out_dir: Path = ROOT) -> None:
    """Compile the banking protos so they import as `examples.banking.gen.<name>_pb2`."""
    include = protoc.__file__.rsplit("/", 1)[0] + "/_proto"
    # Mapping the protos dir onto the virtual path examples/banking/gen makes protoc emit
    # package-qualified imports, so no sys.path tricks are needed at import time.
    args = [
        "grpc_tools.protoc",
        f"-I{include}",
        f"-Iexamples/banking/gen={HERE / 'protos'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={Path(sys.executable).parent / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(f"examples/banking/gen/{name}" for name in PROTOS),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit status {code}")
    init = out_dir / "examples" / "banking" / "gen" / "__init__.py"
    init.parent.mkdir(parents=True, exist_ok=True)
    if not init.exists():
        init.write_text(
            '"""Generated from examples/banking/protos; regenerate with make proto."""\n'
        )


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
