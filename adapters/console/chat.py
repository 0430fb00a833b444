"""The terminal adapter: `parley chat` talks to the same core as Slack and Discord.

On a terminal it is an interactive chat (``adapters.console.prompt``) whose answers render as
Markdown while they stream; Ctrl-C stops an answer and returns to the prompt. With input piped
in, consecutive lines form one message and a line starting with "/" is a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import re
import signal
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from adapters.console.render import HelpRow, Screen, TerminalAnswer, Where
from core import commands
from core.delivery import Interval, deliver
from core.messages import AudioFile, Author, ConversationKey, Inbound

if TYPE_CHECKING:
    from core.service import ConversationService

QUIT = {"/quit", "/exit", ":q"}
QUIT_SUMMARY = "Leave the chat (or Ctrl-D)."
# How often a streaming answer is redrawn on a terminal (each redraw renders its Markdown).
REDRAW_SECONDS = 0.05


def console_author() -> Author:
    """The person at this terminal, by their login name."""
    user = getpass.getuser()
    return Author(id=user, name=user)


def aliases() -> dict[str, tuple[str, ...]]:
    """Each command's other names, as the core accepts them."""
    found: dict[str, list[str]] = {}
    for alias, name in sorted(commands.ALIASES.items()):
        found.setdefault(name, []).append(f"/{alias}")
    return {name: tuple(names) for name, names in found.items()}


def help_rows() -> list[HelpRow]:
    """Every command the chat takes, with its slash: the core's, then the terminal's own."""
    others = aliases()
    rows = [
        HelpRow(f"/{spec.usage}", others.get(spec.name, ()), spec.summary)
        for spec in commands.COMMANDS
    ]
    rows.append(HelpRow("/quit", ("/exit",), QUIT_SUMMARY))
    return rows


def completions() -> list[tuple[str, str]]:
    """What Tab completes: every command name and alias, with what it does."""
    summaries = {spec.name: spec.summary for spec in commands.COMMANDS}
    names = [(f"/{spec.name}", spec.summary) for spec in commands.COMMANDS]
    names += [(f"/{alias}", summaries[name]) for alias, name in commands.ALIASES.items()]
    return sorted([*names, ("/quit", QUIT_SUMMARY), ("/exit", QUIT_SUMMARY)])


