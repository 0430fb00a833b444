"""What Parley uses to act in one Slack workspace, and one of those per installed workspace.

With ``SLACK_BOT_TOKEN`` there is one workspace; installed through OAuth, each workspace's bot
token comes with its requests (bolt's authorization reads it from the installation store), and
its ``Workspace`` is built on first use and kept for the next requests (the newest
``MAX_WORKSPACES``). Every Web API call of a workspace goes through its own client, under its
own write budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiohttp

from adapters.slack.budget import BudgetedWebClient
from adapters.slack.commands import SlackCommands
from adapters.slack.files import FileFetcher
from adapters.slack.people import SlackNames
from adapters.slack.threads import FollowedThreads
from adapters.slack.viewing import ChannelNames

MAX_WORKSPACES = 1_000


@dataclass
class Workspace:
    """One workspace's Web API client (its bot token) and the helpers that call it."""

    client: BudgetedWebClient
    files: FileFetcher
    commands: SlackCommands
    threads: FollowedThreads
    names: SlackNames
    channels: ChannelNames

    def use_session(self, session: aiohttp.ClientSession | None) -> None:
        self.client.session = session
        self.files.session = session
        self.commands.session = session


class Workspaces:
    """``Workspace``s by bot token, built by ``build`` on first use (the newest ``size`` kept)."""

    def __init__(self, build: Callable[[str], Workspace], size: int = MAX_WORKSPACES) -> None:
        self._build = build
        self.size = size
        self.session: aiohttp.ClientSession | None = None
        self._known: OrderedDict[str, Workspace] = OrderedDict()

    def of(self, token: str) -> Workspace:
        """The workspace whose bot token is ``token``."""
        workspace = self._known.get(token)
        if workspace is None:
            workspace = self._build(token)
            workspace.use_session(self.session)
            self._known[token] = workspace
            while len(self._known) > self.size:
                self._known.popitem(last=False)
        self._known.move_to_end(token)
        return workspace

    def forget(self, token: str) -> None:
        self._known.pop(token, None)

    def use_session(self, session: aiohttp.ClientSession | None) -> None:
        self.session = session
        for workspace in self._known.values():
            workspace.use_session(session)

    def __iter__(self) -> Iterator[Workspace]:
        return iter(list(self._known.values()))


__all__ = ["MAX_WORKSPACES", "Workspace", "Workspaces"]
