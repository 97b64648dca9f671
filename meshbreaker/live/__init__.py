"""Live views of the mesh: `status --watch` and `events --follow`, both outliving restarts."""

from meshbreaker.live.connection import channel_options, new_backoff, quiet_grpc_logs
from meshbreaker.live.follow import EventFollower
from meshbreaker.live.render import Link, render_status
from meshbreaker.live.terminal import (
    CLEAR_SCREEN,
    HIDE_CURSOR,
    HOME,
    RESET,
    SHOW_CURSOR,
    is_terminal,
    strip_ansi,
    use_color,
)
from meshbreaker.live.text import format_event, state_name
from meshbreaker.live.watch import StatusWatch

__all__ = [
    "CLEAR_SCREEN",
    "HIDE_CURSOR",
    "HOME",
    "RESET",
    "SHOW_CURSOR",
    "EventFollower",
    "Link",
    "StatusWatch",
    "channel_options",
    "format_event",
    "is_terminal",
    "new_backoff",
    "quiet_grpc_logs",
    "render_status",
    "state_name",
    "strip_ansi",
    "use_color",
]