def script_items(text: str) -> Iterator[str]:
    """Piped input as the chat takes it: a line starting with "/" is a command, and the lines
    between commands are one message (so a piped file is one message, not one per line)."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("/"):
            if "\n".join(lines).strip():
                yield "\n".join(lines).strip()
            lines = []
            yield line.strip()
        else:
            lines.append(line)
    if "\n".join(lines).strip():
        yield "\n".join(lines).strip()


def save_audio(audio: AudioFile, directory: Path) -> Path:
    """Write ``audio`` into ``directory`` under its name, numbered so no file is overwritten
    (parley-answer.mp3, parley-answer-2.mp3, ...); returns the path."""
    stem, dot, extension = audio.name.rpartition(".")
    for number in range(1, 10_000):
        name = audio.name if number == 1 else f"{stem}-{number}{dot}{extension}"
        path = directory / name
        try:
            with path.open("xb") as file:
                file.write(audio.data)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"too many audio files in {directory}")


class ConsoleChat:
    """One terminal conversation: reads messages and commands, shows answers and replies."""

    def __init__(
        self,
        service: ConversationService | asyncio.Future[ConversationService],
        where: Where,
        *,
        session: str = "terminal",
        screen: Screen | None = None,
        history_file: Path | None = None,
        audio_dir: Path | None = None,
        shown: asyncio.Event | None = None,
    ) -> None:
        """``service`` may still be starting (a future): the prompt shows at once, and the
        first message waits for it. ``shown`` is set once the first prompt is on the screen
        (with piped input: before the input is read), so a start-up can wait for it. Audio
        files (``/speak``) are written to ``audio_dir`` (the working directory when not given)."""
        self.audio_dir = audio_dir
        self.shown = shown or asyncio.Event()
        self._service = service
        self.where = where
        self.screen = screen or Screen()
        self.history_file = history_file
        self.key = ConversationKey("console", "local", session)
        self.author = console_author()
        self._answer: TerminalAnswer | None = None
        self._stopped = False

    async def service(self) -> ConversationService:
        if isinstance(self._service, asyncio.Future):
            # shielded: Ctrl-C while waiting stops the wait, not the start-up
            return await asyncio.shield(self._service)
        return self._service

    async def run(self, stdin: TextIO | None = None) -> int:
        """Chat until the user leaves (interactive) or the piped input ends."""
        stdin = stdin or sys.stdin
        self.screen.note(f"{self.where.banner()} /help for commands, /quit to leave.")
        if stdin.isatty() and self.screen.console.is_terminal:
            await self.interactive()
            return 0
        self.shown.set()
        await self.service()
        for item in script_items(await asyncio.to_thread(stdin.read)):
            if not await self.handle(item):
                break
        return 0

    async def interactive(self) -> None:
        """Prompt until the user leaves; a start-up that fails ends the prompt with its error."""
        from adapters.console.prompt import Quit, prompt_session

        session = prompt_session(self.history_file, completions())

        starting = self._service

        def failed_start() -> None:
            if isinstance(starting, asyncio.Future) and starting.done():
                error = None if starting.cancelled() else starting.exception()
                if error is not None:
                    with contextlib.suppress(Exception):  # the prompt is not up: next one
                        session.app.exit(exception=error)

        def before_drawing() -> None:
            # called just before the prompt is drawn, in the same step of the loop
            asyncio.get_running_loop().call_soon(self.shown.set)
            failed_start()

        if isinstance(starting, asyncio.Future):
            starting.add_done_callback(lambda _future: failed_start())
        while True:
            try:
                text = await session.prompt_async(pre_run=before_drawing)
            except (EOFError, Quit):
                return
            if not await self.interruptible(self.handle(text)):
                return

    async def interruptible(self, work: Coroutine[Any, Any, bool]) -> bool:
        """Run ``work``; Ctrl-C stops it (the answer so far stays, marked as stopped) and
        the chat goes on. True unless the user asked to leave."""
        task = asyncio.ensure_future(work)
        self._stopped = False
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, self._stop, task)
        try:
            return await task
        except asyncio.CancelledError:
            if not self._stopped:
                raise
            if self._answer is None:
                self.screen.note("(stopped)", "dim italic")
            return True
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)

    def _stop(self, task: asyncio.Future[bool]) -> None:
        self._stopped = True
        if self._answer is not None:
            self._answer.stopped = True
        task.cancel()

    async def handle(self, text: str) -> bool:
        """One message or command; False when it asks to leave."""
        text = text.strip()
        if not text:
            return True
        if text.lower() in QUIT:
            return False
        if text.startswith("/"):
            name, args = (re.split(r"\s+", text[1:], maxsplit=1) + [""])[:2]
            await self.command(name, args)
        else:
            await self.send(text)
        return True

    async def command(self, name: str, args: str) -> None:
        if commands.canonical(name) == "help":
            keys: tuple[tuple[str, str], ...] = ()
            if self.screen.rich:
                from adapters.console.prompt import KEYS

                keys = KEYS
            self.screen.help(help_rows(), keys)
            return
        reply = await (await self.service()).command(self.key, self.author, name, args)
        self.screen.markdown(reply.text)
        if reply.audio is not None:
            try:
                path = await asyncio.to_thread(
                    save_audio, reply.audio, self.audio_dir or Path.cwd()
                )
            except OSError as exc:
                self.screen.note(f"Could not save the audio file: {exc.strerror or exc}")
            else:
                self.screen.note(f"Audio saved to {path}")

    async def send(self, text: str) -> None:
        """Ask the model and show the answer as it streams, then what it used."""
        service = await self.service()
        inbound = Inbound(self.key, self.author, text)
        self._answer = self.screen.answer()
        pacing = Interval(REDRAW_SECONDS if self.screen.rich else 0)
        try:
            done = await deliver(service.answer(inbound), self._answer, pacing)
        finally:
            self._answer = None
        if done.usage is not None:
            self.screen.note(self.where.usage_line(done.usage))
