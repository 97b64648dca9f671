#!/usr/bin/env python3
"""Sampled mutation testing for meshbreaker: draw mutants, run each area's tests against them.

Usage:
  driver.py sample [--src REPO] [--seed N] [--area A] [--workers 2]   (what `make mutate` runs:
        plan, run and summarise a fresh sample into REPO/.mutation/seed-N/; run it again to
        resume; --area engine|adapters|control runs that area's mutants only)
  driver.py plan  --src REPO --seed N --out plan.json
  driver.py plan  --src REPO --seed N --out plan.json --files meshbreaker/registry.py[,...]
        [--size N]   (a module's plan: every eligible line of those files, or N of them;
        run it with --tests to screen against a module's own tests, then recheck the
        survivors against their group's tests)
  driver.py run   --src REPO --plan plan.json --results results.jsonl [--workers 2]
        [--venv REPO/.venv] [--area A]
  driver.py show  --src REPO --plan plan.json ID        (print the mutant's diff)
  driver.py recheck --src REPO --plan plan.json --ids 1,2 --tests "tests ..." --results out.jsonl

The operators are in mutants.py, the groups (files, sizes, tests) in groups.py.

Sampling: per group, eligible lines (those with a candidate) of the group's files are pooled; `n`
distinct lines are drawn uniformly (random.Random(seed + group index)); on each line one
candidate is drawn uniformly among the non-`del` candidates if the line has any, else the `del`
candidate (statement deletion is the fallback operator, so lines with a comparison, boolean
operator, +/-, constant, def or with-lock get that specific mutation).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from groups import GROUPS, Group, missing
from mutants import Candidate, apply, candidates, diff
from summarize import summarize

Mutant = dict[str, Any]  # a plan's entry: a candidate and where it was drawn from


def _entry(
    group: Group, eligible: int, key: tuple[str, int], candidate: Candidate, text: str
) -> Mutant:
    return {
        "group": group.name,
        "area": group.area,
        "file": key[0],
        "line": key[1],
        "kind": candidate["kind"],
        "desc": candidate["desc"],
        "node": candidate["node"],
        "arg": candidate["arg"],
        "source_line": text.splitlines()[key[1] - 1].strip(),
        "tests": group.tests,
        "timeout": group.timeout,
        "eligible_lines_in_group": eligible,
    }


def make_plan(src: Path, seed: int) -> list[Mutant]:
    """Draw the mutants (see the module docstring).

    The draw pool of a group is every line with a candidate, `logger = logging.getLogger(...)`
    lines included (they were in the pool of the first run, and keeping them keeps the draw
    reproducible); a drawn logger line is then marked excluded (a logging line) and replaced by
    a line drawn from the rest of the pool with a second RNG, random.Random(seed + 100 + group
    index). Replacements get ids after the main draw.
    """
    plan: list[Mutant] = []
    replacements: list[Mutant] = []
    for group_index, group in enumerate(GROUPS):
        rng = random.Random(seed + group_index)
        by_line: dict[tuple[str, int], list[Candidate]] = {}
        texts = {name: (src / name).read_text() for name in group.files}
        for name in group.files:
            for candidate in candidates(texts[name]):
                by_line.setdefault((name, candidate["line"]), []).append(candidate)
        lines = sorted(by_line)
        eligible = sum(1 for key in lines if not by_line[key][0]["logsetup"])
        chosen = rng.sample(lines, min(group.size, len(lines)))
        excluded = 0
        for key in sorted(chosen):
            choices = by_line[key]
            candidate = rng.choice([c for c in choices if c["kind"] != "del"] or choices)
            mutant = {"id": len(plan), **_entry(group, eligible, key, candidate, texts[key[0]])}
            if candidate["logsetup"]:
                mutant["excluded"] = "logging line (logger = logging.getLogger)"
                excluded += 1
            plan.append(mutant)
        rng2 = random.Random(seed + 100 + group_index)
        rest = [key for key in lines if key not in set(chosen) and not by_line[key][0]["logsetup"]]
        for key in rng2.sample(rest, excluded):
            choices = by_line[key]
            candidate = rng2.choice([c for c in choices if c["kind"] != "del"] or choices)
            entry = _entry(group, eligible, key, candidate, texts[key[0]])
            replacements.append({**entry, "replaces_logging_line": True})
    for entry in replacements:
        plan.append({"id": len(plan), **entry})
    return plan


def make_file_plan(src: Path, seed: int, files: list[str], size: int | None) -> list[Mutant]:
    """One mutant on every eligible line of `files` (or on `size` of them, drawn uniformly).

    For working through a module, not for rates: the lines are not the area's sample. Each
    mutant carries the tests and time-out of the group holding its file; a line's candidate is
    drawn as make_plan() draws it (random.Random(seed)).
    """
    by_file = {name: group for group in GROUPS for name in group.files}
    unknown = [name for name in files if name not in by_file]
    if unknown:
        raise ValueError(f"in no group of groups.py: {', '.join(unknown)}")
    rng = random.Random(seed)
    by_line: dict[tuple[str, int], list[Candidate]] = {}
    texts = {name: (src / name).read_text() for name in files}
    for name in files:
        for candidate in candidates(texts[name]):
            if not candidate["logsetup"]:
                by_line.setdefault((name, candidate["line"]), []).append(candidate)
    lines = sorted(by_line)
    chosen = lines if size is None else sorted(rng.sample(lines, min(size, len(lines))))
    plan: list[Mutant] = []
    for key in chosen:
        choices = by_line[key]
        candidate = rng.choice([c for c in choices if c["kind"] != "del"] or choices)
        entry = _entry(by_file[key[0]], len(lines), key, candidate, texts[key[0]])
        plan.append({"id": len(plan), **entry})
    return plan


def run_one(
    work: Path,
    venv: Path,
    m: Mutant,
    tests: str | None = None,
    timeout: int | None = None,
) -> dict[str, Any]:
    """Run `m`'s tests (or `tests`) against it in the copy `work`; the copy is restored after.

    The original is the copy's own: the tree the copies were taken from may change meanwhile.
    """
    f = work / m["file"]
    original = f.read_text()
    f.write_text(apply(original, m))
    shutil.rmtree(work / ".hypothesis", ignore_errors=True)
    for pyc in (work / "meshbreaker").rglob("__pycache__"):
        shutil.rmtree(pyc, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
    cmd = [
        str(venv / "bin" / "python"),
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        "--hypothesis-seed=0",
        "--timeout=45",
        *(tests or m["tests"]).split(),
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout or m["timeout"])
        rc = proc.returncode
        outer_timeout = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = -9
        outer_timeout = True
    finally:
        f.write_text(original)
    elapsed = time.monotonic() - t0
    if outer_timeout or "+++++ Timeout +++++" in out or "Failed: Timeout" in out:
        status = "timeout"
    elif rc == 0:
        status = "survived"
    else:
        status = "killed"
    failed = [line.strip() for line in out.splitlines() if line.startswith(("FAILED ", "ERROR "))][
        :3
    ]
    return {
        **{k: m[k] for k in ("id", "group", "area", "file", "line", "kind", "desc", "source_line")},
        "status": status,
        "rc": rc,
        "seconds": round(elapsed, 1),
        "failed": failed,
        "tail": out[-1500:] if status != "survived" else out[-300:],
    }


def _stale(src: Path, todo: list[Mutant]) -> list[str]:
    """The mutants whose line no longer reads as it did when the plan was drawn."""
    texts: dict[str, list[str]] = {}
    stale = []
    for m in todo:
        if m["file"] not in texts:
            path = src / m["file"]
            texts[m["file"]] = path.read_text().splitlines() if path.exists() else []
        lines = texts[m["file"]]
        if len(lines) < m["line"] or lines[m["line"] - 1].strip() != m["source_line"]:
            stale.append(f"{m['file']}:{m['line']}")
    return stale


def _check_imports_from(venv: Path, work: Path) -> None:
    """Refuse to run when the tests would import meshbreaker from elsewhere than the copy."""
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import meshbreaker; print(meshbreaker.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(work.resolve()):
        sys.exit(
            f"meshbreaker is imported from {out}, not from the mutated copy {work}: "
            "check PYTHONPATH and the venv"
        )


def main() -> None:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["sample", "plan", "run", "show", "recheck"])
    ap.add_argument("ids", nargs="?", help="mutant ids, comma-separated (show, recheck)")
    ap.add_argument("--ids", dest="ids_option", help="the same, as an option")
    ap.add_argument("--src", type=Path, default=Path("."))
    ap.add_argument(
        "--seed", type=int, default=None, help="the sample to draw (default: a fresh one)"
    )
    ap.add_argument("--plan", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--results", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--venv", type=Path)
    ap.add_argument("--tests")
    ap.add_argument("--timeout", type=int)
    ap.add_argument("--files", help="plan: only these files (comma-separated), every line")
    ap.add_argument("--size", type=int, help="plan --files: this many lines, not every one")
    ap.add_argument(
        "--area",
        choices=sorted({group.area for group in GROUPS}),
        help="sample, run: only this area's mutants (the plan is drawn whole all the same)",
    )
    a = ap.parse_intermixed_args()  # the ID may follow the options (as the README shows)
    a.ids = a.ids or a.ids_option
    if a.cmd in ("show", "recheck") and not a.ids:
        ap.error(f"{a.cmd} needs the mutant ids (e.g. 3,7)")
    src = a.src.resolve()
    venv = (a.venv or src / ".venv").resolve()
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 1_000_000)
    gone = missing(src)
    if gone and a.cmd in ("sample", "plan"):
        sys.exit(f"groups.py names files that are gone (moved code?): {', '.join(gone)}")
    if a.cmd == "sample":
        out = src / ".mutation" / f"seed-{a.seed}"
        out.mkdir(parents=True, exist_ok=True)
        a.plan, a.results = out / "plan.json", out / "results.jsonl"
        if not a.plan.exists():
            a.plan.write_text(
                json.dumps({"seed": a.seed, "mutants": make_plan(src, a.seed)}, indent=1)
            )
        print(f"seed {a.seed}: plan, results and summary in {out}", flush=True)
        run(src, venv, a, "run")
        text = summarize(a.plan, a.results, Path(__file__).with_name("equivalent.txt"))
        (out / "summary.txt").write_text(text)
        print(text)
        return
    if a.cmd == "plan":
        if a.files:
            plan = make_file_plan(src, a.seed, a.files.split(","), a.size)
        else:
            plan = make_plan(src, a.seed)
        a.out.write_text(json.dumps({"seed": a.seed, "mutants": plan}, indent=1))
        print(f"{len(plan)} mutants -> {a.out}")
        return
    if a.cmd == "show":
        plan = json.loads(a.plan.read_text())["mutants"]
        by_id = {m["id"]: m for m in plan}
        for i in a.ids.split(","):
            m = by_id[int(i)]
            print(f"# mutant {m['id']}: {m['file']}:{m['line']} {m['kind']} {m['desc']}")
            print(diff((src / m["file"]).read_text(), m, m["file"]))
        return
    run(src, venv, a, a.cmd)


def run(src: Path, venv: Path, a: argparse.Namespace, cmd: str) -> None:
    """Run the plan's mutants (cmd "run": all not yet in the results; "recheck": a.ids)."""
    plan = json.loads(a.plan.read_text())["mutants"]
    by_id = {m["id"]: m for m in plan}
    todo = (
        [m for m in plan if not m.get("excluded") and a.area in (None, m["area"])]
        if cmd == "run"
        else [by_id[int(i)] for i in a.ids.split(",")]
    )
    done = set()
    if a.results.exists() and cmd == "run":
        results = a.results.read_text().splitlines()
        done = {json.loads(line)["id"] for line in results if line.strip()}
    todo = [m for m in todo if m["id"] not in done]
    stale = _stale(src, todo)
    if stale:
        sys.exit(
            f"the tree changed since the plan was drawn ({', '.join(stale[:3])}): "
            "draw a new plan (a fresh seed), or run it on the tree it was drawn from"
        )
    # Private copies (several runs may share a machine): mutants are written there, never in src.
    scratch = Path(tempfile.mkdtemp(prefix="meshbreaker-mutate-"))
    workdirs = []
    for w in range(a.workers):
        wd = scratch / f"work{w}"
        shutil.copytree(
            src,
            wd,
            ignore=shutil.ignore_patterns(
                ".venv",
                ".git",
                "__pycache__",
                ".hypothesis",
                ".mypy_cache",
                ".ruff_cache",
                ".pytest_cache",
                "*.db",
                "*.db-*",
            ),
        )
        _check_imports_from(venv, wd)
        workdirs.append(wd)
    free = list(workdirs)
    lock = threading.Lock()

    def job(m: Mutant) -> dict[str, Any]:
        with lock:
            wd = free.pop()
        try:
            return run_one(wd, venv, m, a.tests, a.timeout)
        finally:
            with lock:
                free.append(wd)

    try:
        with cf.ThreadPoolExecutor(a.workers) as ex, a.results.open("a") as fh:
            for r in ex.map(job, todo):
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                print(
                    f"[{r['id']:3}] {r['status']:8} {r['seconds']:5}s {r['file']}:{r['line']} "
                    f"{r['kind']} {r['desc']} | {r['source_line'][:70]}",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
