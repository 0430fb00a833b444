"""Slack, Discord and the terminal say the same thing in the same situation.

Each platform runs as people use it: Slack in HTTP mode through slack_bolt/slack_sdk against the
fake Slack (a DM with Parley), Discord through discord.py against the fake Discord (mentions in a
channel, slash commands), the terminal through ``ConsoleChat`` (and ``parley chat`` itself where
a real process is needed); the core runs on SQLite and the real openai client talks to the
stand-in model. Every expected text is composed from ``core.sentences``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import pytest

from adapters.console.chat import ConsoleChat
from adapters.console.render import ANSWER, Screen, TerminalAnswer, Where
from adapters.discord import adapter as discord_adapter
from adapters.discord.render import ChannelSurface, DiscordAnswer
from adapters.slack.render import SlackAnswer
from adapters.slack.translate import ReplyTarget
from adapters.standin.server import PREFIX, StandinServer
from bots.bootstrap import Parley, build
from core import sentences
from core.commands import BY_NAME, canonical
from core.delivery import Interval, deliver
from core.messages import Accepted, Attachment, FinalText, Inbound, Notice, ReplyEvent
from core.settings import Settings
from tests.fakes.empty_model import EmptyModel
from tests.fakes.slack_server import FakeSlack
from tests.integration.test_discord_adapter import Stack as DiscordStack

# The fake Discord stack is test_discord_adapter's fixture, reached by name (discord_stacks).
from tests.integration.test_discord_adapter import (
    StackFactory,
    _until_idle,
    make_stack,  # noqa: F401
)
from tests.integration.test_slack_http import ALICE, CHANNEL, DM
from tests.integration.test_slack_http import Stack as SlackStack
from tests.integration.test_slack_http import make_stack as slack_stack

PLATFORMS = ("slack", "discord", "terminal")
# A question whose answer streams for a while when the model is slow.
LONG_QUESTION = "tell me about " + " ".join(f"word{n}" for n in range(40))
BINARY = ("blob.bin", "application/octet-stream", b"\x00\x01\x02\x03 not text")


def said(text: str) -> str:
    """The stand-in model's answer to ``text``."""
    return f"{PREFIX} You said: {text}"


class Place(Protocol):
    """Where a person talks to Parley on one platform, and what they are shown there."""

    def model_requests(self) -> list[dict[str, Any]]:
        """The chat completions requests the model received, in order."""
        ...

    async def ask(self, text: str, *, files: Sequence[tuple[str, str, bytes]] = ()) -> str:
        """Say ``text`` (with ``files``) in the conversation; all the bot showed for it."""
        ...

    async def command(self, name: str, args: str = "") -> str:
        """Run command ``name`` in the platform's idiom; the reply the bot showed."""
        ...

    async def render(self, events: Sequence[ReplyEvent]) -> str:
        """Deliver ``events`` through the platform's renderer; what the bot showed."""
        ...


# --- Slack: a DM with Parley ------------------------------------------------------------------


class SlackPlace:
    def __init__(self, stack: SlackStack, model: EmptyModel | None) -> None:
        self.stack = stack
        self.slack = stack.slack
        self.model = model

    def model_requests(self) -> list[dict[str, Any]]:
        return self.model.requests if self.model else self.stack.standin.requests

    def _shown_since(self, before: int) -> str:
        return "\n".join(m.text for m in self.slack.bot_messages(DM)[before:])

    async def ask(self, text: str, *, files: Sequence[tuple[str, str, bytes]] = ()) -> str:
        before = len(self.slack.bot_messages(DM))
        extra: dict[str, Any] = {}
        if files:
            shared = [self.slack.add_file(name, data, mime) for name, mime, data in files]
            extra = {"subtype": "file_share", "files": shared}
        await self.stack.deliver(self.stack.message(text, channel=DM, channel_type="im", **extra))
        return self._shown_since(before)

    async def command(self, name: str, args: str = "") -> str:
        before = len(self.slack.bot_messages(DM))
        typed = f"!{name} {args}".strip()  # "!" marks a command that has an argument
        await self.stack.deliver(self.stack.message(typed, channel=DM, channel_type="im"))
        return self._shown_since(before)

    async def render(self, events: Sequence[ReplyEvent]) -> str:
        parent = self.slack.add_message(CHANNEL, f"<@{self.slack.bot_user_id}> hi", user=ALICE)
        target = ReplyTarget(CHANNEL, parent.ts, self.slack.team_id, ALICE)
        answer = SlackAnswer(self.stack.adapter.client, target, stream=True)
        await deliver(_stream(events), answer, Interval(0))
        return "\n".join(m.text for m in self.slack.thread(CHANNEL, parent.ts))


