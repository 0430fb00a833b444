"""Slack adapter: app mentions, DMs, thread follow-ups, assistant threads and a slash command.

``SlackAdapter`` is imported on first use, so the composition root can read
``adapters.slack.settings`` (to see whether Slack is configured) without loading slack-bolt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.slack.adapter import SlackAdapter

__all__ = ["SlackAdapter"]


def __getattr__(name: str) -> Any:
    if name == "SlackAdapter":
        from adapters.slack.adapter import SlackAdapter

        return SlackAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
