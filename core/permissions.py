"""Who may change what a channel shares: its settings and its history.

One rule for every platform. Adapters only find out the facts about the person asking
(``Privileges``: an admin? named in the settings? the channel's creator? their own DM?); the
core decides here whether a command may run, and says who may when it may not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core import sentences
from core.commands import CommandSpec


@dataclass(frozen=True, slots=True)
class Privileges:
    """What the platform says about the person asking, where they ask.

    ``admin``: the platform's own administrators (Slack workspace admins and owners, Discord
    members with the settings permission). ``listed``: named in the adapter's settings (users,
    groups, roles). ``creator``: created the channel, where the settings count creators.
    ``direct``: their own direct conversation with the bot. ``who`` names, in the platform's
    words, the people who may change things here (for the refusal).
    """

    admin: bool = False
    listed: bool = False
    creator: bool = False
    direct: bool = False
    who: str = "the channel's admins"


# The local terminal: the person at it runs the bot.
OPERATOR = Privileges(admin=True, who="the bot's operator")

PrivilegeLookup = Callable[[], Awaitable[Privileges]]


def changes_shared_state(spec: CommandSpec, args: str) -> bool:
    """Whether running ``spec`` with ``args`` changes what others in the channel share: a
    setting given a value, or a reset. Showing a setting (no argument) changes nothing."""
    return spec.guarded or (spec.changes_settings and bool(args.strip()))


def may_change(spec: CommandSpec, args: str, viewer: Privileges) -> bool:
    """The rule: anyone may run what changes nothing shared; the rest is for admins, people
    named in the settings, the channel's creator (where they count), and anyone in their own
    DM with the bot."""
    if not changes_shared_state(spec, args):
        return True
    return viewer.direct or viewer.admin or viewer.listed or viewer.creator


def refusal(spec: CommandSpec, viewer: Privileges) -> str:
    """The sentence for someone who may not run ``spec`` here."""
    return sentences.not_allowed(
        spec.name, viewer.who, setting=spec.changes_settings, shown_by=spec.shown_by
    )


__all__ = [
    "OPERATOR",
    "PrivilegeLookup",
    "Privileges",
    "changes_shared_state",
    "may_change",
    "refusal",
]
