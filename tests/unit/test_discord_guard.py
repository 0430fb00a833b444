"""What the Discord guards refuse before discord.py reads a payload."""

from __future__ import annotations

from adapters.discord.guard import interaction_problem, ready_problem

READY = {
    "session_id": "s",
    "resume_gateway_url": "wss://gateway.example",
    "user": {"id": "1", "username": "parley"},
    "guilds": [{"id": "2", "unavailable": True}],
}


def test_a_ready_payload_as_the_gateway_sends_it_passes() -> None:
    assert ready_problem(READY) is None


def test_malformed_ready_payloads_are_refused() -> None:
    assert ready_problem([]) == "not an object"
    assert ready_problem({**READY, "session_id": None}) == "no session"
    assert ready_problem({**READY, "resume_gateway_url": 5}) == "no resume URL"
    assert ready_problem({**READY, "user": {"id": "x", "username": "p"}}) == "no user"
    assert ready_problem({**READY, "guilds": [{"id": []}]}) == "no guilds"


def test_malformed_command_data_is_refused() -> None:
    good = {"name": "ask", "type": 1, "options": [{"name": "question", "type": 3, "value": "hi"}]}
    assert interaction_problem(good) is None
    assert interaction_problem(None) == "no command"
    assert interaction_problem({**good, "name": ["ask"]}) == "no command"
    assert interaction_problem({**good, "guild_id": {}}) == "no guild"
    assert interaction_problem({**good, "options": [{"name": {}}]}) == "malformed options"
    assert interaction_problem({**good, "resolved": {"users": 1}}) == "malformed resolved objects"
