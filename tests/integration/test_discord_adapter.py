"""The Discord adapter end to end: the real discord.py client against the fake Discord, the real
core on SQLite, and the real openai client against the stand-in model server.

Every check is on what reached the fake Discord REST API, i.e. what a user would see.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import discord
import pytest

from adapters.discord import DiscordAdapter, adapter, render
from adapters.discord.interactions import NO_CONTENT_INTENT, NO_THREAD_PERMISSION, RESTARTING
from adapters.discord.settings import DiscordSettings
from adapters.standin.server import PREFIX, StandinServer, _long_text
from bots import platforms
from bots.bootstrap import Parley, build
from core import sentences
from core.attachments import AttachmentPolicy
from core.errors import ConfigError
from core.messages import Author, CommandReply, ConversationKey
from core.settings import Settings
from tests.fakes.concurrency import AnswersAtOnce
from tests.fakes.discord_server import EPHEMERAL, MESSAGE_CONTENT_INTENT, FakeDiscord

FENCE = re.compile(r"^\s*(```|~~~)")
RESTARTED = sentences.failure_text(sentences.RESTARTED)
GENERIC_FAILURE = sentences.failure_text(sentences.GENERIC_ERROR)


@dataclass
class Stack:
    discord: FakeDiscord
    openai: StandinServer
    adapter: DiscordAdapter
    parley: Parley

    def said(self, text: str) -> str:
        """The stand-in model's answer to ``text``."""
        return f"{PREFIX} You said: {text}"

    def visible(self, interaction: dict[str, Any]) -> list[str]:
        return self.discord.interaction_messages(interaction["token"])

    def shown(self, interaction: dict[str, Any]) -> list[str] | None:
        """What the user sees once the reply replaced "thinking…" (None until then)."""
        messages = self.visible(interaction)
        return messages if messages and messages[0] else None


StackFactory = Callable[..., AbstractAsyncContextManager[Stack]]


@pytest.fixture
def make_stack(tmp_path: Any) -> StackFactory:
    @asynccontextmanager
    async def make(
        *,
        refuse_intents: int = 0,
        latency: float = 0.002,
        core: dict[str, Any] | None = None,
        settings_for: Callable[[FakeDiscord], dict[str, Any]] = lambda fake: {},
    ) -> AsyncIterator[Stack]:
        """``core`` overrides core settings; ``settings_for`` Discord settings."""
        async with (
            FakeDiscord(refuse_intents=refuse_intents) as fake,
            StandinServer(latency=latency) as model,
        ):
            values: dict[str, Any] = {
                "openai_base_url": model.base_url,
                "openai_api_key": "test",
                "openai_max_retries": 0,
                "database_url": f"sqlite+aiosqlite:///{tmp_path}/p.db",
                "parley_max_output_tokens": 4096,
                **(core or {}),
            }
            section: dict[str, Any] = {
                "token": "x",
                "api_url": fake.api_url,
                "gateway_url": fake.gateway_url,
                "guild_ids": [int(fake.guild_id)],
                "edit_interval": 0.01,
                **settings_for(fake),
            }
            parley = await build(Settings(_env_file=None, **values))  # type: ignore[call-arg]
            section_settings = DiscordSettings(_env_file=None, **section)  # type: ignore[call-arg]
            adapter = platforms.discord_adapter(parley, section_settings)
            try:
                await adapter.start()
                await fake.wait_for(lambda: fake.commands and fake.connected.is_set())
                yield Stack(fake, model, adapter, parley)
            finally:
                await adapter.stop()
                await parley.close()

    return make


@pytest.fixture
async def stack(make_stack: StackFactory) -> AsyncIterator[Stack]:
    async with make_stack() as s:
        yield s


def unsplit(pieces: list[str]) -> str:
    """Undo the fence closing/reopening added at cuts; whitespace at cuts is not kept."""
    out = list(pieces)
    for i in range(1, len(pieces)):
        head, _, last_line = pieces[i - 1].rpartition("\n")
        first_line, _, rest = pieces[i].partition("\n")
        if FENCE.match(first_line) and FENCE.match(last_line) and _open_fence(head):
            out[i - 1] = out[i - 1].rpartition("\n")[0]
            out[i] = rest
    return " ".join(" ".join(out).split())


def _open_fence(text: str) -> bool:
    return sum(1 for line in text.splitlines() if FENCE.match(line)) % 2 == 1


