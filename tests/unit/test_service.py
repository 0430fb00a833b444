"""The conversation service on in-memory fakes of its ports."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from core import commands
from core.errors import BrokenStream, RateLimited
from core.messages import (
    Accepted,
    Attachment,
    Author,
    ConversationKey,
    FinalText,
    Inbound,
    Notice,
    TextDelta,
    UsageReport,
    UserError,
)
from core.ports import ImageInput
from core.service import COMMAND_HANDLERS, ConversationService
from core.settings import Settings
from tests.fakes.memory import MemoryStore, ScriptedModel

KEY = ConversationKey("test", "w1", "c1")
ALICE = Author("u1", "alice")


def make(reply=None, **settings):
    store = MemoryStore()
    model = (
        ScriptedModel(reply=reply)
        if reply
        else ScriptedModel(reply=lambda r: f"echo {r.messages[-1].text}")
    )
    service = ConversationService(store, model, Settings(_env_file=None, **settings))
    return service, store, model


async def collect(service, text, key=KEY, author=ALICE, **kw):
    """The events of one answer after ``Accepted`` (which, when present, comes first)."""
    events = [e async for e in service.answer(Inbound(key, author, text, **kw))]
    assert Accepted() not in events[1:]
    return events[1:] if events and events[0] == Accepted() else events


async def test_answer_streams_then_stores_both_turns():
    service, store, _ = make()
    events = await collect(service, "hello there")
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    final = [e for e in events if isinstance(e, FinalText)]
    assert deltas == "echo hello there" == final[0].text
    assert isinstance(events[-1], UsageReport)
    assert [(m.role, m.content) for m in store.messages] == [
        ("user", "hello there"),
        ("assistant", "echo hello there"),
    ]


async def test_history_is_sent_in_order():
    service, _, model = make()
    for text in ("one", "two", "three"):
        await collect(service, text)
    sent = [m.text for m in model.requests[-1].messages[1:]]
    assert sent == ["one", "echo one", "two", "echo two", "three"]


async def test_failed_answer_is_not_stored_but_user_turn_is():
    service, store, model = make()
    model.fail_after_deltas = 1
    events = await collect(service, "tell me more")
    assert isinstance(events[-1], UserError) and events[-1].code == "broken_stream"
    assert [(m.role, m.status) for m in store.messages] == [("user", "failed")]
    model.fail_after_deltas = None
    model.failures.append(RateLimited("The model is rate limited right now."))
    events = await collect(service, "again")
    assert events == [UserError("The model is rate limited right now.", "rate_limited")]
    assert not store.usage
    await collect(service, "third time lucky")
    sent = [m.text for m in model.requests[-1].messages[1:]]
    assert sent == ["third time lucky"]


async def test_redelivered_event_is_answered_once():
    service, store, _ = make()
    first = await collect(service, "hi", event_id="Ev1")
    second = await collect(service, "hi", event_id="Ev1")
    assert any(isinstance(e, FinalText) for e in first)
    assert second == []
    assert len(store.messages) == 2


async def test_accepted_comes_first_and_never_for_a_redelivery():
    service, _, _ = make()
    first = [e async for e in service.answer(Inbound(KEY, ALICE, "hi", event_id="Ev9"))]
    again = [e async for e in service.answer(Inbound(KEY, ALICE, "hi", event_id="Ev9"))]
    assert first[0] == Accepted() and isinstance(first[-2], FinalText)
    assert again == []


async def test_a_redelivered_command_runs_once_and_aliases_mean_their_command():
    service, store, _ = make()
    await collect(service, "remember me")
    author = ALICE
    cleared = await service.command(KEY, author, "clear", event_id="C1")
    again = await service.command(KEY, author, "clear", event_id="C1")
    assert cleared.ok and "forgot" in cleared.text
    assert again.redelivered and again.text == ""
    assert (await service.command(KEY, author, "/temp", "0.5")).text == "Temperature set to 0.5."


async def test_summarize_n_covers_the_last_n_stored_turns():
    service, _, model = make()
    for word in ("alpha", "bravo", "charlie"):
        await collect(service, word)
    await service.command(KEY, ALICE, "summarize", "2")
    summarised = model.requests[-1].messages[-1].text
    assert "alpha" not in summarised and "charlie" in summarised
    bad = await service.command(KEY, ALICE, "summarize", "zero")
    assert not bad.ok and "whole number" in bad.text


async def test_too_long_message_gets_token_counts_and_is_not_stored():
    service, store, model = make(parley_input_budget=300, parley_max_output_tokens=64)
    events = await collect(service, "word " * 1000)
    assert len(events) == 1 and isinstance(events[0], UserError)
    assert events[0].code == "too_long"
    assert "1,00" in events[0].text and "limit" in events[0].text
    assert store.messages == [] and model.requests == []


async def test_overflow_is_folded_into_summary():
    def reply(request):
        if "Summarise" in request.messages[0].text:
            return "SUMMARY of old turns"
        return "fine " * 20

    service, store, model = make(reply=reply, parley_input_budget=400)
    for i in range(12):
        events = await collect(service, f"message number {i} " + "pad " * 20)
        assert isinstance(events[-1], UsageReport)
    last = model.requests[-1]
    assert any("SUMMARY of old turns" in m.text for m in last.messages)
    assert all("message number 0" not in m.text for m in last.messages)
    state = store.conversations[KEY]
    assert state.summary == "SUMMARY of old turns" and state.context_start > 0
    summaries = [r for r in model.requests if "Summarise" in r.messages[0].text]
    # summarised in batches, not once per turn
    assert 1 <= len(summaries) <= 3
    for i in range(12, 40):
        await collect(service, f"message number {i} " + "pad " * 20)
    summaries = [r for r in model.requests if "Summarise" in r.messages[0].text]
    assert len(summaries) <= 40 // 3


async def test_overflow_dropped_when_summaries_off():
    service, store, model = make(parley_input_budget=400, parley_summarize_overflow=False)
    for i in range(12):
        await collect(service, f"message number {i} " + "pad " * 20)
    assert all("Summarise" not in r.messages[0].text for r in model.requests)
    assert all("message number 0" not in m.text for m in model.requests[-1].messages)
    assert store.conversations[KEY].summary == ""


async def test_context_reads_only_what_fits():
    service, store, _ = make(parley_input_budget=600, parley_summarize_overflow=False)
    state = await store.conversation(KEY)
    for i in range(3000):
        await store.add_message(state.id, "user", f"old {i}", 10)
    store.recent_calls = 0
    await collect(service, "new question")
    assert store.recent_calls <= 2


async def test_json_mode_adds_instruction_and_retries_once():
    answers = iter(["not json {", '{"a": 1}'])
    service, store, model = make(reply=lambda r: next(answers))
    await service.command(KEY, ALICE, "json", "on")
    events = await collect(service, "give me data")
    assert not any(isinstance(e, TextDelta) for e in events)
    final = next(e for e in events if isinstance(e, FinalText))
    assert '"a": 1' in final.text
    assert "JSON" in model.requests[0].messages[0].text
    assert model.requests[0].json_mode
    assert "not valid JSON" in model.requests[1].messages[-1].text
    assert len(store.usage) == 2


async def test_json_mode_reports_after_second_failure():
    service, _, _ = make(reply=lambda r: "still not json")
    await service.command(KEY, ALICE, "json", "on")
    events = await collect(service, "give me data")
    assert isinstance(events[-1], UserError) and events[-1].code == "invalid_json"


async def test_images_become_image_parts_and_others_get_a_note():
    service, store, model = make()
    attachments = (
        Attachment("cat.png", "image/png", b"\x89PNG", "image"),
        Attachment("notes.txt", "text/plain", b"file body", "text"),
        Attachment("a.zip", "application/zip", b"PK", "other"),
    )
    events = await collect(service, "look", attachments=attachments)
    assert any(isinstance(e, Notice) and "a.zip" in e.text for e in events)
    sent = model.requests[0].messages[-1]
    assert "file body" in sent.text and "[image: cat.png]" in sent.text
    assert sent.images == (ImageInput("image/png", b"\x89PNG"),)
    await service.command(KEY, ALICE, "model", "gpt-3.5-turbo")
    events = await collect(service, "again", attachments=attachments[:1])
    assert any(isinstance(e, Notice) and "does not accept images" in e.text for e in events)


async def test_user_budget_stops_answers():
    service, store, model = make(parley_user_budget_usd=0.0)
    events = await collect(service, "hi")
    assert isinstance(events[-1], UserError) and events[-1].code == "over_budget"
    assert model.requests == []


async def test_same_conversation_is_serialised_and_others_run_concurrently():
    active: dict[str, int] = {}
    peak = {"same": 0, "all": 0}

    class SlowModel(ScriptedModel):
        async def stream(self, request):
            tag = request.messages[-1].text.split()[0]
            active[tag] = active.get(tag, 0) + 1
            peak["same"] = max(peak["same"], max(active.values()))
            peak["all"] = max(peak["all"], sum(active.values()))
            await asyncio.sleep(0.01)
            active[tag] -= 1
            async for item in super().stream(request):
                yield item

    store = MemoryStore()
    service = ConversationService(store, SlowModel(), Settings(_env_file=None))
    keys = [ConversationKey("test", "w", f"c{i}") for i in range(5)]
    await asyncio.gather(
        *(collect(service, f"{k.channel} msg {j}", key=k) for k in keys for j in range(4))
    )
    assert peak["same"] == 1 and peak["all"] > 1
    assert len(store.messages) == 40
    assert len(service.locks) == 0


async def test_commands_validate_and_persist():
    service, store, model = make()
    bad = await service.command(KEY, ALICE, "temperature", "hot")
    assert not bad.ok and "not a number" in bad.text
    bad = await service.command(KEY, ALICE, "temperature", "3")
    assert not bad.ok and "between 0 and 2" in bad.text
    bad = await service.command(KEY, ALICE, "json", "maybe")
    assert not bad.ok and "'on' or 'off'" in bad.text
    bad = await service.command(KEY, ALICE, "model", "bad model!")
    assert not bad.ok
    unknown = await service.command(KEY, ALICE, "frobnicate")
    assert not unknown.ok and "help" in unknown.text
    assert (await service.command(KEY, ALICE, "temperature", "0.3")).ok
    assert (await service.command(KEY, ALICE, "system", "Be terse.")).ok
    thread = ConversationKey("test", "w1", "c1", "t9")
    await collect(service, "hi", key=thread)
    request = model.requests[-1]
    assert request.temperature == 0.3 and request.messages[0].text == "Be terse."
    shown = await service.command(thread, ALICE, "system")
    assert "Be terse." in shown.text


async def test_reset_usage_and_summarize():
    service, store, model = make()
    await collect(service, "first")
    usage = await service.command(KEY, ALICE, "usage")
    assert "1 model call," in usage.text and usage.private
    reply = await service.command(KEY, ALICE, "summarize")
    assert reply.ok and "Summary" in reply.text
    assert "first" in model.requests[-1].messages[-1].text
    reply = await service.command(KEY, ALICE, "summarize", transcript="bob: ship it\namy: ok")
    assert "ship it" in model.requests[-1].messages[-1].text
    reset = await service.command(KEY, ALICE, "reset")
    assert reset.ok and "2 messages" in reset.text
    await collect(service, "after reset")
    assert [m.text for m in model.requests[-1].messages[1:]] == ["after reset"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("reset", ("reset", "")),
        ("  Usage ", ("usage", "")),
        ("/model gpt-4o", ("model", "gpt-4o")),
        ("!System be brief", ("system", "be brief")),
        ("!summarise", ("summarize", "")),
        ("system design question: how do I shard?", None),
        ("clear explanation of monads please", None),
        ("help me with my code", None),
        ("what is up", None),
        ("/unknown thing", None),
    ],
)
def test_parse_command(text, expected):
    service, _, _ = make()
    assert service.parse_command(text) == expected


async def test_unexpected_failure_is_a_generic_sentence():
    service, _, model = make()
    model.failures.append(BrokenStream("The answer was cut off; please ask again."))
    events = await collect(service, "x")
    assert events[-1] == UserError("The answer was cut off; please ask again.", "broken_stream")

    def boom(request):
        raise ZeroDivisionError

    model.reply = boom
    events = await collect(service, "y")
    assert isinstance(events[-1], UserError) and events[-1].code == "internal"
    assert "ZeroDivision" not in events[-1].text


async def test_whitespace_answer_is_an_error_not_a_stored_turn():
    service, store, _ = make(reply=lambda r: "   \n ")
    events = await collect(service, "say nothing")
    assert isinstance(events[-1], UserError) and events[-1].code == "empty_answer"
    assert [m.role for m in store.messages] == ["user"]
    assert len(store.usage) == 1


async def test_budget_follows_the_models_own_window():
    service, _, _ = make(parley_input_budget=100_000)
    await service.command(KEY, ALICE, "model", "gpt-4")
    events = await collect(service, "word " * 9000)
    assert events[-1].code == "too_long"
    assert "the limit here is 7,1" in events[-1].text
    await service.command(KEY, ALICE, "model", "gpt-4o")
    events = await collect(service, "word " * 9000)
    assert isinstance(events[-1], UsageReport)


async def test_failed_json_attempts_are_still_charged():
    service, store, _ = make(reply=lambda r: "never json")
    await service.command(KEY, ALICE, "json", "on")
    events = await collect(service, "data please")
    assert events[-1].code == "invalid_json"
    assert len(store.usage) == 2


async def test_a_failing_event_check_is_a_message_not_an_exception():
    service, store, _ = make()

    async def broken(platform, event_id):
        raise OSError("database went away")

    store.claim_event = broken
    events = await collect(service, "hi", event_id="Ev9")
    assert len(events) == 1 and events[0].code == "internal"


async def test_user_rate_limit_answers_with_the_wait():
    service, store, model = make(parley_user_messages_per_minute=2)
    for text in ("one", "two"):
        assert isinstance((await collect(service, text))[-1], UsageReport)
    events = await collect(service, "three")
    assert len(events) == 1 and events[0].code == "user_rate_limited"
    assert "2 a minute" in events[0].text and "wait" in events[0].text
    other = await collect(service, "hi", author=Author("u2", "bob"))
    assert isinstance(other[-1], UsageReport)
    assert len(model.requests) == 3 and "three" not in [m.content for m in store.messages]


async def test_a_message_refused_by_the_rate_limit_settles_its_event_as_failed():
    # Claimed "answering" before the rate is counted: left so, a restart's sweep would take
    # the claim over and answer a message its sender was told was refused.
    service, store, _ = make(parley_user_messages_per_minute=1)
    assert isinstance((await collect(service, "one", event_id="Ev1"))[-1], UsageReport)
    events = await collect(service, "two", event_id="Ev2")
    assert [e.code for e in events] == ["user_rate_limited"]
    assert store.event_states[("test", "Ev2")] == "failed"


async def test_an_event_its_turn_claimed_is_settled_failed_when_the_turn_fails_after():
    # The claim is made by the turn's first transaction; what fails after it (here, reading
    # the facts again) must not leave it "answering" for a restart's sweep to answer.
    service, store, _ = make()
    claim_turn = store.claim_turn

    async def claimed_then_broken(*args, **kwargs):
        await claim_turn(*args, **kwargs)
        raise OSError("database went away")

    store.claim_turn = claimed_then_broken
    events = await collect(service, "hi", event_id="Ev3")
    assert [e.code for e in events] == ["internal"]
    assert store.event_states[("test", "Ev3")] == "failed"


async def test_event_ids_are_pruned_now_and_then():
    service, store, _ = make()
    for i in range(2000):
        await service.claim_event("test", f"e{i}")
    assert store.pruned == 2


def test_every_command_has_one_handler():
    assert set(COMMAND_HANDLERS) == set(commands.BY_NAME)


async def test_channel_settings_show_set_and_restore_with_their_sentences():
    service, _, _ = make(parley_model="gpt-4o", parley_system_prompt="Be kind.")

    async def say(name, args=""):
        reply = await service.command(KEY, ALICE, name, args)
        assert reply.ok, reply.text
        return reply.text

    assert await say("model") == "This channel uses gpt-4o."
    assert await say("model", "gpt-4o-mini") == "This channel now uses gpt-4o-mini."
    assert await say("model", "my-own") == (
        "This channel now uses my-own (no price known for it: usage shows its tokens, price unknown)."
    )
    assert await say("model", "default") == "Model restored to the default, gpt-4o."
    assert await say("system") == "System prompt for this channel:\n> Be kind."
    assert await say("system", "Be brief.") == "System prompt updated for this channel."
    assert await say("system") == "System prompt for this channel:\n> Be brief."
    assert await say("system", "reset") == "System prompt restored to the default."
    assert await say("temperature") == "Temperature here is 0.7."
    assert await say("temperature", "1.5") == "Temperature set to 1.5."
    assert await say("temperature") == "Temperature here is 1.5."
    assert await say("json") == "JSON mode is off."
    assert await say("json", "on") == "JSON mode is now on."
    assert await say("json") == "JSON mode is on."
    # only system and model have a default to restore; for the others "default" is a value
    refused = await service.command(KEY, ALICE, "temperature", "default")
    assert not refused.ok and "not a number" in refused.text


async def test_every_answer_takes_the_stores_conversation_lock():
    service, store, _ = make()
    await collect(service, "hi")
    await service.command(KEY, ALICE, "reset")
    assert store.locked == [str(KEY), str(KEY)]


@pytest.mark.parametrize(
    "module", ["core.service", "core.context", "core.commands", "core.ports", "core.messages"]
)
def test_the_core_knows_neither_the_openai_wire_nor_sql(module):
    probe = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('openai', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
