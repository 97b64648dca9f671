"""Live views of the mesh: `status --watch` and `events --follow`, both outliving restarts."""

from meshbreaker.live.connection import channel_options, new_backoff
from meshbreaker.live.follow import EventFollower, print_event
from meshbreaker.live.render import Link, render_status
from meshbreaker.live.terminal import console_for, render_text, say
from meshbreaker.live.text import clean, event_line, format_event, state_name
from meshbreaker.live.watch import StatusWatch

__all__ = [
    "EventFollower",
    "Link",
    "StatusWatch",
    "channel_options",
    "clean",
    "console_for",
    "event_line",
    "format_event",
    "new_backoff",
    "print_event",
    "render_status",
    "render_text",
    "say",
    "state_name",
]