# --- slash commands -----------------------------------------------------------------------


async def test_commands_are_registered_in_the_configured_guild(stack: Stack) -> None:
    names = {c["name"] for c in stack.discord.commands[stack.discord.guild_id]}
    assert {"ask", "chat", "reset", "system", "model", "temperature", "json", "usage"} <= names
    assert {"summarize", "help"} <= names
    ask = next(c for c in stack.discord.commands[stack.discord.guild_id] if c["name"] == "ask")
    assert [o["name"] for o in ask["options"]] == ["prompt", "image", "private"]
    assert "global" not in stack.discord.commands


async def test_ask_defers_then_streams_by_editing_the_original_response(stack: Stack) -> None:
    prompt = "tell me, in a few words, how streaming answers on Discord works please"
    interaction = await stack.discord.send_command("ask", {"prompt": prompt})
    answer = stack.said(prompt)
    await stack.discord.wait_for(lambda: stack.visible(interaction) == [answer])

    callbacks = stack.discord.calls_to("POST", rf"/interactions/{interaction['id']}/")
    assert [c.body["type"] for c in callbacks] == [5]  # deferred, "Parley is thinking…"
    assert callbacks[0].query.get("with_response") == "1"
    edits = [c.content for c in stack.discord.calls_to("PATCH", r"/messages/@original$")]
    assert len(edits) >= 2, "the answer should grow by edits before the final text"
    assert edits[-1] == answer
    assert all(e is not None and answer.startswith(e) for e in edits)
    assert not stack.discord.calls_to("POST", r"/webhooks/"), "no follow-up for a short answer"


async def test_private_ask_is_ephemeral(stack: Stack) -> None:
    interaction = await stack.discord.send_command("ask", {"prompt": "secret", "private": True})
    await stack.discord.wait_for(lambda: stack.visible(interaction) == [stack.said("secret")])
    defer = stack.discord.calls_to("POST", r"/callback$")[0]
    assert defer.body["data"]["flags"] & EPHEMERAL


async def test_long_answer_is_split_into_messages_within_the_limit(stack: Stack) -> None:
    expected = _long_text(1400)
    assert len(expected) >= 5000 and "```" in expected
    interaction = await stack.discord.send_command(
        "ask", {"prompt": "[[fault:long_answer:1400]] write an essay"}
    )
    want = " ".join(expected.split())
    pieces = await stack.discord.wait_for(
        lambda: (p := stack.visible(interaction)) and unsplit(p) == want and p
    )
    assert len(pieces) >= 3
    assert all(len(p) <= 2000 for p in pieces)
    assert all(not _open_fence(p) for p in pieces), "every message renders on its own"
    followups = stack.discord.calls_to("POST", rf"/webhooks/{stack.discord.app_id}/")
    assert len(followups) == len(pieces) - 1
    await _until_idle(stack)
    # Only the last message is edited: once the answer continues, a message stays as it is.
    token = interaction["token"]
    order = ["@original"] + [
        k.split(":", 1)[1]
        for k in stack.discord.webhook_messages
        if k.startswith(f"{token}:") and not k.endswith("@original")
    ]
    newest = 0
    for call in stack.discord.calls:
        if f"/webhooks/{stack.discord.app_id}/{token}" not in call.path or call.status != 200:
            continue
        if call.method == "POST":
            newest += 1
        elif call.method == "PATCH":
            assert order.index(call.path.rsplit("/", 1)[1]) == newest, "only the last is edited"
    assert newest == len(order) - 1 == len(pieces) - 1


async def test_rate_limited_edit_still_ends_with_the_complete_answer(stack: Stack) -> None:
    stack.discord.fail("PATCH", r"/messages/@original$", status=429, times=2, retry_after=0.05)
    prompt = "an answer despite rate limits"
    interaction = await stack.discord.send_command("ask", {"prompt": prompt})
    await stack.discord.wait_for(lambda: stack.visible(interaction) == [stack.said(prompt)])
    statuses = [c.status for c in stack.discord.calls_to("PATCH", r"/messages/@original$")]
    assert statuses[:2] == [429, 429] and statuses[-1] == 200


async def test_model_failure_ends_in_a_clear_message(stack: Stack) -> None:
    interaction = await stack.discord.send_command(
        "ask", {"prompt": "[[fault:server_error]] hello"}
    )
    await stack.discord.wait_for(
        lambda: (shown := stack.visible(interaction)) and shown[0].startswith("⚠️")
    )
    shown = stack.visible(interaction)
    assert len(shown) == 1 and len(shown[0]) > 20
    assert "Traceback" not in shown[0]


