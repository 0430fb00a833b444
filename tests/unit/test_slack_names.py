"""The name Slack shows for a person, as the model reads it."""

from __future__ import annotations

from adapters.slack.translate import display_name


def test_the_display_name_comes_first_then_the_full_name_then_the_handle() -> None:
    profile = {"display_name": " Ada ", "real_name": "Ada Lovelace"}
    assert display_name({"name": "ada", "profile": profile}) == "Ada"
    profile = {"display_name": "", "real_name": "Ada Lovelace"}
    assert display_name({"name": "ada", "profile": profile}) == "Ada Lovelace"
    assert display_name({"name": "ada", "real_name": "A. L."}) == "A. L."
    assert display_name({"name": "ada", "profile": "not a mapping"}) == "ada"
    assert display_name({"id": "U1"}) == ""
