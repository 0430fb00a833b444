"""The one permission rule (``core.permissions``) and how the service applies it."""

from __future__ import annotations

import pytest

from core import commands, permissions, sentences
from core.messages import Author, ConversationKey
from core.permissions import Privileges
from core.service import ConversationService
from core.settings import Settings
from tests.fakes.memory import MemoryStore, ScriptedModel

KEY = ConversationKey("test", "w1", "c1")
BOB = Author("u2", "bob")
MEMBER = Privileges(who="the channel's keepers")
CHANGES = {"system": "be terse", "model": "gpt-4", "temperature": "0.3", "json": "on"}


def service() -> ConversationService:
    settings = Settings(_env_file=None, openai_api_key="test")  # type: ignore[call-arg]
    return ConversationService(MemoryStore(), ScriptedModel(), settings)


def test_only_changes_to_shared_state_are_guarded() -> None:
    by_name = commands.BY_NAME
    for name, value in CHANGES.items():
        assert permissions.changes_shared_state(by_name[name], value)
        assert not permissions.changes_shared_state(by_name[name], "  ")  # only shows it
    assert permissions.changes_shared_state(by_name["reset"], "")
    for name in ("help", "usage", "summarize"):
        assert not permissions.changes_shared_state(by_name[name], "3")


@pytest.mark.parametrize(
    "viewer",
    [
        Privileges(admin=True),
        Privileges(listed=True),
        Privileges(creator=True),
        Privileges(direct=True),
    ],
)
def test_each_fact_grants_a_change(viewer: Privileges) -> None:
    assert permissions.may_change(commands.BY_NAME["reset"], "", viewer)
    assert permissions.may_change(commands.BY_NAME["model"], "gpt-4", viewer)


def test_an_ordinary_member_is_refused_with_who_may() -> None:
    spec = commands.BY_NAME["model"]
    assert not permissions.may_change(spec, "gpt-4", MEMBER)
    assert permissions.may_change(spec, "", MEMBER)
    assert permissions.refusal(spec, MEMBER) == sentences.not_allowed(
        "model", "the channel's keepers", setting=True
    )


async def test_the_service_refuses_and_changes_nothing() -> None:
    s = service()
    before = await s.channel_config(KEY.channel_key)
    for name, value in CHANGES.items():
        reply = await s.command(KEY, BOB, name, value, viewer=MEMBER)
        assert not reply.ok and reply.private and "the channel's keepers" in reply.text
    assert await s.channel_config(KEY.channel_key) == before
    for alias in ("temp", "clear", "forget"):
        assert not (await s.command(KEY, BOB, alias, "1", viewer=MEMBER)).ok
    assert (await s.command(KEY, BOB, "model", viewer=MEMBER)).ok  # showing is open
    admin = Privileges(admin=True)
    assert (await s.command(KEY, BOB, "model", "gpt-4", viewer=admin)).ok
    assert (await s.channel_config(KEY.channel_key)).model == "gpt-4"


async def test_the_facts_are_looked_up_only_for_a_change() -> None:
    s = service()
    asked: list[str] = []

    async def lookup() -> Privileges:
        asked.append("asked")
        return MEMBER

    for name in ("help", "usage", "model", "temperature"):
        await s.command(KEY, BOB, name, viewer=lookup)
    assert asked == []
    assert not (await s.command(KEY, BOB, "reset", viewer=lookup)).ok
    assert asked == ["asked"]


async def test_a_refused_command_delivered_again_is_not_answered_twice() -> None:
    s = service()
    first = await s.command(KEY, BOB, "reset", event_id="E1", viewer=MEMBER)
    again = await s.command(KEY, BOB, "reset", event_id="E1", viewer=MEMBER)
    assert not first.ok and again.redelivered