async def test_ask_with_an_image_sends_it_to_the_model(stack: Stack) -> None:
    image = stack.discord.attachment("cat.png", "image/png", b"\x89PNG fake image bytes")
    interaction = await stack.discord.send_command(
        "ask",
        {"prompt": "what is this?", "image": image["id"]},
        resolved_attachments={image["id"]: image},
    )
    await stack.discord.wait_for(lambda: "1 image" in "".join(stack.visible(interaction)))
    user = stack.openai.requests[-1]["messages"][-1]
    assert any(part.get("type") == "image_url" for part in user["content"])


# --- /chat --------------------------------------------------------------------------------


async def test_chat_opens_a_thread_and_follow_ups_continue_without_a_command(
    stack: Stack,
) -> None:
    fake = stack.discord
    prompt = "Plan the team offsite in Lisbon for October " + "with lots of detail " * 8
    interaction = await fake.send_command("chat", {"prompt": prompt})
    thread = await fake.wait_for(lambda: fake.threads() and fake.threads()[0])
    assert thread["parent_id"] == fake.channel_id
    assert len(thread["name"]) <= 100 and thread["name"].startswith("Plan the team offsite")
    await fake.wait_for(lambda: stack.said(prompt.strip()) in fake.channel_messages(thread["id"]))
    assert f"<#{thread['id']}>" in stack.visible(interaction)[0]

    await fake.send_message("and what about the budget?", channel_id=thread["id"])
    await fake.wait_for(
        lambda: stack.said("and what about the budget?") in fake.channel_messages(thread["id"])
    )
    history = [m["content"] for m in stack.openai.requests[-1]["messages"]]
    assert any("Plan the team offsite" in str(c) for c in history), "the thread continues"


async def test_chat_without_thread_permission_says_so(stack: Stack) -> None:
    stack.discord.fail("POST", r"/threads$", status=403)
    interaction = await stack.discord.send_command("chat", {"prompt": "hello"})
    await stack.discord.wait_for(lambda: stack.visible(interaction) == [NO_THREAD_PERMISSION])


# --- mentions -----------------------------------------------------------------------------


async def test_mention_answers_as_a_reply_with_the_reply_chain_as_context(stack: Stack) -> None:
    fake = stack.discord
    first = fake.message_payload("the build fails with error E42 on main")
    second = fake.message_payload("same here on CI", author=fake.moderator, reply_to=first)
    mention = await fake.send_message("what does it mean?", mention_bot=True, reply_to=second)

    replies = await fake.wait_for(
        lambda: [
            c
            for c in fake.calls_to("POST", rf"/channels/{fake.channel_id}/messages$")
            if (c.body.get("message_reference") or {}).get("message_id") == int(mention["id"])
        ]
    )
    assert len(replies) == 1
    await fake.wait_for(
        lambda: any(
            "what does it mean?" in t
            for t in fake.channel_messages(fake.channel_id, author_id=fake.bot.id)
        )
    )
    sent = stack.openai.requests[-1]["messages"][-1]["content"]
    assert "E42" in sent and "same here on CI" in sent
    assert sent.index("E42") < sent.index("same here on CI") < sent.index("what does it mean?")
    assert fake.calls_to("GET", rf"/messages/{first['id']}$"), "the deeper link is fetched"


async def test_mention_where_the_bot_may_not_post_is_explained_in_a_dm(stack: Stack) -> None:
    fake = stack.discord
    fake.fail("POST", rf"/channels/{fake.channel_id}/messages$", status=403, times=100)
    await fake.send_message("are you there?", mention_bot=True)
    shown = await fake.wait_for(lambda: fake.dm_messages(fake.user))
    assert "missing permission" in shown[0] and f"<#{fake.channel_id}>" in shown[0]
    assert len(stack.openai.requests) == 1, "the answer was still completed and recorded"


async def test_message_not_addressed_to_the_bot_is_ignored(stack: Stack) -> None:
    fake = stack.discord
    await fake.send_message("just chatting among humans")
    sentinel = await fake.send_message("ping", mention_bot=True)
    await fake.wait_for(
        lambda: stack.said("ping") in fake.channel_messages(fake.channel_id, author_id=fake.bot.id)
    )
    assert len(stack.openai.requests) == 1
    assert sentinel["id"]


