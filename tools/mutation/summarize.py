"""Summarise a mutation run: detection rates per area/group/operator, equivalents set apart.

    python3 tools/mutation/summarize.py PLAN.json RESULTS.jsonl [EQUIVALENT.txt]

A survivor matching an entry of equivalent.txt (file, the mutated line's text, the operator's
description) is an equivalent mutant: no behaviour can change, so it is left out of the rates
and listed with its reason. Every other survivor is a behaviour no test pins down.
"""

from __future__ import annotations

import collections
import fnmatch
import json
import sys
from pathlib import Path
from typing import Any


def load_equivalents(path: Path | None) -> list[dict[str, str]]:
    """The entries of equivalent.txt: blocks of `file:`, `line:`, `mutation:`, `why:` lines
    (and `at:`, the line number, for a line whose text recurs in the file)."""
    if path is None or not path.exists():
        return []
    entries: list[dict[str, str]] = []
    entry: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            if entry:
                entries.append(entry)
                entry = {}
            continue
        key, _, value = line.partition(":")
        entry[key.strip()] = value.strip()
    if entry:
        entries.append(entry)
    return entries


def equivalent_reason(result: dict[str, Any], equivalents: list[dict[str, str]]) -> str | None:
    """Why `result` is an equivalent mutant, or None when it is not a known one."""
    for entry in equivalents:
        if (
            fnmatch.fnmatch(result["file"], entry.get("file", ""))
            and entry.get("line") == result["source_line"]
            and entry.get("mutation") in ("*", f"{result['kind']} {result['desc']}")
            # `at:` pins a line whose text recurs in the file (`return`): once the code moves,
            # the entry stops matching and the survivor is read again, never hidden.
            and entry.get("at", str(result["line"])) == str(result["line"])
        ):
            return entry.get("why", "")
    return None


def summarize(plan_path: Path, results_path: Path, equivalents_path: Path | None = None) -> str:
    """The summary text of one run."""
    plan = {m["id"]: m for m in json.loads(plan_path.read_text())["mutants"]}
    results = {}
    for line in results_path.read_text().splitlines():
        if line.strip():
            result = json.loads(line)
            results[result["id"]] = result
    equivalents = load_equivalents(equivalents_path)
    rows, equivalent = [], []
    for mutant_id, mutant in plan.items():
        if mutant.get("excluded") or mutant_id not in results:
            continue
        result = results[mutant_id]
        reason = equivalent_reason(result, equivalents) if result["status"] == "survived" else None
        if reason is None:
            rows.append(result)
        else:
            equivalent.append((result, reason))
    missing = [i for i, m in plan.items() if not m.get("excluded") and i not in results]
    seed = json.loads(plan_path.read_text()).get("seed")
    out = [
        f"seed {seed}: {len(rows) + len(equivalent)} mutants run, {len(equivalent)} equivalent "
        f"(left out of the rates), {len(missing)} not run yet"
    ]

    def table(title: str, key: str) -> None:
        counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for row in rows:
            counts[row[key]][row["status"]] += 1
        out.append(f"by {title}:")
        for name, c in sorted(counts.items()):
            n = sum(c.values())
            detected = c["killed"] + c["timeout"]
            out.append(
                f"  {name:18} n={n:3}  killed={c['killed']:3} timeout={c['timeout']:2} "
                f"survived={c['survived']:3}  detected={detected / n:6.1%}"
            )

    table("area", "area")
    table("group", "group")
    table("operator", "kind")
    for title, status in (("survivors", "survived"), ("timeouts", "timeout")):
        out.append(f"{title}:")
        for row in rows:
            if row["status"] == status:
                out.append(
                    f"  [{row['id']:3}] {row['file']}:{row['line']} {row['kind']} {row['desc']}"
                    f" | {row['source_line'][:80]}"
                )
    out.append("equivalent (left out):")
    for row, reason in equivalent:
        out.append(f"  [{row['id']:3}] {row['file']}:{row['line']} {row['kind']} {row['desc']}")
        out.append(f"        {reason}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    default = Path(__file__).with_name("equivalent.txt")
    sys.stdout.write(
        summarize(
            Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if sys.argv[3:] else default
        )
    )
