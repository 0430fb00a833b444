"""Cutting answers into Slack messages: every message fits once converted, nothing is lost, and
text already shown in a message never moves into the next while the answer grows."""

from __future__ import annotations

import re

import pytest

from adapters.slack.layout import LIMIT, Layout, fit, open_fence
from adapters.slack.mrkdwn import to_markdown_text, to_mrkdwn

# Escaping makes this answer grow: "&" becomes "&amp;", "<" "&lt;", ">" "&gt;".
HEAVY = "\n\n".join(
    [
        "Compare a && b <with> c >> d & e " * 12,
        "```python\n" + "if a < b and c > d and e & f:\n    x = y << 2\n" * 30 + "```",
        "<<>>&&" * 300,
        "Then `a < b` holds & the rest follows.",
    ]
    * 4
)
_FENCE_LINE = re.compile(r"^\s*(```+|~~~+)[^\n]*$", re.MULTILINE)


def sent_lengths(piece: str) -> tuple[int, int]:
    return len(to_mrkdwn(piece)), len(to_markdown_text(piece))


def without_fences(text: str) -> str:
    """The text minus fence lines and blank space: what pieces must carry between them."""
    return re.sub(r"\s+", "", _FENCE_LINE.sub("", text))


def test_a_heavy_answer_grows_past_the_limit_when_escaped() -> None:
    assert len(HEAVY) > 3 * LIMIT
    assert len(to_mrkdwn(HEAVY)) > len(HEAVY) * 1.2


def test_every_piece_fits_after_conversion_and_nothing_is_lost() -> None:
    pieces = fit(HEAVY)
    assert len(pieces) > 3
    for piece in pieces:
        assert max(sent_lengths(piece)) <= LIMIT
        assert open_fence(piece) is None or piece is pieces[-1]
    assert without_fences("".join(pieces)) == without_fences(HEAVY)


def test_a_piece_that_does_not_grow_uses_the_whole_limit() -> None:
    plain = "word " * 2000
    pieces = fit(plain)
    assert len(pieces) == 3 and len(pieces[0]) > LIMIT - 20


@pytest.mark.parametrize("step", [29, 997])
def test_while_streaming_shown_text_stays_and_earlier_messages_never_change(step: int) -> None:
    layout = Layout()
    shown: list[str] = []
    for end in range(step, len(HEAVY) + step, step):
        pieces = layout.pieces(HEAVY[:end], final=False)
        for index, before in enumerate(shown):
            if index < len(shown) - 1:
                # A message followed by another one never changes again.
                assert pieces[index] == before
            else:
                # The last message only grows (its text may be closed by a fence).
                assert pieces[index].startswith(before)
        for piece in pieces[len(shown) - 1 :]:  # the others were checked when they were new
            assert max(sent_lengths(piece)) <= LIMIT
        shown = pieces
    final = layout.pieces(HEAVY, final=True)
    assert final[: len(shown) - 1] == shown[:-1]
    assert all(max(sent_lengths(piece)) <= LIMIT for piece in final)
    assert without_fences("".join(final)) == without_fences(HEAVY)


def test_a_cut_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "```python\n" + "x = 1  # & < >\n" * 600 + "```\nafter"
    pieces = fit(code)
    assert len(pieces) >= 2
    assert pieces[0].rstrip().endswith("```") and open_fence(pieces[0]) is None
    assert pieces[1].startswith("```python\n")
    assert pieces[-1].endswith("after")


def test_a_replaced_answer_is_laid_out_anew() -> None:
    layout = Layout()
    layout.pieces("a " * 3000, final=False)
    assert layout.pieces("short", final=True) == ["short"]


def test_blank_text_is_no_piece() -> None:
    assert fit("  \n ") == []
