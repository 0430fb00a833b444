"""Slack adapter: app mentions, DMs, thread follow-ups, assistant threads and a slash command."""

from adapters.slack.adapter import SlackAdapter

__all__ = ["SlackAdapter"]
