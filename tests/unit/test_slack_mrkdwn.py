"""Markdown to Slack mrkdwn, and Slack markup to plain text."""

from __future__ import annotations

import pytest

from adapters.slack.mrkdwn import to_mrkdwn, to_plain


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __also bold__", "*bold* and *also bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("***both***", "*_both_*"),
        ("~~gone~~", "~gone~"),
        ("[the docs](https://example.com/a?b=1)", "<https://example.com/a?b=1|the docs>"),
        ("[x](https://e.com/?a=1&b=2)", "<https://e.com/?a=1&amp;b=2|x>"),
        ("![a chart](https://e.com/c.png)", "<https://e.com/c.png|a chart>"),
        ("<https://auto.link/x>", "<https://auto.link/x>"),
        ("# Title", "*Title*"),
        ("### A **bold** title ###", "*A bold title*"),
        ("- one\n- two", "• one\n• two"),
        ("* one\n  + nested", "• one\n  • nested"),
        ("- [ ] todo\n- [x] done", "• ☐ todo\n• ☑ done"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("> quoted *it*", "> quoted _it_"),
        ("---", "──────────"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("`x < y` and `**not bold**`", "`x &lt; y` and `**not bold**`"),
        ("snake_case_name stays", "snake_case_name stays"),
        ("2 * 3 * 4", "2 * 3 * 4"),
        ("hi <@U123ABC> in <#C0GENERAL>", "hi <@U123ABC> in <#C0GENERAL>"),
        ("ping <!here> and <!channel>", "ping &lt;!here&gt; and &lt;!channel&gt;"),
    ],
)
def test_inline_and_block_markup(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_code_blocks_are_kept_verbatim_but_escaped_and_lose_their_language() -> None:
    markdown = "Look:\n```python\nif a < b and **c**:\n    # not a heading\n```\nafter **bold**"
    assert to_mrkdwn(markdown) == (
        "Look:\n```\nif a &lt; b and **c**:\n    # not a heading\n```\nafter *bold*"
    )


def test_unclosed_code_block_of_a_partial_answer_stays_code() -> None:
    assert to_mrkdwn("```\n- not a list\n**x**") == "```\n- not a list\n**x**"


def test_tiled_fences_and_longer_fences() -> None:
    assert to_mrkdwn("~~~\n# x\n~~~\n# y") == "```\n# x\n```\n*y*"
    assert to_mrkdwn("````\n```\ninner\n````") == "```\n```\ninner\n```"


def test_tables_become_code_blocks() -> None:
    markdown = "| a | b |\n|---|:-:|\n| 1 | <2> |\nafter"
    assert to_mrkdwn(markdown) == "```\n| a | b |\n|---|:-:|\n| 1 | &lt;2&gt; |\n```\nafter"


def test_link_labels_cannot_break_the_link() -> None:
    assert to_mrkdwn("[a|b](https://e.com/x>y)") == "<https://e.com/x%3Ey|a/b>"


def test_slack_markup_to_plain_text() -> None:
    text = (
        "<@UBOT> hi <@U1|bob>, see <#C1|general> and <https://a.b|the site> or <https://c.d> "
        "or <mailto:x@y.z|x@y.z>; 1 &lt; 2 &amp;&amp; 3 &gt; 2 <!here>"
    )
    assert to_plain(text, "UBOT") == (
        "hi @bob, see #general and the site (https://a.b) or https://c.d or x@y.z; "
        "1 < 2 && 3 > 2 @here"
    )


def test_only_the_bot_mention_is_removed() -> None:
    assert to_plain("<@UBOT> ask <@U2>", "UBOT") == "ask @U2"
    assert to_plain("<@UBOT>", "UBOT") == ""
