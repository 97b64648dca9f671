#!/usr/bin/env python3
"""Small AST mutation-testing driver for meshbreaker.

Usage:
  driver.py sample [--src REPO] [--seed N] [--workers 2]   (what `make mutate` runs: plan, run and
        summarise a fresh sample into REPO/.mutation/seed-N/; run it again to resume)
  driver.py plan  --src REPO --seed N --out plan.json
  driver.py run   --src REPO --plan plan.json --results results.jsonl [--workers 2] [--venv REPO/.venv]
  driver.py show  --src REPO --plan plan.json ID        (print the mutant's diff)
  driver.py recheck --src REPO --plan plan.json --ids 1,2 --tests "tests ..." --results out.jsonl

Operators (one mutation per mutant, applied to a fresh parse of the original file; the
mutated module is written back with ast.unparse, which is behaviour-preserving):
  cmp      < -> <=, <= -> <, > -> >=, >= -> >, == -> !=, != -> ==   (boundary/negation flip)
  boolop   and <-> or
  arith    + <-> -  (BinOp and augmented assignment)
  int      integer constant n -> n+1 and n -> n-1 (bools excluded)
  bool     True <-> False
  del      simple statement (assign, augassign, expr-call, return, raise, del, assert,
           break, continue) replaced by `pass`
  retnone  `return None` inserted as the first statement of a function body
  unlock   `with <...lock>:` / `async with <...lock>:` removed, body dedented

Eligible lines: a line is eligible if at least one candidate maps to it. Skipped: docstrings,
logging statements (logger./logging./log. calls, all lines they span), annotations (arguments,
returns, AnnAssign targets; `if TYPE_CHECKING:` blocks; module-level type aliases / TypeVar),
imports, __all__/__slots__ declarations, bodies consisting of `...`/pass.
Sampling: per group, eligible lines of the group's files are pooled; `n` distinct lines are
drawn uniformly (random.Random(seed + group index)); on each line one candidate is drawn
uniformly among the non-`del` candidates if the line has any, else the `del` candidate
(statement deletion is the fallback operator, so lines with a comparison, boolean operator,
+/-, constant, def or with-lock get that specific mutation).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import difflib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINE_TESTS = (
    "tests/test_breaker.py tests/test_window.py tests/test_config.py tests/test_registry.py "
    "tests/test_decorate.py tests/test_model.py tests/test_concurrency.py tests/test_histogram.py "
    "tests/test_events_and_controls.py tests/test_open_periods.py tests/test_throttle.py "
    "tests/test_retry.py tests/test_bulkhead.py tests/test_adaptive_concurrency.py "
    "tests/control/test_agent_failstatic.py"  # Backoff's tests (the agent's reconnects)
)
ADAPTER_TESTS = "tests/contract tests/grpc tests/aio"
AGENT_TESTS = (
    "tests/control/test_agent.py tests/control/test_agent_cache.py tests/control/test_agent_failover.py "
    "tests/control/test_agent_failstatic.py tests/control/test_agent_status.py "
    "tests/control/test_report_binding.py tests/control/test_safe_defaults.py "
    "tests/control/test_agent_lifecycle.py tests/control/test_tls.py"
)
# The plane's tests, the slow token/validation files last (with -x a detected mutant stops early).
PLANE_TESTS = (
    "tests/control/test_server.py tests/control/test_server_edges.py tests/control/test_bounds.py tests/control/test_replicas.py "
    "tests/control/test_layers.py tests/control/test_metrics.py tests/control/test_transition_log.py "
    "tests/control/test_store_identity.py tests/control/test_store_contract.py "
    "tests/control/test_store_sqlite.py tests/control/test_report_binding.py "
    "tests/control/test_safe_defaults.py tests/control/test_tls.py tests/control/test_validation.py"
)
# Each group: name, area, files, sample size, tests run against each mutant, outer time-out (s).
# The outer time-out is generous: on a shared machine a slow survivor must not pass for "detected".
# Keep the files in step with the code when modules move; at least 60 mutants per area.
GROUPS = [
    (
        "breaker+window",
        "engine",
        [
            "meshbreaker/breaker.py",
            "meshbreaker/_machine.py",
            "meshbreaker/_admission.py",
            "meshbreaker/_permit.py",
            "meshbreaker/window.py",
        ],
        40,
        ENGINE_TESTS,
        400,
    ),
    (
        "registry+config",
        "engine",
        [
            "meshbreaker/registry.py",
            "meshbreaker/config.py",
            "meshbreaker/_quick.py",
            "meshbreaker/_backoff.py",
        ],
        20,
        ENGINE_TESTS,
        400,
    ),
    (
        "adapters",
        "adapters",
        [
            "meshbreaker/_adapter/fallback.py",
            "meshbreaker/_adapter/guard.py",
            "meshbreaker/_adapter/rejection.py",
            "meshbreaker/_adapter/retrying.py",
            "meshbreaker/_adapter/tracking.py",
            "meshbreaker/grpc/_calls.py",
            "meshbreaker/grpc/interceptor.py",
            "meshbreaker/aio/_calls.py",
            "meshbreaker/aio/interceptors.py",
        ],
        60,
        ADAPTER_TESTS,
        400,
    ),
    (
        "agent",
        "control",
        [
            "meshbreaker/control/agent.py",
            "meshbreaker/control/agent_cache.py",
            "meshbreaker/control/agent_link.py",
            "meshbreaker/control/agent_loop.py",
        ],
        20,
        AGENT_TESTS,
        600,
    ),
    (
        "plane",
        "control",
        [
            "meshbreaker/control/server.py",
            "meshbreaker/control/servicer.py",
            "meshbreaker/control/instances.py",
            "meshbreaker/control/policies.py",
            "meshbreaker/control/writes.py",
            "meshbreaker/control/convert.py",
            "meshbreaker/control/validate.py",
            "meshbreaker/control/store/sqlite.py",
        ],
        40,
        PLANE_TESTS,
        900,
    ),
]

CMP_FLIP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
}
OPSYM = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Add: "+",
    ast.Sub: "-",
    ast.And: "and",
    ast.Or: "or",
}
SIMPLE_STMTS = (
    ast.Assign,
    ast.AugAssign,
    ast.AnnAssign,
    ast.Expr,
    ast.Return,
    ast.Raise,
    ast.Delete,
    ast.Assert,
    ast.Break,
    ast.Continue,
)
LOG_ROOTS = {"logger", "logging", "log", "_log", "_logger", "LOG", "LOGGER"}


def _is_docstring(stmt: ast.stmt, parent: ast.AST, idx: int) -> bool:
    return (
        idx == 0
        and isinstance(parent, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _is_logging(stmt: ast.stmt) -> bool:
    if not isinstance(stmt, ast.Expr) or not isinstance(stmt.value, ast.Call):
        return False
    func = stmt.value.func
    while isinstance(func, ast.Attribute):
        func = func.value
    return isinstance(func, ast.Name) and func.id in LOG_ROOTS


def _is_logger_setup(stmt: ast.stmt) -> bool:
    """`logger = logging.getLogger(...)`: a logging line."""
    return (
        isinstance(stmt, ast.Assign)
        and isinstance(stmt.value, ast.Call)
        and ast.unparse(stmt.value.func) in {"logging.getLogger", "getLogger"}
    )


def _is_type_alias(stmt: ast.stmt, parent: ast.AST) -> bool:
    if not isinstance(parent, ast.Module) or not isinstance(stmt, ast.Assign):
        return False
    v = stmt.value
    if isinstance(v, ast.Subscript):
        return True
    if (
        isinstance(v, ast.Call)
        and isinstance(v.func, ast.Name)
        and v.func.id in {"TypeVar", "NewType", "ParamSpec"}
    ):
        return True
    return False


def _is_decl(stmt: ast.stmt) -> bool:
    targets = []
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, ast.AnnAssign):
        targets = [stmt.target]
    return any(isinstance(t, ast.Name) and t.id in {"__all__", "__slots__"} for t in targets)


def _lock_name(expr: ast.expr) -> bool:
    if isinstance(expr, ast.Name):
        return "lock" in expr.id.lower()
    if isinstance(expr, ast.Attribute):
        return "lock" in expr.attr.lower()
    return False


def _trivial_body(body: list[ast.stmt]) -> bool:
    rest = [
        s
        for i, s in enumerate(body)
        if not (
            i == 0
            and isinstance(s, ast.Expr)
            and isinstance(s.value, ast.Constant)
            and isinstance(s.value.value, str)
        )
    ]
    return all(
        isinstance(s, ast.Pass)
        or (
            isinstance(s, ast.Expr)
            and isinstance(s.value, ast.Constant)
            and s.value.value is Ellipsis
        )
        for s in rest
    )


def candidates(source: str) -> list[dict]:
    """Every candidate mutation in `source`: {node, kind, arg, line, desc}."""
    tree = ast.parse(source)
    nodes = list(ast.walk(tree))
    index = {id(n): i for i, n in enumerate(nodes)}
    skip_nodes: set[int] = set()  # ids of nodes whose subtrees are excluded
    skip_lines: set[int] = set()
    parent_of: dict[int, tuple[ast.AST, str, int | None]] = {}
    for n in nodes:
        for field, value in ast.iter_fields(n):
            if isinstance(value, list):
                for i, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        parent_of[id(child)] = (n, field, i)
            elif isinstance(value, ast.AST):
                parent_of[id(value)] = (n, field, None)

    def skip_subtree(node: ast.AST) -> None:
        for sub in ast.walk(node):
            skip_nodes.add(id(sub))

    for n in nodes:
        # annotations
        if isinstance(n, ast.arg) and n.annotation is not None:
            skip_subtree(n.annotation)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns is not None:
            skip_subtree(n.returns)
        if isinstance(n, ast.AnnAssign):
            skip_subtree(n.annotation)
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            skip_subtree(n)
        if (
            isinstance(n, ast.If)
            and isinstance(n.test, (ast.Name, ast.Attribute))
            and "TYPE_CHECKING" in ast.unparse(n.test)
        ):
            skip_subtree(n)
        if isinstance(n, ast.stmt) and id(n) in parent_of:
            parent, field, i = parent_of[id(n)]
            if i is not None and _is_docstring(n, parent, i):
                skip_subtree(n)
            if _is_logging(n):
                skip_subtree(n)
                skip_lines.update(range(n.lineno, n.end_lineno + 1))
            if _is_type_alias(n, parent) or _is_decl(n):
                skip_subtree(n)
        # decorators: not mutated
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for d in n.decorator_list:
                skip_subtree(d)

    logsetup_lines: set[int] = set()
    for n in nodes:
        if isinstance(n, ast.stmt) and _is_logger_setup(n):
            logsetup_lines.update(range(n.lineno, n.end_lineno + 1))

    out: list[dict] = []

    def add(node: ast.AST, kind: str, arg, line: int, desc: str) -> None:
        if id(node) in skip_nodes or line in skip_lines:
            return
        out.append(
            {
                "node": index[id(node)],
                "kind": kind,
                "arg": arg,
                "line": line,
                "desc": desc,
                "logsetup": line in logsetup_lines,
            }
        )

    for n in nodes:
        if isinstance(n, ast.Compare):
            for i, op in enumerate(n.ops):
                if type(op) in CMP_FLIP:
                    new = CMP_FLIP[type(op)]
                    add(n, "cmp", i, n.comparators[i].lineno, f"{OPSYM[type(op)]} -> {OPSYM[new]}")
        elif isinstance(n, ast.BoolOp):
            new = "or" if isinstance(n.op, ast.And) else "and"
            add(n, "boolop", None, n.values[1].lineno, f"{OPSYM[type(n.op)]} -> {new}")
        elif isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Sub)):
            new = "-" if isinstance(n.op, ast.Add) else "+"
            add(n, "arith", None, n.right.lineno, f"{OPSYM[type(n.op)]} -> {new}")
        elif isinstance(n, ast.AugAssign) and isinstance(n.op, (ast.Add, ast.Sub)):
            new = "-=" if isinstance(n.op, ast.Add) else "+="
            add(n, "arith", None, n.lineno, f"{OPSYM[type(n.op)]}= -> {new}")
        elif isinstance(n, ast.Constant):
            if isinstance(n.value, bool):
                add(n, "bool", None, n.lineno, f"{n.value} -> {not n.value}")
            elif isinstance(n.value, int):
                add(n, "int", +1, n.lineno, f"{n.value} -> {n.value + 1}")
                add(n, "int", -1, n.lineno, f"{n.value} -> {n.value - 1}")
        if isinstance(n, SIMPLE_STMTS) and id(n) in parent_of:
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant):
                pass  # bare strings / ellipsis
            elif isinstance(n, ast.AnnAssign) and n.value is None:
                pass
            else:
                add(n, "del", None, n.lineno, "statement -> pass")
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            decos = {ast.unparse(d) for d in n.decorator_list}
            if not _trivial_body(n.body) and not decos & {
                "overload",
                "typing.overload",
                "abstractmethod",
                "abc.abstractmethod",
            }:
                add(n, "retnone", None, n.lineno, "insert `return None` first")
        if isinstance(n, (ast.With, ast.AsyncWith)):
            if len(n.items) == 1 and _lock_name(n.items[0].context_expr):
                add(
                    n,
                    "unlock",
                    None,
                    n.lineno,
                    f"remove `{'async ' if isinstance(n, ast.AsyncWith) else ''}with {ast.unparse(n.items[0].context_expr)}:`",
                )
    return out


def apply(source: str, cand: dict) -> str:
    tree = ast.parse(source)
    nodes = list(ast.walk(tree))
    node = nodes[cand["node"]]
    kind = cand["kind"]
    if kind in ("del", "unlock"):
        # find the parent list holding node
        for p in nodes:
            for field, value in ast.iter_fields(p):
                if isinstance(value, list) and any(v is node for v in value):
                    i = next(k for k, v in enumerate(value) if v is node)
                    if kind == "del":
                        value[i] = ast.copy_location(ast.Pass(), node)
                    else:
                        value[i : i + 1] = node.body
                    break
            else:
                continue
            break
    elif kind == "cmp":
        i = cand["arg"]
        node.ops[i] = CMP_FLIP[type(node.ops[i])]()
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "arith":
        node.op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
    elif kind == "int":
        node.value = node.value + cand["arg"]
    elif kind == "bool":
        node.value = not node.value
    elif kind == "retnone":
        pos = (
            1
            if (
                node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
                and isinstance(node.body[0].value.value, str)
            )
            else 0
        )
        is_async_gen = isinstance(node, ast.AsyncFunctionDef) and any(
            isinstance(x, (ast.Yield, ast.YieldFrom)) for x in ast.walk(node)
        )
        # `return None` is a SyntaxError in an async generator; a bare `return` is the same there.
        node.body.insert(pos, ast.Return(None if is_async_gen else ast.Constant(None)))
    else:
        raise ValueError(kind)
    ast.fix_missing_locations(tree)
    new = ast.unparse(tree) + "\n"
    compile(new, "<mutant>", "exec")
    return new


def make_plan(src: Path, seed: int) -> list[dict]:
    """Draw the mutants (see module docstring).

    The draw pool of a group is every line with a candidate, `logger = logging.getLogger(...)`
    lines included (they were in the pool of the first run, and keeping them keeps the draw
    reproducible); a drawn logger line is then marked excluded (a logging line) and replaced by
    a line drawn from the rest of the pool with a second RNG, random.Random(seed + 100 + group
    index). Replacements get ids after the main draw.
    """
    plan = []
    replacements = []
    mid = 0
    for gi, (gname, area, files, n, tests, tmo) in enumerate(GROUPS):
        rng = random.Random(seed + gi)
        by_line: dict[tuple[str, int], list[dict]] = {}
        for f in files:
            text = (src / f).read_text()
            for c in candidates(text):
                by_line.setdefault((f, c["line"]), []).append(c)
        lines = sorted(by_line)
        chosen = rng.sample(lines, min(n, len(lines)))

        def entry(key, c, text):
            return {
                "group": gname,
                "area": area,
                "file": key[0],
                "line": key[1],
                "kind": c["kind"],
                "desc": c["desc"],
                "node": c["node"],
                "arg": c["arg"],
                "source_line": text.splitlines()[key[1] - 1].strip(),
                "tests": tests,
                "timeout": tmo,
                "eligible_lines_in_group": sum(1 for k in lines if not by_line[k][0]["logsetup"]),
            }

        excluded = 0
        for key in sorted(chosen, key=lambda k: (k[0], k[1])):
            cands = by_line[key]
            specific = [c for c in cands if c["kind"] != "del"]
            c = rng.choice(specific or cands)
            text = (src / key[0]).read_text()
            e = {"id": mid, **entry(key, c, text)}
            if c["logsetup"]:
                e["excluded"] = "logging line (logger = logging.getLogger)"
                excluded += 1
            plan.append(e)
            mid += 1
        rng2 = random.Random(seed + 100 + gi)
        rest = [k for k in lines if k not in set(chosen) and not by_line[k][0]["logsetup"]]
        for key in rng2.sample(rest, excluded):
            cands = by_line[key]
            specific = [c for c in cands if c["kind"] != "del"]
            c = rng2.choice(specific or cands)
            text = (src / key[0]).read_text()
            replacements.append({**entry(key, c, text), "replaces_logging_line": True})
    for e in replacements:
        plan.append({"id": mid, **e})
        mid += 1
    return plan


def mutant_diff(src: Path, m: dict) -> str:
    text = (src / m["file"]).read_text()
    base = ast.unparse(ast.parse(text)) + "\n"
    new = apply(text, m)
    return "".join(
        difflib.unified_diff(
            base.splitlines(True), new.splitlines(True), m["file"], m["file"] + " (mutant)", n=1
        )
    )


def run_one(
    src: Path, work: Path, venv: Path, m: dict, tests: str | None = None, timeout: int | None = None
) -> dict:
    f = work / m["file"]
    original = (src / m["file"]).read_text()
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
    failed = [l.strip() for l in out.splitlines() if l.startswith(("FAILED ", "ERROR "))][:3]
    return {
        **{k: m[k] for k in ("id", "group", "area", "file", "line", "kind", "desc", "source_line")},
        "status": status,
        "rc": rc,
        "seconds": round(elapsed, 1),
        "failed": failed,
        "tail": out[-1500:] if status != "survived" else out[-300:],
    }


def _check_imports_from(venv: Path, work: Path) -> None:
    """Refuse to run when the tests would import meshbreaker from elsewhere than the mutated copy."""
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
            f"meshbreaker is imported from {out}, not from the mutated copy {work}: check PYTHONPATH and the venv"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["sample", "plan", "run", "show", "recheck"])
    ap.add_argument("ids", nargs="?")
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
    a = ap.parse_args()
    src = a.src.resolve()
    venv = (a.venv or src / ".venv").resolve()
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 1_000_000)
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
        from summarize import summarize

        text = summarize(a.plan, a.results, Path(__file__).with_name("equivalent.txt"))
        (out / "summary.txt").write_text(text)
        print(text)
        return
    if a.cmd == "plan":
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
            print(mutant_diff(src, m))
        return
    run(src, venv, a, a.cmd)


def run(src: Path, venv: Path, a: argparse.Namespace, cmd: str) -> None:
    """Run the plan's mutants (cmd "run": all not yet in the results; "recheck": a.ids)."""
    plan = json.loads(a.plan.read_text())["mutants"]
    by_id = {m["id"]: m for m in plan}
    todo = (
        [m for m in plan if not m.get("excluded")]
        if cmd == "run"
        else [by_id[int(i)] for i in a.ids.split(",")]
    )
    done = set()
    if a.results.exists() and cmd == "run":
        done = {json.loads(l)["id"] for l in a.results.read_text().splitlines() if l.strip()}
    todo = [m for m in todo if m["id"] not in done]
    # Private copies (several runs may share a machine): the mutants are written there, never in src.
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
    import threading

    lock = threading.Lock()

    def job(m):
        with lock:
            wd = free.pop()
        try:
            return run_one(src, wd, venv, m, a.tests, a.timeout)
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
