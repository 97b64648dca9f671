"""The mutation operators: every candidate change in a module's source, and applying one.

Operators (one mutation per mutant, applied to a fresh parse of the original file; the mutated
module is written back with ast.unparse, which is behaviour-preserving):
  cmp      < -> <=, <= -> <, > -> >=, >= -> >, == -> !=, != -> ==   (boundary/negation flip)
  boolop   and <-> or
  arith    + <-> -  (BinOp and augmented assignment)
  int      integer constant n -> n+1 and n -> n-1 (bools excluded)
  bool     True <-> False
  del      simple statement (assign, augassign, expr-call, return, raise, del, assert,
           break, continue) replaced by `pass`
  retnone  `return None` inserted as the first statement of a function body
  unlock   `with <...lock>:` / `async with <...lock>:` removed, body dedented

Skipped: docstrings, logging statements (logger./logging./log. calls, all lines they span),
annotations (arguments, returns, AnnAssign targets; `if TYPE_CHECKING:` blocks; module-level
type aliases / TypeVar), imports, __all__/__slots__ declarations, decorators, bodies consisting
of `...`/pass.
"""

from __future__ import annotations

import ast
import difflib
from typing import Any

# A candidate: {"node": index in ast.walk order, "kind", "arg", "line", "desc", "logsetup"}; a
# mutant (a plan's entry) carries the same keys and where it was drawn from.
Candidate = dict[str, Any]