async def test_duplicate_message_create_is_answered_once(stack: Stack) -> None:
    fake = stack.discord
    message = fake.message_payload("answer me once", mention_bot=True)
    await fake.dispatch("MESSAGE_CREATE", message)
    await fake.dispatch("MESSAGE_CREATE", message)
    # A redelivery after a resume, as Discord does when it isn't sure the client saw it.
    await fake.wait_for(lambda: fake.calls_to("POST", r"/messages$"))
    await fake.drop_connection(replay=[("MESSAGE_CREATE", message)])
    await fake.wait_for(lambda: fake.resumes)
    await fake.send_message("sentinel", mention_bot=True)
    await fake.wait_for(
        lambda: (
            stack.said("sentinel") in fake.channel_messages(fake.channel_id, author_id=fake.bot.id)
        )
    )
    await _until_idle(stack)
    replies = [
        c
        for c in fake.calls_to("POST", r"/messages$")
        if (c.body.get("message_reference") or {}).get("message_id") == int(message["id"])
    ]
    assert len(replies) == 1
    assert len(stack.openai.requests) == 2


async def test_redelivered_interaction_is_answered_once(stack: Stack) -> None:
    fake = stack.discord
    interaction = await fake.send_command("ask", {"prompt": "once"})
    await fake.wait_for(lambda: stack.visible(interaction) == [stack.said("once")])
    await fake.dispatch("INTERACTION_CREATE", interaction)
    sentinel = await fake.send_command("ask", {"prompt": "sentinel"})
    await fake.wait_for(lambda: stack.visible(sentinel) == [stack.said("sentinel")])
    await _until_idle(stack)
    callbacks = fake.calls_to("POST", rf"/interactions/{interaction['id']}/")
    assert [c.status for c in callbacks] == [200, 400], "Discord refuses the second defer"
    assert stack.visible(interaction) == [stack.said("once")]
    assert len(stack.openai.requests) == 2


async def test_command_claimed_after_deferring_withdraws_its_reply(stack: Stack) -> None:
    fake = stack.discord
    service = stack.parley.service
    key = ConversationKey("discord", fake.guild_id, fake.channel_id)
    await service.command(key, Author(fake.moderator.id), "system", "be terse")
    interaction_id = fake.new_id()
    assert await service.claim_event("discord", interaction_id)  # answered before a restart
    await fake.send_command(
        "system", {"prompt": "be verbose"}, user=fake.moderator, interaction_id=interaction_id
    )
    await fake.wait_for(lambda: fake.calls_to("DELETE", r"/messages/@original$"))
    await _until_idle(stack)
    assert "be terse" in (await service.command(key, Author(fake.user.id), "system")).text


async def test_a_database_failure_when_claiming_still_gets_a_sentence(stack: Stack) -> None:
    async def broken(*args: Any, **kwargs: Any) -> bool:
        raise OSError("database unreachable")

    stack.parley.service.claim_event = broken  # type: ignore[method-assign]
    stack.parley.store.claim_turn = broken  # type: ignore[method-assign]  # a turn's own claim
    interaction = await stack.discord.send_command("ask", {"prompt": "hello?"})
    await stack.discord.wait_for(lambda: stack.visible(interaction) == [GENERIC_FAILURE])
    mention = await stack.discord.send_message("anyone there?", mention_bot=True)
    await stack.discord.wait_for(
        lambda: [
            c
            for c in stack.discord.calls_to("POST", r"/messages$")
            if (c.body.get("message_reference") or {}).get("message_id") == int(mention["id"])
            and c.content == GENERIC_FAILURE
        ]
    )
    assert not stack.openai.requests


async def test_interaction_claimed_after_deferring_withdraws_its_reply(stack: Stack) -> None:
    fake = stack.discord
    interaction_id = fake.new_id()
    # Already answered (e.g. by the process that ran before a restart), yet deferrable here.
    assert await stack.parley.service.claim_event("discord", interaction_id)
    interaction = await fake.send_command(
        "ask", {"prompt": "twice?"}, interaction_id=interaction_id
    )
    await fake.wait_for(lambda: fake.calls_to("DELETE", r"/messages/@original$"))
    await _until_idle(stack)
    assert stack.visible(interaction) == []
    assert not stack.openai.requests