# --- Discord: mentions in a channel, slash commands -------------------------------------------


class DiscordPlace:
    def __init__(self, stack: DiscordStack, model: EmptyModel | None) -> None:
        self.stack = stack
        self.fake = stack.discord
        self.model = model

    def model_requests(self) -> list[dict[str, Any]]:
        return self.model.requests if self.model else self.stack.openai.requests

    def _bot_said(self) -> list[str]:
        return self.fake.channel_messages(self.fake.channel_id, author_id=self.fake.bot.id)

    async def ask(self, text: str, *, files: Sequence[tuple[str, str, bytes]] = ()) -> str:
        fake = self.fake
        before = len(self._bot_said())
        attachments = [fake.attachment(name, mime, data) for name, mime, data in files]
        mention = await fake.send_message(text, mention_bot=True, attachments=attachments)

        def replied() -> bool:
            return any(
                (c.body.get("message_reference") or {}).get("message_id") == int(mention["id"])
                for c in fake.calls_to("POST", rf"/channels/{fake.channel_id}/messages$")
            )

        await fake.wait_for(replied)
        await _until_idle(self.stack)
        return "\n".join(self._bot_said()[before:])

    async def command(self, name: str, args: str = "") -> str:
        options: dict[str, Any] = {}
        spec = BY_NAME.get(canonical(name))
        if args and spec is not None and spec.argument is not None:
            option = spec.argument if re.fullmatch(r"[a-z0-9_-]{1,32}", spec.argument) else "value"
            options[option] = int(args) if spec.name == "summarize" else args
        interaction = await self.fake.send_command(name, options, user=self.fake.moderator)
        await self.fake.wait_for(lambda: self.stack.shown(interaction))
        await _until_idle(self.stack)
        return "\n".join(self.stack.visible(interaction))

    async def render(self, events: Sequence[ReplyEvent]) -> str:
        client = self.stack.adapter.client
        assert client is not None
        channel = client.get_channel(int(self.fake.channel_id))
        assert channel is not None
        before = len(self._bot_said())
        await deliver(_stream(events), DiscordAnswer(ChannelSurface(channel)), Interval(0))  # type: ignore[arg-type]
        return "\n".join(self._bot_said()[before:])


# --- the terminal: ConsoleChat on the same core -----------------------------------------------


class TerminalPlace:
    def __init__(self, parley: Parley, standin: StandinServer, model: EmptyModel | None) -> None:
        self.out = io.StringIO()
        where = Where(parley.settings.parley_model, "the stand-in", offline=False)
        self.chat = ConsoleChat(parley.service, where, screen=Screen(self.out, rich=False))
        self.parley = parley
        self.standin = standin
        self.model = model

    def model_requests(self) -> list[dict[str, Any]]:
        return self.model.requests if self.model else self.standin.requests

    async def _printed(self, run: Callable[[], Any]) -> str:
        before = len(self.out.getvalue())
        await run()
        printed = self.out.getvalue()[before:].removeprefix(ANSWER)
        # Drop the usage line printed after an answer ("  [gpt-4o: 12 in / 9 out tokens, $...]").
        lines = [line for line in printed.splitlines() if not line.lstrip().startswith("[")]
        return "\n".join(lines).strip("\n")

    async def ask(self, text: str, *, files: Sequence[tuple[str, str, bytes]] = ()) -> str:
        if not files:
            return await self._printed(lambda: self.chat.handle(text))
        # A terminal has no files: an Inbound with attachments the core cannot read, shown by
        # the terminal's renderer as ConsoleChat shows every answer.
        attachments = tuple(Attachment(n, m, b"", kind="other") for n, m, _ in files)
        inbound = Inbound(self.chat.key, self.chat.author, text, attachments)
        answer = TerminalAnswer(self._write)
        return await self._printed(
            lambda: deliver(self.parley.service.answer(inbound), answer, Interval(0))
        )

    async def command(self, name: str, args: str = "") -> str:
        return await self._printed(lambda: self.chat.handle(f"/{name} {args}".strip()))

    async def render(self, events: Sequence[ReplyEvent]) -> str:
        answer = TerminalAnswer(self._write)
        return await self._printed(lambda: deliver(_stream(events), answer, Interval(0)))

    def _write(self, text: str) -> None:
        self.out.write(text)


