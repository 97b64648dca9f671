"""`make mutate` samples every module: a module added under meshbreaker/ joins a group of
tools/mutation/groups.py (or its NOT_SAMPLED, with the reason), and the groups name what exists."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "mutation"))  # the driver's modules import each other so

import groups  # noqa: E402


def test_every_module_with_mutation_candidates_is_in_a_group() -> None:
    assert groups.ungrouped(ROOT) == [], (
        "add these modules to a group of tools/mutation/groups.py (the area whose tests cover "
        "them), or to its NOT_SAMPLED with the reason"
    )


def test_a_module_in_no_group_is_found(tmp_path: Path) -> None:
    (tmp_path / "meshbreaker" / "control").mkdir(parents=True)
    (tmp_path / "meshbreaker" / "control" / "newcomer.py").write_text(
        "def f(x):\n    return x < 1\n"
    )
    (tmp_path / "meshbreaker" / "control" / "empty.py").write_text('"""Nothing to mutate."""\n')
    (tmp_path / "meshbreaker" / "v1").mkdir()
    (tmp_path / "meshbreaker" / "v1" / "x_pb2.py").write_text("A = 1 + 2\n")
    assert groups.ungrouped(tmp_path) == ["meshbreaker/control/newcomer.py"]


def test_the_groups_files_and_tests_exist() -> None:
    assert groups.missing(ROOT) == []


def test_each_area_draws_at_least_60_mutants() -> None:
    sizes: dict[str, int] = {}
    for group in groups.GROUPS:
        sizes[group.area] = sizes.get(group.area, 0) + group.size
    assert sizes.keys() == {"engine", "adapters", "control"}
    assert min(sizes.values()) >= 60, sizes