CMP_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
}
OPSYM: dict[type[ast.AST], str] = {
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
NOT_MUTATED_DECORATORS = {"overload", "typing.overload", "abstractmethod", "abc.abstractmethod"}
Function = ast.FunctionDef | ast.AsyncFunctionDef


def _is_docstring(stmt: ast.stmt, parent: ast.AST, idx: int) -> bool:
    return (
        idx == 0
        and isinstance(parent, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and _is_string(stmt)
    )


def _is_string(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
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
    value = stmt.value
    return isinstance(value, ast.Subscript) or (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id in {"TypeVar", "NewType", "ParamSpec"}
    )


def _is_decl(stmt: ast.stmt) -> bool:
    targets: list[ast.expr] = []
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
    rest = [s for i, s in enumerate(body) if not (i == 0 and _is_string(s))]
    return all(
        isinstance(s, ast.Pass)
        or (
            isinstance(s, ast.Expr)
            and isinstance(s.value, ast.Constant)
            and s.value.value is Ellipsis
        )
        for s in rest
    )


def _lines(node: ast.stmt) -> range:
    return range(node.lineno, (node.end_lineno or node.lineno) + 1)


def _parents(nodes: list[ast.AST]) -> dict[int, tuple[ast.AST, int | None]]:
    """id(node) -> (its parent, its index in the parent's list field or None)."""
    parent_of: dict[int, tuple[ast.AST, int | None]] = {}
    for node in nodes:
        for _field, value in ast.iter_fields(node):
            if isinstance(value, list):
                for i, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        parent_of[id(child)] = (node, i)
            elif isinstance(value, ast.AST):
                parent_of[id(value)] = (node, None)
    return parent_of


def _skipped(nodes: list[ast.AST]) -> tuple[set[int], set[int]]:
    """The ids of nodes never mutated, and the lines never mutated (logging)."""
    parent_of = _parents(nodes)
    skip_nodes: set[int] = set()
    skip_lines: set[int] = set()

    def skip_subtree(node: ast.AST) -> None:
        skip_nodes.update(id(sub) for sub in ast.walk(node))

    for n in nodes:
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
            parent, i = parent_of[id(n)]
            if i is not None and _is_docstring(n, parent, i):
                skip_subtree(n)
            if _is_logging(n):
                skip_subtree(n)
                skip_lines.update(_lines(n))
            if _is_type_alias(n, parent) or _is_decl(n):
                skip_subtree(n)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for decorator in n.decorator_list:
                skip_subtree(decorator)
    return skip_nodes, skip_lines


def candidates(source: str) -> list[Candidate]:
    """Every candidate mutation in `source`."""
    nodes = list(ast.walk(ast.parse(source)))
    index = {id(n): i for i, n in enumerate(nodes)}
    has_parent = _parents(nodes).keys()
    skip_nodes, skip_lines = _skipped(nodes)
    logsetup_lines = {
        line for n in nodes if isinstance(n, ast.stmt) and _is_logger_setup(n) for line in _lines(n)
    }
    out: list[Candidate] = []

    def add(node: ast.AST, kind: str, arg: int | None, line: int, desc: str) -> None:
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
                    flipped = CMP_FLIP[type(op)]
                    desc = f"{OPSYM[type(op)]} -> {OPSYM[flipped]}"
                    add(n, "cmp", i, n.comparators[i].lineno, desc)
        elif isinstance(n, ast.BoolOp):
            word = "or" if isinstance(n.op, ast.And) else "and"
            add(n, "boolop", None, n.values[1].lineno, f"{OPSYM[type(n.op)]} -> {word}")
        elif isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Sub)):
            sign = "-" if isinstance(n.op, ast.Add) else "+"
            add(n, "arith", None, n.right.lineno, f"{OPSYM[type(n.op)]} -> {sign}")
        elif isinstance(n, ast.AugAssign) and isinstance(n.op, (ast.Add, ast.Sub)):
            sign = "-=" if isinstance(n.op, ast.Add) else "+="
            add(n, "arith", None, n.lineno, f"{OPSYM[type(n.op)]}= -> {sign}")
        elif isinstance(n, ast.Constant):
            if isinstance(n.value, bool):
                add(n, "bool", None, n.lineno, f"{n.value} -> {not n.value}")
            elif isinstance(n.value, int):
                add(n, "int", +1, n.lineno, f"{n.value} -> {n.value + 1}")
                add(n, "int", -1, n.lineno, f"{n.value} -> {n.value - 1}")
        if isinstance(n, SIMPLE_STMTS) and id(n) in has_parent:
            bare_constant = isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
            bare_annotation = isinstance(n, ast.AnnAssign) and n.value is None
            if not bare_constant and not bare_annotation:
                add(n, "del", None, n.lineno, "statement -> pass")
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            decorators = {ast.unparse(d) for d in n.decorator_list}
            if not _trivial_body(n.body) and not decorators & NOT_MUTATED_DECORATORS:
                add(n, "retnone", None, n.lineno, "insert `return None` first")
        if isinstance(n, (ast.With, ast.AsyncWith)) and (
            len(n.items) == 1 and _lock_name(n.items[0].context_expr)
        ):
            prefix = "async " if isinstance(n, ast.AsyncWith) else ""
            lock = ast.unparse(n.items[0].context_expr)
            add(n, "unlock", None, n.lineno, f"remove `{prefix}with {lock}:`")
    return out


def _replace_statement(nodes: list[ast.AST], node: ast.stmt, kind: str) -> None:
    """`del`: the statement becomes `pass`; `unlock`: the with-statement becomes its body."""
    for parent in nodes:
        for _field, value in ast.iter_fields(parent):
            if isinstance(value, list) and any(v is node for v in value):
                i = next(k for k, v in enumerate(value) if v is node)
                if kind == "del":
                    value[i] = ast.copy_location(ast.Pass(), node)
                else:
                    assert isinstance(node, (ast.With, ast.AsyncWith))
                    value[i : i + 1] = node.body
                return
    raise ValueError(f"no parent holds the statement to mutate (line {node.lineno})")


def _return_none_first(node: Function) -> None:
    position = 1 if node.body and _is_string(node.body[0]) else 0
    is_async_gen = isinstance(node, ast.AsyncFunctionDef) and any(
        isinstance(x, (ast.Yield, ast.YieldFrom)) for x in ast.walk(node)
    )
    # `return None` is a SyntaxError in an async generator; a bare `return` is the same there.
    node.body.insert(position, ast.Return(None if is_async_gen else ast.Constant(None)))


def apply(source: str, mutant: Candidate) -> str:
    """`source` with the mutation applied, unparsed (and checked to compile)."""
    tree = ast.parse(source)
    nodes = list(ast.walk(tree))
    node = nodes[mutant["node"]]
    kind = mutant["kind"]
    if kind in ("del", "unlock"):
        assert isinstance(node, ast.stmt)
        _replace_statement(nodes, node, kind)
    elif kind == "cmp":
        assert isinstance(node, ast.Compare)
        i = mutant["arg"]
        node.ops[i] = CMP_FLIP[type(node.ops[i])]()
    elif kind == "boolop":
        assert isinstance(node, ast.BoolOp)
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "arith":
        assert isinstance(node, (ast.BinOp, ast.AugAssign))
        node.op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
    elif kind == "int":
        assert isinstance(node, ast.Constant)
        node.value = node.value + mutant["arg"]
    elif kind == "bool":
        assert isinstance(node, ast.Constant)
        node.value = not node.value
    elif kind == "retnone":
        assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        _return_none_first(node)
    else:
        raise ValueError(kind)
    ast.fix_missing_locations(tree)
    new = ast.unparse(tree) + "\n"
    compile(new, "<mutant>", "exec")
    return new


def diff(source: str, mutant: Candidate, name: str) -> str:
    """The mutant as a unified diff against the unparsed original."""
    base = ast.unparse(ast.parse(source)) + "\n"
    new = apply(source, mutant)
    return "".join(
        difflib.unified_diff(
            base.splitlines(True), new.splitlines(True), name, f"{name} (mutant)", n=1
        )
    )
