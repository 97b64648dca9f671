"""The committed generated code matches examples/banking/protos (regenerate: make proto)."""

from __future__ import annotations

from pathlib import Path

from examples.banking import gen_protos

GEN = Path(gen_protos.__file__).resolve().parent / "gen"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    gen_protos.generate(tmp_path)
    fresh = tmp_path / "examples" / "banking" / "gen"
    names = sorted(p.name for p in fresh.iterdir() if p.suffix in (".py", ".pyi"))
    assert names == sorted(p.name for p in GEN.iterdir() if p.suffix in (".py", ".pyi"))
    stale = [n for n in names if (fresh / n).read_bytes() != (GEN / n).read_bytes()]
    assert not stale, f"stale generated files {stale}: run `make proto`"
