"""The terminal adapter: `parley chat` talks to the same core as Slack and Discord.

Lines starting with "/" are the core's commands (/help, /reset, /usage ...); anything else is
a message. The answer streams to stdout as the model writes it.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
import threading
from typing import TextIO

from core.messages import (
    Author,
    ConversationKey,
    FinalText,
    Inbound,
    Notice,
    TextDelta,
    UsageReport,
    UserError,
)
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
        streamed = ""
        async for event in self.service.answer(inbound):
            if isinstance(event, TextDelta):
                streamed += event.text
                self._write(event.text)
            elif isinstance(event, FinalText):
                # the final text may add to what streamed (e.g. a note that it was cut off)
                rest = event.text[len(streamed) :] if event.text.startswith(streamed) else ""
                self._write(rest if streamed else event.text)
                self._write("\n")
            elif isinstance(event, UsageReport):
                self._write(
                    f"  [{event.model}: {event.input_tokens} in / {event.output_tokens} out tokens,"
                    f" ${event.cost_usd:.5f}]\n"
                )
            elif isinstance(event, Notice):
                self._write(f"  (note: {event.text})\n{ANSWER if not streamed else ''}")
            elif isinstance(event, UserError):
                if streamed:
                    self._write("\n")
                self._write(f"! {event.text}\n")
