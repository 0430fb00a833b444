"""The terminal adapter's pieces that need no terminal: grouping piped input, labels, the
help table's commands, Markdown blocks that are final, JSON answers for scripts."""

from __future__ import annotations

import asyncio
import io

from adapters.console.ask import JsonAnswer
from adapters.console.chat import completions, help_rows, script_items
from adapters.console.render import Screen, Where, hard_breaks, settled_blocks
from core import commands
from core.messages import UsageReport
from core.service import ConversationService
from core.settings import Settings

USAGE = UsageReport("gpt-4o", 120, 30, 0.00105)


def test_piped_lines_are_one_message_until_a_command():
    text = "first\nsecond\n\nthird\n/usage\n  \nafter\n/reset now\n"
    assert list(script_items(text)) == ["first\nsecond\n\nthird", "/usage", "after", "/reset now"]
    assert list(script_items("")) == []


def test_every_command_the_help_lists_is_one_the_chat_takes():
    listed = [name for row in help_rows() for name in (row.usage, *row.aliases)]
    words = {name.split()[0].lstrip("/") for name in listed}
    assert words == {*commands.BY_NAME, *commands.ALIASES, "quit", "exit"}
    for word in words - {"quit", "exit"}:
        assert commands.canonical(word) in commands.BY_NAME
    assert {name for name, _ in completions()} == {f"/{w}" for w in words}


def test_stand_in_answers_carry_its_label_and_no_price():
    offline = Where("gpt-4o", "the offline stand-in", offline=True)
    online = Where("gpt-4o", "https://api.openai.com/v1", offline=False)
    assert offline.usage_line(USAGE) == "[gpt-4o (offline stand-in): 120 in / 30 out tokens]"
    assert online.usage_line(USAGE) == "[gpt-4o: 120 in / 30 out tokens, $0.00105]"
    assert "offline stand-in" in offline.banner()
    assert online.banner() == "Parley on gpt-4o at https://api.openai.com/v1."


def test_only_blocks_followed_by_a_blank_line_outside_code_are_final():
    assert settled_blocks("one paragraph, still growing") == 0
    assert settled_blocks("done.\n\nnext") == len("done.\n\n")
    fenced = "intro\n\n```py\nx = 1\n\ny = 2\n"
    assert settled_blocks(fenced) == len("intro\n\n")  # the blank line inside code is not an end
    assert settled_blocks(fenced + "```\n\nafter") == len(fenced + "```\n\n")


def test_command_replies_keep_their_line_breaks_but_not_inside_code_or_lists():
    assert hard_breaks("This channel: 1\nYou: 2") == "This channel: 1\\\nYou: 2"
    assert hard_breaks("a\n- item\n- item") == "a\n- item\n- item"
    assert hard_breaks("```\nx\ny\n```") == "```\nx\ny\n```"


def test_plain_screen_when_output_is_not_a_terminal():
    out = io.StringIO()
    screen = Screen(out)
    assert not screen.rich
    screen.markdown("**bold**")
    assert out.getvalue() == "**bold**\n"


async def test_json_answers_come_bare_with_notes_on_stderr():
    out, err = io.StringIO(), io.StringIO()
    answer = JsonAnswer(out.write, "", err.write)
    await answer.progress("ignored")
    await answer.finish('```json\n{\n  "a": 1\n}\n```\n\n_(a note)_')
    assert out.getvalue() == '{\n  "a": 1\n}\n'
    assert err.getvalue() == "_(a note)_\n"


async def test_a_start_up_waiting_for_the_prompt_is_let_go_before_piped_input_needs_it():
    from adapters.console.chat import ConsoleChat
    from tests.fakes.memory import MemoryStore, ScriptedModel

    shown = asyncio.Event()

    async def start() -> ConversationService:
        await shown.wait()  # as `parley chat` starts its core
        return ConversationService(MemoryStore(), ScriptedModel(), Settings(_env_file=None))

    out = io.StringIO()
    service = asyncio.ensure_future(start())
    chat = ConsoleChat(
        service, Where("gpt-4o", "test", offline=False), screen=Screen(out), shown=shown
    )
    code = await asyncio.wait_for(chat.run(io.StringIO("hello\n")), timeout=10)
    assert code == 0 and shown.is_set() and service.done()
