"""The interactive prompt (prompt_toolkit): line editing, persistent history with Ctrl-R search,
Ctrl-L to clear, bracketed paste (a paste stays one message), Alt-Enter for a new line, and Tab
completion of the slash commands."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.filters import is_searching
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.search import accept_search

PROMPT = "you> "
CONTINUATION = "...  "
KEYS = (
    ("Enter", "send"),
    ("Alt-Enter", "new line"),
    ("Tab", "complete a command"),
    ("↑/↓, Ctrl-R", "history"),
    ("Ctrl-C", "stop an answer"),
    ("Ctrl-D", "quit"),
)


class Quit(Exception):
    """The user asked to leave at the prompt (Ctrl-C on an empty line)."""


class SlashCompleter(Completer):
    """Completes "/..." at the start of the input with the command names, and a summary."""

    def __init__(self, commands: Sequence[tuple[str, str]]) -> None:
        self.commands = commands

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        typed = document.text_before_cursor
        if not typed.startswith("/") or any(c.isspace() for c in typed):
            return
        for name, summary in self.commands:
            if name.startswith(typed.lower()):
                yield Completion(name, start_position=-len(typed), display_meta=summary)


def _bindings() -> KeyBindings:
    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _new_line(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    @keys.add("enter", filter=is_searching)
    def _send_found(event: KeyPressEvent) -> None:
        # Like a shell's Ctrl-R: Enter sends the line found.
        accept_search()
        event.app.current_buffer.validate_and_handle()

    @keys.add("c-c")
    def _interrupt(event: KeyPressEvent) -> None:
        # Like a shell: Ctrl-C drops what is typed; on an empty line it leaves.
        buffer = event.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            event.app.exit(exception=Quit())

    return keys


def prompt_session(
    history_file: Path | None, commands: Sequence[tuple[str, str]]
) -> PromptSession[str]:
    """A prompt with the chat's keys, its history kept in ``history_file`` (None: in memory)."""
    history: History = InMemoryHistory()
    if history_file is not None:
        try:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            history_file.touch(mode=0o600, exist_ok=True)
            history = FileHistory(str(history_file))
        except OSError:
            pass  # an unwritable home: the history lasts this session only
    return PromptSession(
        PROMPT,
        history=history,
        completer=SlashCompleter(commands),
        complete_while_typing=False,
        key_bindings=_bindings(),
        prompt_continuation=CONTINUATION,
        enable_open_in_editor=False,
    )
