"""`parley chat` in a pseudo-terminal as a person uses it: line editing and history, pastes,
Ctrl-C, /help, Markdown; and piped into it as a script does."""

from __future__ import annotations

import asyncio
import re

import pexpect
import pytest

from adapters.standin.server import StandinServer
from tests.e2e.test_chat_cli import PARLEY, PROMPT, chat_env, spawn

LEFT = "\x1b[D"
UP = "\x1b[A"
CTRL_C, CTRL_D, CTRL_L, CTRL_R = "\x03", "\x04", "\x0c", "\x12"
ALT_ENTER = "\x1b\r"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def paste(text: str) -> str:
    """``text`` as a terminal with bracketed paste sends it."""
    return f"\x1b[200~{text}\x1b[201~"


def user_texts(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


def test_line_editing_history_and_keys(tmp_path):
    child = spawn(tmp_path)
    child.expect_exact(PROMPT)
    child.send(f"abc{LEFT}{LEFT}X\r")  # arrow keys move the cursor, not print ^[[D
    child.expect("You said: aXbc *\r")
    child.expect_exact(PROMPT)
    child.send(f"zz{CTRL_L}y\r")  # Ctrl-L clears the screen and keeps the line
    child.expect_exact("\x1b[2J")
    child.expect("You said: zzy *\r")
    child.expect_exact(PROMPT)
    child.send(f"{UP}{UP}!\r")  # history: two back is "aXbc"
    child.expect("You said: aXbc! *\r")
    child.expect_exact(PROMPT)
    child.send(CTRL_D)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "^[[" not in child.before and "Traceback" not in child.before

    again = spawn(tmp_path)  # the history outlives the session, and Ctrl-R searches it
    again.expect_exact(PROMPT)
    again.send(f"{CTRL_R}zz")
    again.expect(r"reverse-i-search\)`zz': \S*zz\S*y")
    again.send("\r")
    again.expect("You said: zzy *\r")
    again.expect_exact(PROMPT)
    again.send("half typed")
    again.send(CTRL_C)  # drops the typed line
    again.send(CTRL_C)  # on an empty line: leaves
    again.expect(pexpect.EOF)
    again.close()
    assert again.exitstatus == 0


def test_help_is_a_table_and_every_command_it_lists_works(tmp_path):
    child = spawn(tmp_path)
    child.expect_exact(PROMPT)
    child.send("/he\t")  # Tab completes the command
    child.expect(r"/he\S*lp")
    child.send("\r")
    child.expect_exact("Parley commands")
    child.expect_exact("What it does")
    for shown in (
        "/reset",
        "/clear",
        "/system [prompt]",
        "/temperature [value]",
        "/temp",
        "/summarize [messages]",
        "/summarise",
        "/quit",
        "/exit",
    ):
        child.expect_exact(shown)
    child.expect_exact(PROMPT)
    for command, reply in [
        ("/model", "gpt-4o"),
        ("/temp 0.5", "0.5"),
        ("/json", "off"),
        ("/system", "System prompt"),
        ("/usage", "This channel"),
        ("/summarise", "nothing to summarise"),
        ("/memory", "remembers nothing"),
        ("/remember we ship on Thursdays", "Remembered as fact 1"),
        ("/forget 1", "Forgot fact 1"),
        ("/clear", "Done: I forgot"),
        ("/reset", "Done: I forgot"),
        ("/nonsense", "Unknown command"),
    ]:
        child.send(f"{command}\r")
        child.expect(reply, timeout=15)
        child.expect_exact(PROMPT)
    child.send("/exit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_markdown_is_rendered_on_a_terminal_and_not_without_colour(tmp_path):
    child = spawn(tmp_path)
    child.expect_exact(PROMPT)
    child.send("say **loud** and `code`\r")
    child.expect_exact("(offline stand-in): ")  # the usage line after the answer
    shown = [line for line in child.before.splitlines() if "You said: say" in line][-1]
    child.expect_exact(PROMPT)
    assert ANSI.sub("", shown).strip().endswith("You said: say loud and code")
    assert "**" not in shown and "`" not in shown
    assert "\x1b[1mloud" in shown  # bold
    child.send("/quit\r")
    child.expect(pexpect.EOF)

    plain = spawn(tmp_path, NO_COLOR="1")
    plain.expect_exact(PROMPT)
    plain.send("say **loud**\r")
    plain.expect_exact("You said: say **loud**")
    plain.send("/quit\r")
    plain.expect(pexpect.EOF)


@pytest.mark.asyncio
async def test_a_paste_or_alt_enter_makes_one_message_and_ctrl_c_stops_only_the_answer(tmp_path):
    async with StandinServer(latency=0.05) as server:
        child = spawn(tmp_path, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-test")
        await child.expect_exact(PROMPT, async_=True)
        child.send(paste("first line\nsecond line") + "\r")
        await child.expect_exact("You said: first line", async_=True)
        await child.expect_exact(PROMPT, async_=True)
        child.send(f"one{ALT_ENTER}two\r")
        await child.expect_exact("You said: one", async_=True)
        await child.expect_exact(PROMPT, async_=True)
        assert [user_texts(r)[-1] for r in server.requests] == [
            "first line\nsecond line",
            "one\ntwo",
        ]

        child.send("a long one [[fault:long_answer:600]]\r")
        await child.expect_exact("Paragraph 2", async_=True)
        child.send(CTRL_C)
        await child.expect_exact("(answer stopped)", async_=True)
        await child.expect_exact(PROMPT, async_=True)
        child.send("and now?\r")
        await child.expect_exact("You said: and now?", async_=True)
        await child.expect_exact(PROMPT, async_=True)
        # The stopped question is out of the history the model sees: turns still alternate.
        roles = [m["role"] for m in server.requests[-1]["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
        assert user_texts(server.requests[-1]) == [
            "first line\nsecond line",
            "one\ntwo",
            "and now?",
        ]
        child.send("/quit\r")
        await child.expect(pexpect.EOF, async_=True)
        child.close()
        assert child.exitstatus == 0
        assert "Traceback" not in child.before


async def run(tmp_path, args, stdin="", **env):
    process = await asyncio.create_subprocess_exec(
        *PARLEY.split(),
        *args,
        cwd=str(tmp_path),
        env=chat_env(tmp_path, **env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    return process.returncode, out.decode(), err.decode()


@pytest.mark.asyncio
async def test_piped_chat_sends_consecutive_lines_as_one_message_in_plain_text(tmp_path):
    notes = "# Notes\n\nline **one**\nline two\n\n/usage\nthird\n"
    async with StandinServer() as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}
        status, out, err = await run(tmp_path, ["chat"], notes, **env)
        base_url = server.base_url
    assert status == 0, err
    assert [user_texts(r)[-1] for r in server.requests] == [
        "# Notes\n\nline **one**\nline two",
        "third",
    ]
    assert "You said: # Notes\n\nline **one**" in out  # raw Markdown: output is not a terminal
    assert "This channel: 1 model call" in out
    assert "\x1b[" not in out
    assert f"at {base_url}" in out  # which server it talks to


@pytest.mark.asyncio
async def test_ask_answers_from_arguments_or_stdin_and_exits_zero(tmp_path):
    status, out, err = await run(tmp_path, ["ask", "what", "is", "this?"])
    assert (status, out) == (0, "(offline stand-in model) You said: what is this?\n")
    assert "offline stand-in" in err

    status, out, _ = await run(tmp_path, ["ask"], "many\nlines\n\nof notes\n")
    assert (status, out) == (0, "(offline stand-in model) You said: many\nlines\n\nof notes\n")

    status, out, _ = await run(tmp_path, ["ask", "--json", "give me json"])
    assert status == 0
    import json

    assert json.loads(out)["answer"] == "(offline stand-in model) You said: give me json"


@pytest.mark.asyncio
async def test_ask_continues_a_named_conversation_and_reports_errors(tmp_path):
    async with StandinServer() as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}
        env["OPENAI_MAX_RETRIES"] = "0"
        assert (await run(tmp_path, ["ask", "--conversation", "n1", "I am Ann"], **env))[0] == 0
        status, out, _ = await run(
            tmp_path, ["ask", "--conversation", "n1", "--json", "me?"], **env
        )
        assert status == 0 and out.startswith("{")
        status, out, _ = await run(tmp_path, ["ask", "--conversation", "n1", "who?"], **env)
        assert (status, out) == (0, "(offline stand-in model) You said: who?\n")  # JSON off again
        assert user_texts(server.requests[-1]) == ["I am Ann", "me?", "who?"]
        assert "response_format" not in server.requests[-1]

        status, out, err = await run(tmp_path, ["ask", "fail [[fault:server_error]]"], **env)
        assert (status, out) == (1, "")
        assert "The model service had an error" in err
        assert "Traceback" not in err

    status, out, err = await run(tmp_path, ["ask"])
    assert (status, out) == (2, "")
    assert "nothing to ask" in err
