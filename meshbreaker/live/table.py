"""Tables for the operator's views: borderless rich tables whose long cells give way first.

rich draws the table (padding, alignment, styles, the ellipsis); which column gives way when the
terminal is narrow is decided here, because names matter more than numbers: columns that may be
cut shrink first, widest (by weight) first, down to their minimum, and the numbers keep their
width. Every string cell is cleaned: it may come from a remote process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions
from rich.table import Table
from rich.text import Text

from meshbreaker.live.text import clean

ELLIPSIS = "…"

Cell = str | Text


@dataclass(frozen=True)
class Column:
    """A table column: its title, alignment, and how its cells give way when space is short."""

    title: str
    numeric: bool = False  # right-aligned
    cut: Literal["end", "start"] | None = None  # which end of a long cell is cut; None = never
    min_width: int = 4
    weight: int = 1  # when shrinking, a column of weight 2 keeps about twice the width


class KeepEnd:
    """A cell cut from its start when too wide ("…/pkg.Service/Method"), so its end stays."""

    def __init__(self, text: Text) -> None:
        self.text = text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        yield keep_end(self.text, options.max_width)


def keep_end(text: Text, width: int) -> Text:
    """`text` within `width` cells, its start replaced by an ellipsis when cut.

    Cells are measured on whole suffixes, never summed per character: rich counts graphemes, so
    a character's cells depend on its neighbours ("\u2764\ufe0f" is 2 cells, 1 + 0 apart).
    """
    plain = text.plain
    if cell_len(plain) <= width:
        return text
    room = width - cell_len(ELLIPSIS)
    if room < 0:
        return Text("")
    # The longest suffix that fits, by bisection (a suffix's cells grow with its length); `high`
    # only ever moves to a start that fits, and the empty suffix does, so the cut always fits.
    low, high = 0, len(plain)
    while low < high:
        middle = (low + high) // 2
        if cell_len(plain[middle:]) <= room:
            high = middle
        else:
            low = middle + 1
    # Marks that would join the ellipsis (combining, vowel signs, VS16) go with what was cut.
    while low < len(plain) and cell_len(plain[low]) == 0:
        low += 1
    return Text(ELLIPSIS, style=text.style) + text[low:]


def new_table(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int | None
) -> Table:
    """A table of `rows` within `width` cells (None: as wide as its cells need)."""
    texts = [[Text(clean(cell)) if isinstance(cell, str) else cell for cell in row] for row in rows]
    widths, gap = _fit(columns, texts, width)
    table = Table(
        box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, gap, 0, 0)
    )
    for column, column_width in zip(columns, widths, strict=True):
        table.add_column(
            column.title,
            justify="right" if column.numeric else "left",
            width=column_width,
            no_wrap=True,
            overflow="ellipsis",
        )
    for row in texts:
        table.add_row(
            *(
                KeepEnd(text) if column.cut == "start" else text
                for column, text in zip(columns, row, strict=True)
            )
        )
    return table


def _fit(
    columns: Sequence[Column], rows: Sequence[Sequence[Text]], width: int | None
) -> tuple[list[int], int]:
    """Column widths and the gap between columns (2, or 1 when tight) that fit `width`."""
    widths = [
        max([cell_len(column.title), *(cell_len(row[i].plain) for row in rows)])
        for i, column in enumerate(columns)
    ]
    gaps = len(widths) - 1
    if width is None:
        return widths, 2
    gap = 2 if sum(widths) + 2 * gaps <= width else 1
    excess = sum(widths) + gap * gaps - width
    while excess > 0:
        shrinkable = [
            i for i, column in enumerate(columns) if column.cut and widths[i] > column.min_width
        ]
        if not shrinkable:
            break  # rich cuts what is left evenly: no line is ever wider than `width`
        widest = max(shrinkable, key=lambda i: widths[i] / columns[i].weight)
        widths[widest] -= 1
        excess -= 1
    return widths, gap
