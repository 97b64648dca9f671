"""Columns of cells laid out within a terminal width, as lines of optionally coloured segments."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshbreaker.live.terminal import ELLIPSIS, RESET
from meshbreaker.live.text import elide_end

# A line is a list of (text, SGR code or None) segments, coloured only when asked.
Segment = tuple[str, str | None]


@dataclass(frozen=True)
class Column:
    """A table column: its title, alignment and how its cells give way when space is short."""

    title: str
    right: bool = False  # numbers align right
    cut: Callable[[str, int], str] | None = None  # how a cell shrinks; None = never
    min_width: int = 0
    weight: int = 1  # when shrinking, a column of weight 2 keeps about twice the width


def table_lines(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    colors: Sequence[Sequence[str | None]],
    width: int,
) -> list[list[Segment]]:
    """A header line and one line per row, each cell cut and padded to its column."""
    *widths, separator = _column_widths(columns, rows, width)
    gap = " " * separator
    lines: list[list[Segment]] = []
    header: list[Segment] = []
    for i, column in enumerate(columns):
        title = elide_end(column.title, widths[i])
        header.append(((gap if i else "") + _pad(title, widths[i], column.right), "1"))
    lines.append(header)
    for row, row_colors in zip(rows, colors, strict=True):
        line: list[Segment] = []
        for i, column in enumerate(columns):
            cell = row[i]
            if len(cell) > widths[i]:
                cell = (column.cut or elide_end)(cell, widths[i])
            if i:
                line.append((gap, None))
            line.append((_pad(cell, widths[i], column.right), row_colors[i]))
        lines.append(line)
    return lines


def line_text(line: Sequence[Segment], width: int, color: bool) -> str:
    """The line as text of at most `width` visible characters, coloured when asked."""
    plain = "".join(text for text, _ in line).rstrip()
    cut = len(plain) > width
    budget = width - 1 if cut else len(plain)
    parts: list[str] = []
    used = 0
    for text, code in line:
        if used >= budget:
            break
        piece = text[: budget - used]
        used += len(piece)
        parts.append(f"\x1b[{code}m{piece}{RESET}" if color and code and piece.strip() else piece)
    if cut:
        parts.append(ELLIPSIS)
    return "".join(parts)


def _column_widths(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
) -> list[int]:
    """Column widths, then the separator, that fit `width`: cut columns shrink, widest first."""
    widths = [
        max([len(column.title), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)
    ]
    separator = 2 if sum(widths) + 2 * (len(widths) - 1) <= width else 1
    excess = sum(widths) + separator * (len(widths) - 1) - width
    while excess > 0:
        candidates = [
            i for i, column in enumerate(columns) if column.cut and widths[i] > column.min_width
        ]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i] / columns[i].weight)
        widths[widest] -= 1
        excess -= 1
    return [*widths, separator]


def _pad(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)