async def _stream(events: Sequence[ReplyEvent]) -> AsyncIterator[ReplyEvent]:
    for event in events:
        yield event


@asynccontextmanager
async def terminal_place(tmp_path: Any, model: EmptyModel | None) -> AsyncIterator[TerminalPlace]:
    async with StandinServer() as standin:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            openai_base_url=model.base_url if model else standin.base_url,
            openai_api_key="test",  # type: ignore[arg-type]
            openai_max_retries=0,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/terminal.db",
        )
        parley = await build(settings)
        try:
            yield TerminalPlace(parley, standin, model)
        finally:
            await parley.close()


PlaceFactory = Callable[..., AbstractAsyncContextManager[Place]]


@pytest.fixture
def discord_stacks(request: pytest.FixtureRequest) -> StackFactory:
    """``async with discord_stacks(...) as stack``: test_discord_adapter's Discord stack."""
    factory: StackFactory = request.getfixturevalue("make_stack")
    return factory


@pytest.fixture
def open_place(tmp_path: Any, discord_stacks: StackFactory) -> PlaceFactory:
    """``async with open_place(platform, model=None) as place``: Parley on that platform,
    talking to the stand-in model (or to ``model``)."""

    @asynccontextmanager
    async def open_(platform: str, model: EmptyModel | None = None) -> AsyncIterator[Place]:
        overrides = {"openai_base_url": model.base_url} if model else {}
        if platform == "slack":
            async with FakeSlack() as fake, slack_stack(tmp_path, fake, core=overrides) as stack:
                yield SlackPlace(stack, model)
        elif platform == "discord":
            async with discord_stacks(core=overrides) as stack:
                yield DiscordPlace(stack, model)
        else:
            async with terminal_place(tmp_path, model) as place:
                yield place

    return open_


@pytest.fixture(params=PLATFORMS)
async def place(request: pytest.FixtureRequest, open_place: PlaceFactory) -> AsyncIterator[Place]:
    async with open_place(request.param) as opened:
        yield opened


def user_texts(request: dict[str, Any]) -> list[str]:
    return [str(m["content"]) for m in request["messages"] if m["role"] == "user"]


# --- 1. an empty answer -----------------------------------------------------------------------


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_an_empty_model_answer_gets_the_same_sentence(
    open_place: PlaceFactory, platform: str
) -> None:
    async with EmptyModel() as model, open_place(platform, model) as place:
        shown = await place.ask("say nothing at all")
        assert model.requests, "the question reached the model"
        assert shown == sentences.failure_text(sentences.MODEL_EMPTY_ANSWER)


@pytest.mark.parametrize("notes", [(), (sentences.file_unsupported("blob.bin"),)])
async def test_a_blank_final_answer_shows_the_empty_answer_mark(
    place: Place, notes: tuple[str, ...]
) -> None:
    events: list[ReplyEvent] = [Accepted(), *(Notice(n) for n in notes)]
    events.append(FinalText(" \n ", "gpt-4o"))
    shown = await place.render(events)
    assert shown == sentences.answer_text("", notes)
    assert shown.startswith(sentences.EMPTY_ANSWER)


# --- 2. an answer cut by shutdown ---------------------------------------------------------------


async def test_slack_answer_cut_by_shutdown_says_parley_restarted(tmp_path: Any) -> None:
    async with FakeSlack() as fake, slack_stack(tmp_path, fake) as stack:
        stack.adapter.stop_grace = 0.05
        stack.standin.latency = 0.2
        await stack.post(stack.message(LONG_QUESTION, channel=DM, channel_type="im"))
        await fake.wait_for(
            lambda: any("You said" in str(c.params.get("text")) for c in fake.called("chat.update"))
        )
        await stack.adapter.stop()
        shown = [m.text for m in fake.bot_messages(DM)]
        assert shown[-1] == sentences.failure_text(sentences.RESTARTED)
        assert shown[0].startswith(said("tell")) and "word39" not in shown[0]


