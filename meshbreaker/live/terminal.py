"""Where the operator's views write: a rich Console per stream, and one-line messages."""

from __future__ import annotations

import io
from typing import TextIO

from rich.console import Console, RenderableType

from meshbreaker.live.text import clean

PROG = "meshbreaker"

# Off a terminal (a pipe, a file) lines are never wrapped or cut: grep sees whole rows.
UNBOUNDED_WIDTH = 10_000


def say(stream: TextIO, message: str) -> None:
    """Print `message` (cleaned) to `stream` as a line from the command ("meshbreaker: ...")."""
    print(f"{PROG}: {clean(message)}", file=stream, flush=True)


def console_for(stream: TextIO) -> Console:
    """A rich Console on `stream`.

    rich decides what the stream can take: colours and cursor movement on a terminal only, none
    with NO_COLOR (no-color.org) or TERM=dumb, and FORCE_COLOR honoured. Nothing is read as
    markup or emoji codes: text a remote process reported is printed as it is (cleaned).
    """
    console = Console(file=stream, highlight=False, markup=False, emoji=False)
    if not console.is_terminal:
        console.width = UNBOUNDED_WIDTH
    return console


def emit(console: Console, renderable: RenderableType) -> None:
    """Print `renderable`; off a terminal, without the spaces rich pads table rows with."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as capture:
        console.print(renderable)
    lines = capture.get().splitlines()
    console.file.write("".join(line.rstrip() + "\n" for line in lines))
    console.file.flush()


def render_text(renderable: RenderableType, *, width: int, color: bool = False) -> str:
    """`renderable` as the text a terminal `width` cells wide shows (with ANSI colours if asked)."""
    console = Console(
        file=io.StringIO(),
        width=width,
        color_system="standard" if color else None,
        force_terminal=color,
        highlight=False,
        markup=False,
        emoji=False,
    )
    with console.capture() as capture:
        console.print(renderable)
    return capture.get().rstrip("\n")
