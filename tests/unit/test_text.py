"""Tokens, prices and message splitting."""

from __future__ import annotations

import pickle

import pytest

from core.pricing import cost_usd, price_for
from core.settings import DEFAULT_PRICES
from core.splitting import split_message
from core.tokens import count_message, count_text, encoding


def test_bundled_encoding_matches_known_token_ids():
    # "hello world" is [24912, 2375] in o200k_base
    assert encoding().encode("hello world") == [24912, 2375]
    assert count_text("") == 0
    assert count_message("hello world") == 2 + 3
    assert count_message("hi", images=1) > count_message("hi")


def test_the_encoding_keeps_no_python_copy_of_its_ranks_yet_still_pickles():
    held = encoding().__dict__.get("_mergeable_ranks")
    assert not isinstance(held, dict), "the ranks' Python dict outlived the encoding's build"
    copy = pickle.loads(pickle.dumps(encoding()))
    assert copy.encode("hello world") == [24912, 2375]
    assert copy.decode([24912, 2375]) == "hello world"


def test_prices_are_matched_by_exact_model_and_snapshot():
    assert price_for("gpt-4o-2024-08-06", DEFAULT_PRICES) == (2.5, 10.0)
    assert price_for("gpt-4o-2024-05-13", DEFAULT_PRICES) == (5.0, 15.0)  # launch price
    assert price_for("gpt-4o-mini", DEFAULT_PRICES) == (0.15, 0.6)
    assert price_for("gpt-4.1", DEFAULT_PRICES) == (2.0, 8.0)
    assert price_for("gpt-4.1-mini", DEFAULT_PRICES) == (0.4, 1.6)
    assert price_for("gpt-4.5-preview", DEFAULT_PRICES) == (75.0, 150.0)
    assert price_for("o3-mini", DEFAULT_PRICES) == (1.1, 4.4)
    # no prefix matching: an unknown snapshot or a look-alike name has no price
    assert price_for("gpt-4o-2099-01-01", DEFAULT_PRICES) is None
    assert price_for("gpt-4-some-proxy-alias", DEFAULT_PRICES) is None
    assert price_for("llama3", DEFAULT_PRICES) is None
    assert cost_usd("llama3", 1000, 1000, DEFAULT_PRICES) is None
    assert cost_usd("parley-standin", 10_000, 10_000, DEFAULT_PRICES) == 0.0
    assert cost_usd("gpt-4o", 1_000_000, 1_000_000, DEFAULT_PRICES) == pytest.approx(12.5)
    assert cost_usd("gpt-4", 1000, 500, DEFAULT_PRICES) == pytest.approx(0.06)


def test_short_text_is_one_piece():
    assert split_message("hello", 2000) == ["hello"]


def test_split_prefers_paragraphs_and_keeps_all_text():
    paragraphs = [f"Paragraph {i} " + "word " * 60 for i in range(20)]
    text = "\n\n".join(paragraphs)
    pieces = split_message(text, 2000)
    assert all(len(p) <= 2000 for p in pieces)
    assert all(p.startswith("Paragraph") for p in pieces)
    assert "".join(pieces).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(
        " ", ""
    )


def test_split_keeps_code_fences_balanced():
    code = "\n".join(f"    value_{i} = compute({i})" for i in range(400))
    text = f"Here is the code:\n\n```python\n{code}\n```\n\nThat is all."
    pieces = split_message(text, 2000)
    assert len(pieces) > 2
    for piece in pieces:
        assert len(piece) <= 2000
        assert piece.count("```") % 2 == 0
    assert pieces[1].startswith("```python\n")
    assert pieces[-1].rstrip().endswith("That is all.")


def test_split_with_long_fences_stays_within_the_limit():
    body = "\n".join(f"line {i} " + "x" * 30 for i in range(300))
    for fence in ("`````", "~~~~~~~~"):
        text = f"intro\n\n{fence}text\n{body}\n{fence}\n\nend"
        pieces = split_message(text, 2000)
        assert all(len(p) <= 2000 for p in pieces), [len(p) for p in pieces]
        assert all(p.count(fence) % 2 == 0 for p in pieces)
