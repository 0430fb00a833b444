"""The terminal adapter: `parley chat` talks to the same core as Slack and Discord.

Lines starting with "/" are the core's commands (/help, /reset, /usage ...); anything else is
a message. The answer streams to stdout as the model writes it.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from core import sentences
from core.delivery import Interval, deliver
from core.messages import Author, ConversationKey, Inbound
from core.service import ConversationService

PROMPT = "you> "
ANSWER = "parley> "
QUIT = {"/quit", "/exit", ":q"}


def _read_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Feed stdin lines to the event loop from a daemon thread (so exit never waits on it)."""
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
    loop.call_soon_threadsafe(queue.put_nowait, None)


class ConsoleChat:
    """A read-answer loop on stdin/stdout."""

    def __init__(
        self,
        service: ConversationService,
        *,
        session: str = "terminal",
        out: TextIO = sys.stdout,
    ) -> None:
        self.service = service
        self.out = out
        self.key = ConversationKey("console", "local", session)
        user = getpass.getuser()
        self.author = Author(id=user, name=user)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=_read_lines, args=(loop, queue), daemon=True).start()
        while True:
            self._write(PROMPT)
            line = await queue.get()
            if line is None:
                self._write("\n")
                return
            line = line.strip()
            if not line:
                continue
            if line in QUIT:
                return
            await self.handle(line)

    async def handle(self, line: str) -> None:
        if line.startswith("/"):
            name, _, args = line[1:].strip().partition(" ")
            reply = await self.service.command(self.key, self.author, name, args)
            self._write(f"{reply.text}\n")
            return
        inbound = Inbound(self.key, self.author, line)
        self._write(ANSWER)
        done = await deliver(self.service.answer(inbound), TerminalAnswer(self._write), Interval(0))
        if done.usage is not None:
            usage = done.usage
            self._write(
                f"  [{usage.model}: {usage.input_tokens} in / {usage.output_tokens} out tokens,"
                f" {sentences.cost_text(usage.cost_usd, estimated=usage.estimated)}]\n"
            )


class TerminalAnswer:
    """``core.delivery.Renderer`` on a terminal: the answer is printed as it grows."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._printed = ""

    async def start(self) -> None:
        return None

    async def progress(self, text: str) -> None:
        self._write(text[len(self._printed) :])
        self._printed = text

    async def finish(self, text: str) -> None:
        # The final text may add to what streamed (notes, "cut off"), or differ (JSON mode).
        if text.startswith(self._printed):
            self._write(text[len(self._printed) :] + "\n")
        else:
            self._write(("\n" if self._printed else "") + text + "\n")

    async def fail(self, text: str) -> None:
        self._write(("\n" if self._printed else "") + text + "\n")
