"""The mutation driver's module plans (`plan --files`): every eligible line of a module, once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "mutation"))  # the driver's modules import each other so

import driver  # noqa: E402
import groups  # noqa: E402

MODULE = "meshbreaker/_quick.py"  # any file of a group: the plan takes that group's tests
SOURCE = '''"""A module."""
import logging

logger = logging.getLogger(__name__)


def f(x):
    logger.info("x %s", x)
    y = x + 1
    return y < 2 and x > 0
'''


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tree holding one small module under a grouped name."""
    (tmp_path / "meshbreaker").mkdir()
    (tmp_path / MODULE).write_text(SOURCE)
    return tmp_path


def test_a_module_plan_has_one_mutant_on_each_eligible_line(tree: Path) -> None:
    plan = driver.make_file_plan(tree, 7, [MODULE], None)
    group = next(group for group in groups.GROUPS if MODULE in group.files)
    assert [(m["id"], m["line"]) for m in plan] == [(0, 7), (1, 9), (2, 10)]  # no logging line
    assert {(m["file"], m["tests"]) for m in plan} == {(MODULE, group.tests)}
    assert driver.make_file_plan(tree, 7, [MODULE], None) == plan  # the seed redraws it


def test_a_module_plan_of_a_given_size_draws_that_many_lines(tree: Path) -> None:
    lines = [m["line"] for m in driver.make_file_plan(tree, 7, [MODULE], 2)]
    assert len(lines) == 2 and lines == sorted(lines) and set(lines) <= {7, 9, 10}


def test_a_module_in_no_group_has_no_plan(tree: Path) -> None:
    with pytest.raises(ValueError, match=r"meshbreaker/nowhere\.py"):
        driver.make_file_plan(tree, 7, ["meshbreaker/nowhere.py"], None)