@pytest.mark.parametrize(
    ("command", "options", "private"),
    [("ask", {"prompt": "hi"}, False), ("usage", {}, True), ("reset", {}, False)],
)
async def test_interaction_is_deferred_before_the_database_is_touched(
    stack: Stack, command: str, options: dict[str, Any], private: bool
) -> None:
    fake = stack.discord
    service = stack.parley.service
    store = stack.parley.store
    deferred_at_claim: list[int] = []

    def slow(claim: Any) -> Any:
        async def slow_claim(*args: Any, **options: Any) -> Any:
            deferred_at_claim.append(len(fake.calls_to("POST", r"/callback$")))
            await asyncio.sleep(0.5)  # a slow database: longer than the (shortened) deadline
            return await claim(*args, **options)

        return slow_claim

    fake.interaction_deadline = 0.3  # Discord's 3 seconds, shortened
    service.claim_event = slow(service.claim_event)  # type: ignore[method-assign]
    store.claim_turn = slow(store.claim_turn)  # type: ignore[method-assign]  # a turn's claim
    interaction = await fake.send_command(command, options, user=fake.moderator)
    await fake.wait_for(lambda: stack.shown(interaction))
    assert deferred_at_claim == [1]
    [defer] = fake.calls_to("POST", r"/callback$")
    assert defer.status == 200 and defer.body["type"] == 5
    assert bool((defer.body.get("data") or {}).get("flags", 0) & EPHEMERAL) == private


async def test_blank_command_reply_still_replaces_thinking(stack: Stack) -> None:
    async def blank(*args: Any, **kwargs: Any) -> CommandReply:
        return CommandReply("  \n ", private=False)

    stack.parley.service.command = blank  # type: ignore[method-assign]
    interaction = await stack.discord.send_command("reset", user=stack.discord.moderator)
    await stack.discord.wait_for(lambda: stack.visible(interaction) == ["Done."])


