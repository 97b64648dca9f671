"""The README's commands work as written, and the Makefile says what it is doing.

A new user copies commands from the README after `make test`; each `meshbreaker` line of its shell
blocks must be one the parser accepts, and the README must say how the commands get on the PATH.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from meshbreaker.cli import build_parser, main, policy_message
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.server_support import ControlPlane

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SHELL_BLOCKS = re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)
ACTIVATE = ". .venv/bin/activate"
SHELL_OPERATORS = {">", ">>", "|", "&&", "||", ";", "<"}  # where the command's own words end


def commands(program: str) -> list[str]:
    """The lines of the README's shell blocks that run `program`, without comments or `&`."""
    found = []
    for block in SHELL_BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():  # continued lines joined
            line = line.split("  #", 1)[0].strip().removesuffix("&").strip()
            if line.startswith(f"{program} "):
                found.append(line)
    return found


def test_the_readme_says_how_its_commands_become_runnable() -> None:
    first_use = re.search(r"^(meshbreaker |python -m examples)", README, flags=re.MULTILINE)
    assert first_use is not None
    assert 0 <= README.find(ACTIVATE) < first_use.start()
    assert "make test" in README[: README.find(ACTIVATE)]


@pytest.mark.parametrize("line", commands("meshbreaker"))
def test_every_meshbreaker_command_in_the_readme_parses(line: str) -> None:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(itertools.takewhile(lambda word: word not in SHELL_OPERATORS, lexer))
    try:
        build_parser().parse_args(words[1:])
    except SystemExit as exit_:
        assert exit_.code == 0, f"the README's `{line}` is refused"


def test_the_readme_has_cli_commands_to_check() -> None:
    assert len(commands("meshbreaker")) >= 10


def make_dry_run(target: str) -> str:
    """What `make TARGET` would run in a clone without .venv (make -n runs nothing)."""
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, "VENV=/nonexistent/venv"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def test_make_says_what_it_is_doing() -> None:
    demo = make_dry_run("demo")
    assert "Installing meshbreaker and its development tools" in demo  # the silent minute
    assert "make demo: starting the banking mesh" in demo
    assert "several minutes" in make_dry_run("bench")
    assert "python -m bench --quick" in make_dry_run("bench-quick")


def test_the_documented_policy_file_is_accepted() -> None:
    (example,) = re.findall(r"```json\n(.*?)```", README, flags=re.DOTALL)
    policies = [policy_message(entry) for entry in json.loads(example)["policies"]]
    audit, pin = policies
    assert audit.selector.caller == "gateway" and audit.config.consecutive_failures == 3
    assert audit.config.slow_calls_disabled and list(audit.config.failure_codes.codes) == [
        "INTERNAL",
        "UNAVAILABLE",
    ]
    assert not pin.HasField("config") and pin.override == pb.OVERRIDE_FORCED_OPEN


CLI_TOUR_START = (
    "meshbreaker control-plane --port 7070 --db meshbreaker.db --admin-token secret-admin &\n"
)


def cli_tour() -> list[str]:
    """The README's CLI block after its control-plane line: each command, as a user runs them."""
    (block,) = (block for block in SHELL_BLOCKS if block.startswith(CLI_TOUR_START))
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()[1:]]
    return [line for line in lines if line.startswith("meshbreaker ")]


def test_the_readme_cli_tour_runs_in_order_against_a_control_plane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = ControlPlane(tmp_path / "meshbreaker.db", admin_token="secret-admin")
    monkeypatch.setenv("MESHBREAKER_TARGET", plane.target)
    monkeypatch.setenv("MESHBREAKER_TOKEN", "secret-admin")
    try:
        tour = cli_tour()
        # Live views run until Ctrl-C; test_live.py runs those in a terminal.
        ran = [line for line in tour if "--watch" not in line and "--follow" not in line]
        assert len(ran) >= 10 and ran[-1].startswith("meshbreaker policy delete")
        for line in ran:
            assert main(shlex.split(line)[1:]) == 0, f"the README's `{line}` failed"
    finally:
        plane.close()