async def test_discord_answer_cut_by_shutdown_says_parley_restarted(
    discord_stacks: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord_adapter, "STOP_GRACE_SECONDS", 0.05)
    async with discord_stacks(latency=0.2) as stack:
        fake = stack.discord
        await fake.send_message(LONG_QUESTION, mention_bot=True)

        def bot_said() -> list[str]:
            return fake.channel_messages(fake.channel_id, author_id=fake.bot.id)

        await fake.wait_for(lambda: any("You said" in text for text in bot_said()))
        await stack.adapter.stop()
        shown = bot_said()
        assert shown[-1] == sentences.failure_text(sentences.RESTARTED)
        assert shown[0].startswith(said("tell")) and "word39" not in shown[0]


async def test_terminal_answer_cut_by_shutdown_says_parley_restarted(tmp_path: Any) -> None:
    """The terminal's answer cut by the chat stopping (its task cancelled, as at shutdown).
    Ctrl-C is the terminal's own way to stop one answer: it says so and returns to the prompt."""
    async with terminal_place(tmp_path, None) as place:
        place.standin.latency = 0.2
        task = asyncio.create_task(place.chat.handle(LONG_QUESTION))
        for _ in range(500):
            if said("tell") in place.out.getvalue():
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        printed = place.out.getvalue()
        assert printed.rstrip().endswith(sentences.failure_text(sentences.RESTARTED))
        assert said("tell") in printed and "word39" not in printed


# --- 3. a file Parley cannot read ---------------------------------------------------------------


async def test_a_refused_file_is_noted_below_the_answer(place: Place) -> None:
    shown = await place.ask("what is in it?", files=[BINARY])
    note = sentences.file_unsupported(BINARY[0])
    assert shown == sentences.answer_text(said("what is in it?"), [note])
    assert all(BINARY[0] not in text for text in user_texts(place.model_requests()[-1]))


# --- 4. the model fails -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "sentence"),
    [
        ("server_error", sentences.MODEL_SERVER_ERROR),
        ("rate_limit:2", sentences.model_rate_limited(2)),
        ("quota", sentences.MODEL_QUOTA),
    ],
)
async def test_a_model_error_gets_the_same_sentence(
    place: Place, fault: str, sentence: str
) -> None:
    shown = await place.ask(f"[[fault:{fault}]] are you there?")
    assert shown == sentences.failure_text(sentence)
    assert len(place.model_requests()) == 1


# --- 5. commands: aliases, temperature, summaries -----------------------------------------------


def _on(platform: str, name: str) -> Any:
    return pytest.param(platform, name, id=f"{platform}-{name}")


@pytest.mark.parametrize(
    ("platform", "name"), [_on(p, n) for p in PLATFORMS for n in ("reset", "clear")]
)
async def test_reset_and_its_aliases_forget_the_conversation(
    open_place: PlaceFactory, platform: str, name: str
) -> None:
    async with open_place(platform) as place:
        await place.ask("remember the word mango")
        assert await place.command(name) == sentences.conversation_forgotten(2)
        await place.ask("which word did I ask you to remember?")
        request = place.model_requests()[-1]
        assert len(place.model_requests()) == 2, "commands never reach the model"
        assert not any("mango" in str(m["content"]) for m in request["messages"])


@pytest.mark.parametrize(
    ("platform", "name"), [_on(p, n) for p in PLATFORMS for n in ("temperature", "temp")]
)
async def test_temp_sets_the_temperature(
    open_place: PlaceFactory, platform: str, name: str
) -> None:
    async with open_place(platform) as place:
        assert await place.command(name, "0.3") == sentences.temperature_set(0.3)
        assert await place.command(name) == sentences.temperature_shown(0.3)
        await place.ask("hello")
        assert place.model_requests()[-1]["temperature"] == pytest.approx(0.3)


async def test_summarize_n_reads_exactly_the_last_n_messages_where_asked(place: Place) -> None:
    await place.ask("my first fruit is the apple")
    await place.ask("my second fruit is the banana")
    reply = await place.command("summarize", "2")
    assert len(place.model_requests()) == 3
    transcript = user_texts(place.model_requests()[-1])[-1]
    lines = transcript.splitlines()
    assert len(lines) == 2, transcript
    assert lines[0].endswith("my second fruit is the banana")
    assert lines[1].endswith(said("my second fruit is the banana"))
    assert "apple" not in transcript
    assert "Summary" in reply and "banana" in reply
