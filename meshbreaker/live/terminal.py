"""What the live views write to a terminal: escape sequences, colour and encoding checks."""

from __future__ import annotations

import os
import re
from typing import TextIO

PROG = "meshbreaker"

HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
CLEAR_SCREEN = "\x1b[2J"
HOME = "\x1b[H"
CLEAR_LINE_END = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
RESET = "\x1b[0m"
ELLIPSIS = "…"
DASH = "—"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def say(stream: TextIO, message: str) -> None:
    """Print `message` to `stream` as a line from the command ("meshbreaker: ...")."""
    print(f"{PROG}: {message}", file=stream, flush=True)


def strip_ansi(text: str) -> str:
    """`text` without ANSI escape sequences (what the terminal shows)."""
    return _ANSI.sub("", text)


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal that understands cursor movement."""
    try:
        tty = stream.isatty()
    except ValueError:  # closed
        return False
    return tty and os.environ.get("TERM") != "dumb"


def use_color(stream: TextIO) -> bool:
    """ANSI colours only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return is_terminal(stream) and not os.environ.get("NO_COLOR")


def encodes(stream: TextIO, text: str) -> bool:
    """Whether `stream` can write `text` in its encoding."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