async def test_unexpected_failure_replaces_thinking_with_a_private_message(
    stack: Stack,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> CommandReply:
        raise RuntimeError("bug")

    stack.parley.service.command = broken  # type: ignore[method-assign]
    interaction = await stack.discord.send_command("reset", user=stack.discord.moderator)
    shown = await stack.discord.wait_for(lambda: stack.shown(interaction))
    assert shown == [GENERIC_FAILURE]
    token = interaction["token"]
    assert all(
        m["flags"] & EPHEMERAL
        for k, m in stack.discord.webhook_messages.items()
        if k.startswith(token)
    )


# --- the 15-minute interaction token ------------------------------------------------------


@pytest.mark.parametrize("private", [False, True])
async def test_answer_continues_in_the_channel_when_the_token_expires(
    make_stack: StackFactory, private: bool
) -> None:
    async with make_stack(latency=0.02) as stack:
        fake = stack.discord
        webhook = rf"/webhooks/{fake.app_id}/tok-"
        fake.fail("PATCH", webhook, status=401, times=10_000, after=1)
        fake.fail("POST", webhook, status=401, times=10_000)
        prompt = "a slow answer that outlives the interaction token " * 3
        interaction = await fake.send_command("ask", {"prompt": prompt, "private": private})
        answer = stack.said(" ".join(prompt.split()))

        def elsewhere() -> list[str]:
            if private:
                return fake.dm_messages(fake.user)
            return fake.channel_messages(fake.channel_id, author_id=fake.bot.id)

        await fake.wait_for(lambda: answer in elsewhere())
        await _until_idle(stack)
        shown = elsewhere()
        assert len(shown) == 2 and "continues here" in shown[0] and shown[1] == answer
        original = stack.visible(interaction)
        assert len(original) == 1 and answer.startswith(original[0]) and original[0] != answer
        statuses = [c.status for c in fake.calls_to("PATCH", webhook)]
        assert statuses == [200, 401], "after the token is gone the interaction is left alone"
        if private:
            assert not fake.channel_messages(fake.channel_id, author_id=fake.bot.id)


@pytest.mark.parametrize("safe_seconds", [0.0, 0.3])
async def test_answer_moves_to_the_channel_before_the_token_expires(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch, safe_seconds: float
) -> None:
    # The answer streams for about a second (17 chunks, 0.05 s each): with 0.3 s as the safe
    # lifetime of the token, its first part is shown in the interaction, the rest moves.
    monkeypatch.setattr(render, "TOKEN_SAFE_SECONDS", safe_seconds)
    async with make_stack(latency=0.05) as stack:
        fake = stack.discord
        prompt = "an answer still being written near the fifteen minute limit " * 4
        interaction = await fake.send_command("ask", {"prompt": prompt})
        answer = stack.said(" ".join(prompt.split()))

        def bot_said() -> list[str]:
            return fake.channel_messages(fake.channel_id, author_id=fake.bot.id)

        await fake.wait_for(lambda: answer in bot_said())
        await _until_idle(stack)
        assert len(bot_said()) == 2 and "continues here" in bot_said()[0]
        original = stack.visible(interaction)
        assert len(original) == 1 and original[0] != answer
        if safe_seconds == 0.0:
            assert original == ["-# The answer continues below."]
        else:
            assert answer.startswith(original[0])
        assert all(c.status == 200 for c in fake.calls if "/webhooks/" in c.path)


async def _until_idle(stack: Stack) -> None:
    """Every handler the client started has finished (the sentinel proves they all started)."""
    await stack.adapter.inflight.wait(30)
    assert not len(stack.adapter.inflight)


# --- channel commands ---------------------------------------------------------------------


async def test_command_with_a_bad_value_gets_a_clear_private_message(stack: Stack) -> None:
    fake = stack.discord
    interaction = await fake.send_command("temperature", {"value": "5"}, user=fake.moderator)
    shown = await fake.wait_for(lambda: stack.shown(interaction))
    assert "between 0 and 2" in shown[0]
    token = interaction["token"]
    assert all(
        m["flags"] & EPHEMERAL for k, m in fake.webhook_messages.items() if k.startswith(token)
    )


async def test_settings_commands_need_the_permission(stack: Stack) -> None:
    fake = stack.discord
    interaction = await fake.send_command("model", {"name": "gpt-4"}, user=fake.user)
    shown = await fake.wait_for(lambda: stack.shown(interaction))
    assert shown == [
        sentences.not_allowed("model", "members with the Manage Messages permission", setting=True)
    ]
    allowed = await fake.send_command("model", {"name": "gpt-4o-mini"}, user=fake.moderator)
    await fake.wait_for(lambda: "gpt-4o-mini" in "".join(stack.visible(allowed)))
    shown_to_all = await fake.send_command("model", user=fake.user)
    await fake.wait_for(lambda: "gpt-4o-mini" in "".join(stack.visible(shown_to_all)))


async def test_reset_needs_the_same_permission_as_the_settings(stack: Stack) -> None:
    fake = stack.discord
    store = stack.parley.store
    key = ConversationKey("discord", fake.guild_id, fake.channel_id)
    state = await store.conversation(key)
    await store.add_message(state.id, "user", "keep me", 2, author_id=fake.moderator.id)
    who = "members with the Manage Messages permission"
    for name in ("reset", "clear"):
        refused = await fake.send_command(name, user=fake.user)
        shown = await fake.wait_for(lambda r=refused: stack.shown(r))  # type: ignore[misc]
        assert shown == [sentences.not_allowed("reset", who, setting=False)], name
        callback = fake.calls_to("POST", r"/callback$")[-1]
        assert callback.body["type"] == 4 and callback.body["data"]["flags"] & EPHEMERAL
    # Nothing was forgotten: the moderator's reset still finds the message.
    allowed = await fake.send_command("reset", user=fake.moderator)
    await fake.wait_for(lambda: "1 message" in "".join(stack.visible(allowed)))


async def test_summarize_reads_the_last_messages_of_the_channel(stack: Stack) -> None:
    fake = stack.discord
    fake.message_payload("old message that must not be included")
    for text in ("we ship on friday", "QA signs off thursday", "docs are late"):
        fake.message_payload(text)
    interaction = await fake.send_command("summarize", {"messages": 3})
    await fake.wait_for(lambda: "Summary" in "".join(stack.visible(interaction)))
    assert fake.calls_to("GET", rf"/channels/{fake.channel_id}/messages$")[0].query["limit"] == "3"
    sent = stack.openai.requests[-1]["messages"][-1]["content"]
    assert "we ship on friday" in sent and "docs are late" in sent
    assert "old message" not in sent


async def test_summarize_without_a_number_reads_the_last_fifty_messages_here(
    stack: Stack,
) -> None:
    fake = stack.discord
    for text in ("the release is on tuesday", "the demo moved to wednesday"):
        fake.message_payload(text)
    interaction = await fake.send_command("summarize")
    await fake.wait_for(lambda: "Summary" in "".join(stack.visible(interaction)))
    [read] = fake.calls_to("GET", rf"/channels/{fake.channel_id}/messages$")
    assert read.query["limit"] == "50"
    sent = stack.openai.requests[-1]["messages"][-1]["content"]
    assert "release is on tuesday" in sent and "demo moved to wednesday" in sent


async def test_summarize_without_the_content_intent_says_why(
    make_stack: StackFactory,
) -> None:
    async with make_stack(refuse_intents=MESSAGE_CONTENT_INTENT) as stack:
        fake = stack.discord
        fake.message_payload("a message whose text the bot cannot read")
        interaction = await fake.send_command("summarize", {"messages": 5})
        shown = await fake.wait_for(lambda: stack.shown(interaction))
        assert shown == [NO_CONTENT_INTENT]
        assert not stack.openai.requests


async def test_long_text_file_is_read_up_to_the_limit_with_a_note(
    make_stack: StackFactory,
) -> None:
    async with make_stack(core={"parley_max_text_file_bytes": 2000}) as stack:
        fake = stack.discord
        body = ("BEGINNING " + "line of a long log\n" * 5000 + "THE END").encode()
        log_file = fake.attachment("build.log", "text/plain", body)
        await fake.send_message("why did it fail?", mention_bot=True, attachments=[log_file])
        note = f"_{sentences.file_truncated('build.log', 2000)}_"
        await fake.wait_for(
            lambda: any(
                note in t for t in fake.channel_messages(fake.channel_id, author_id=fake.bot.id)
            )
        )
        sent = stack.openai.requests[-1]["messages"][-1]["content"]
        assert "BEGINNING" in sent and "THE END" not in sent
        assert fake.file_requests == [(f"{log_file['id']}-build.log", "bytes=0-2000")]


async def test_help_lists_the_slash_commands(stack: Stack) -> None:
    interaction = await stack.discord.send_command("help")
    shown = await stack.discord.wait_for(lambda: stack.shown(interaction))
    assert "/ask" in shown[0] and "/summarize" in shown[0]


async def test_blocked_channel_gets_an_ephemeral_refusal(make_stack: StackFactory) -> None:
    blocked: dict[str, Callable[[FakeDiscord], Any]] = {
        "blocked_channels": lambda fake: [int(fake.other_channel_id)]
    }
    async with make_stack(
        settings_for=lambda fake: {k: f(fake) for k, f in blocked.items()}
    ) as stack:
        fake = stack.discord
        interaction = await fake.send_command(
            "ask", {"prompt": "hi"}, channel_id=fake.other_channel_id
        )
        shown = await fake.wait_for(lambda: stack.shown(interaction))
        assert shown == ["Parley is not enabled in this channel."]
        callback = fake.calls_to("POST", r"/callback$")[0]
        assert callback.body["type"] == 4 and callback.body["data"]["flags"] & EPHEMERAL
        assert not stack.openai.requests


# --- start-up -----------------------------------------------------------------------------


async def test_rejected_token_stops_start_up_naming_the_variable(tmp_path: Any) -> None:
    async with FakeDiscord() as fake:
        fake.fail("GET", r"^/users/@me$", status=401)
        settings = DiscordSettings(
            _env_file=None,  # type: ignore[call-arg]
            token="wrong",  # type: ignore[arg-type]
            api_url=fake.api_url,
            gateway_url=fake.gateway_url,
        )
        adapter = DiscordAdapter(
            settings,
            service=None,  # type: ignore[arg-type]
            attachments=AttachmentPolicy(1000, 1000),
            log_content=False,
        )
        with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
            await adapter.start()
        assert not fake.identifies


async def test_refused_message_content_intent_reconnects_without_it(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="parley.discord")
    async with make_stack(refuse_intents=MESSAGE_CONTENT_INTENT) as stack:
        fake = stack.discord
        assert fake.identifies[0]["intents"] & MESSAGE_CONTENT_INTENT
        assert not fake.identifies[-1]["intents"] & MESSAGE_CONTENT_INTENT
        lines = [r.getMessage() for r in caplog.records if "Message Content" in r.getMessage()]
        assert len(lines) == 1 and "Privileged Gateway Intents" in lines[0]
        interaction = await fake.send_command("ask", {"prompt": "still works"})
        await fake.wait_for(lambda: stack.visible(interaction) == [stack.said("still works")])


# --- stopping -----------------------------------------------------------------------------


async def test_stop_takes_no_new_events_and_cut_answers_say_so(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter, "STOP_GRACE_SECONDS", 0.3)
    async with make_stack(latency=0.05) as stack:
        fake = stack.discord
        long = "[[fault:long_answer:2000]] write at length"
        interaction = await fake.send_command("ask", {"prompt": long})
        mention = await fake.send_message(long, mention_bot=True)

        def bot_said() -> list[str]:
            return fake.channel_messages(fake.channel_id, author_id=fake.bot.id)

        await fake.wait_for(lambda: bot_said() and any(stack.visible(interaction)))

        stopping = asyncio.create_task(stack.adapter.stop())
        await asyncio.sleep(0.05)
        late = await fake.send_command("ask", {"prompt": "too late"})
        late_mention = await fake.send_message("too late as well", mention_bot=True)
        await fake.wait_for(lambda: stack.shown(late))
        await stopping

        assert stack.visible(late) == [RESTARTING]
        assert fake.calls_to("POST", r"/callback$")[-1].body["data"]["flags"] & EPHEMERAL
        assert len(stack.openai.requests) == 2, "nothing new reached the model"
        shown = stack.visible(interaction)
        assert len(shown) >= 2 and shown[-1] == RESTARTED and "thinking" not in shown[0]
        in_channel = fake.calls_to("POST", rf"/channels/{fake.channel_id}/messages$")
        assert RESTARTED in [c.content for c in in_channel]
        replies = {
            c.body["message_reference"]["message_id"]: c.content
            for c in in_channel
            if c.body.get("message_reference")
        }
        assert set(replies) == {int(mention["id"]), int(late_mention["id"])}
        assert replies[int(late_mention["id"])] == RESTARTING, "the late mention is told"
        assert not stack.adapter.failed.is_set()


# --- the connection ending for good -------------------------------------------------------


@pytest.mark.parametrize(
    ("fake_args", "expected"),
    [
        ({"identify_close_code": 4004}, discord.ConnectionClosed),
        ({"refuse_intents": MESSAGE_CONTENT_INTENT | 1}, discord.PrivilegedIntentsRequired),
    ],
)
async def test_connection_ending_for_good_is_signalled(
    tmp_path: Any, fake_args: dict[str, Any], expected: type[Exception]
) -> None:
    async with FakeDiscord(**fake_args) as fake:
        settings = DiscordSettings(
            _env_file=None,  # type: ignore[call-arg]
            token="x",  # type: ignore[arg-type]
            api_url=fake.api_url,
            gateway_url=fake.gateway_url,
        )
        discord_adapter = DiscordAdapter(
            settings,
            service=None,  # type: ignore[arg-type]
            attachments=AttachmentPolicy(1000, 1000),
            log_content=False,
        )
        await discord_adapter.start()
        try:
            failure = await asyncio.wait_for(discord_adapter.wait_failed(), 30)
            assert isinstance(failure, expected)
            assert discord_adapter.failed.is_set() and discord_adapter.failure is failure
        finally:
            await discord_adapter.stop()


async def test_a_failed_final_edit_of_a_mention_answer_is_not_left_silent(
    make_stack: StackFactory,
) -> None:
    # The answer streams for about 3 s, long enough for a first part to be posted within the
    # channel's write budget, so the final write is an edit.
    async with make_stack(latency=0.04) as stack:
        fake = stack.discord
        fake.fail("PATCH", rf"/channels/{fake.channel_id}/messages/\d+$", status=400, times=1000)
        await fake.send_message("explain streaming [[fault:long_answer:350]]", mention_bot=True)
        said = await fake.wait_for(
            lambda: [
                t
                for t in fake.channel_messages(fake.channel_id, author_id=fake.bot.id)
                if "went wrong" in t
            ]
        )
        assert said == [GENERIC_FAILURE]


async def test_answers_beyond_the_cap_wait_their_turn(make_stack: StackFactory) -> None:
    async with make_stack(settings_for=lambda fake: {"max_concurrent_answers": 1}) as stack:
        at_once = AnswersAtOnce(stack.parley.service)
        fake = stack.discord
        asked = [await fake.send_command("ask", {"prompt": f"question {n}"}) for n in range(3)]
        for n, interaction in enumerate(asked):
            await fake.wait_for(
                lambda i=interaction, n=n: f"question {n}" in "".join(stack.visible(i))  # type: ignore[misc]
            )
        assert at_once.most == 1
