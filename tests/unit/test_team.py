"""Team conversations in the core: speakers named to the model, and a channel's memory."""

from __future__ import annotations

from core import commands, sentences
from core.context import SPEAKERS_NOTE, build_context, memory_block, prompt_tokens
from core.messages import Accepted, Author, ConversationKey, FinalText, Inbound
from core.permissions import Privileges
from core.ports import PromptMessage
from core.service import ConversationService
from core.settings import Settings
from core.tokens import TOKENS_REPLY_PRIMER, count_message, count_prompt, count_text
from tests.fakes.memory import MemoryStore, ScriptedModel

KEY = ConversationKey("test", "w1", "c1", "t1")
OTHER_THREAD = ConversationKey("test", "w1", "c1", "t2")
ALICE = Author("U1", "Alice Smith")
BOB = Author("U2", "Bob")
MEMBER = Privileges(who="the channel's keepers")
ADMIN = Privileges(admin=True)


def make(**settings: object) -> tuple[ConversationService, MemoryStore, ScriptedModel]:
    store, model = MemoryStore(), ScriptedModel(reply=lambda r: "noted")
    config = Settings(_env_file=None, openai_api_key="test", **settings)  # type: ignore[arg-type]
    return ConversationService(store, model, config), store, model


async def ask(service: ConversationService, text: str, author: Author, key: ConversationKey = KEY):
    events = [e async for e in service.answer(Inbound(key, author, text))]
    assert events[0] == Accepted()
    return events[1:]


# --- speakers ---------------------------------------------------------------------------------


async def test_one_person_is_sent_as_before() -> None:
    service, _, model = make()
    await ask(service, "hello", ALICE)
    await ask(service, "and again", ALICE)
    sent = model.requests[-1].messages
    assert [m.text for m in sent[1:]] == ["hello", "noted", "and again"]
    assert SPEAKERS_NOTE not in sent[0].text


async def test_several_people_are_named_and_the_system_prompt_says_so() -> None:
    service, _, model = make()
    await ask(service, "we ship friday", ALICE)
    await ask(service, "no, thursday", BOB)
    sent = model.requests[-1].messages
    assert sent[0].role == "system" and sent[0].text.endswith(SPEAKERS_NOTE)
    assert [(m.role, m.text) for m in sent[1:]] == [
        ("user", "Alice Smith: we ship friday"),
        ("assistant", "noted"),
        ("user", "Bob: no, thursday"),
    ]
    assert not any("U1" in m.text or "U2" in m.text for m in sent)


async def test_a_person_without_a_name_is_someone_never_an_id() -> None:
    service, _, model = make()
    await ask(service, "first", ALICE)
    await ask(service, "second", Author("U9", "  "))
    assert model.requests[-1].messages[-1].text == "Someone: second"


async def test_names_give_way_to_the_budget_rather_than_overflow_it() -> None:
    # A budget that holds the history exactly as it was stored, unnamed: naming the speakers
    # costs tokens, so the oldest turn gives way (it is folded later) and the prompt still fits.
    store = MemoryStore()
    state = await store.conversation(KEY)
    turns = [
        ("user", "Alice Smith", "we ship friday " + "really " * 80),
        ("assistant", "", "noted"),
        ("user", "Alice Smith", "and QA signs off thursday"),
        ("assistant", "", "noted"),
    ]
    ids = [
        await store.add_message(state.id, role, text, count_message(text), author_name=name)
        for role, name, text in turns
    ]
    question = "no, we ship monday"
    user_id = await store.add_message(state.id, "user", question, count_message(question))
    system = "You are Parley."
    budget = (
        prompt_tokens(system)
        + TOKENS_REPLY_PRIMER
        + sum(count_message(text) for _, _, text in turns)
        + count_message(question)
    )
    context = await build_context(
        store,
        state,
        system_prompt=system,
        user=PromptMessage("user", question),
        user_tokens=count_message(question),
        user_turn_id=user_id,
        budget=budget,
        speaker_name="Bob",
    )
    assert count_prompt(context.messages) <= budget
    assert context.cut_at is not None and context.cut_at >= ids[0]
    assert context.messages[-1].text == "Bob: no, we ship monday"
    assert context.messages[0].text.endswith(SPEAKERS_NOTE)


# --- memory -----------------------------------------------------------------------------------


async def test_memory_is_added_listed_used_and_forgotten() -> None:
    service, _, model = make()
    assert (await service.command(KEY, ALICE, "memory")).text == sentences.MEMORY_EMPTY
    first = await service.command(KEY, ALICE, "remember", "We release on Thursdays.")
    assert first.ok and first.text == sentences.remembered(1)
    await service.command(KEY, ALICE, "remember", "The staging host is\nstaging.example")
    shown = await service.command(KEY, BOB, "memory")
    assert shown.text == sentences.memory_shown(
        ["We release on Thursdays.", "The staging host is staging.example"]
    )
    # Every conversation of the channel carries it, other threads too.
    await ask(service, "when do we release?", BOB, OTHER_THREAD)
    system = model.requests[-1].messages[0].text
    assert system.endswith(
        memory_block(["We release on Thursdays.", "The staging host is staging.example"])
    )
    gone = await service.command(KEY, ALICE, "forget", "1")
    assert gone.ok and gone.text == sentences.fact_forgotten(1, "We release on Thursdays.")
    await ask(service, "and now?", BOB, OTHER_THREAD)
    system = model.requests[-1].messages[0].text
    assert "Thursdays" not in system and "1. The staging host is staging.example" in system


async def test_forget_names_a_fact_that_exists() -> None:
    service, _, _ = make()
    await service.command(KEY, ALICE, "remember", "one fact")
    missing = await service.command(KEY, ALICE, "forget", "3")
    assert not missing.ok and missing.text == sentences.no_such_fact(3, 1)
    bare = await service.command(KEY, ALICE, "forget")
    assert not bare.ok and bare.text == sentences.which_fact(["one fact"])
    word = await service.command(KEY, ALICE, "forget", "everything")
    assert not word.ok and word.text == sentences.not_a_fact_number("everything")


async def test_a_memory_over_its_share_of_the_budget_is_refused() -> None:
    service, store, _ = make(parley_input_budget=800)
    limit = 800 // commands.MEMORY_BUDGET_SHARE
    fact = " ".join(["go"] * 60)  # about 60 tokens: one fits in 100, two do not
    assert (await service.command(KEY, ALICE, "remember", fact)).ok
    refused = await service.command(KEY, ALICE, "remember", fact)
    tokens = count_text(memory_block([fact, fact]))
    assert not refused.ok and refused.text == sentences.memory_too_large(tokens, limit)
    assert len(await store.channel_memory(KEY.channel_key)) == 1


async def test_too_many_or_too_long_facts_are_refused() -> None:
    service, store, _ = make()
    too_long = "x" * (commands.MAX_FACT_CHARS + 1)
    refused = await service.command(KEY, ALICE, "remember", too_long)
    assert refused.text == sentences.fact_too_long(len(too_long), commands.MAX_FACT_CHARS)
    for n in range(commands.MAX_FACTS):
        assert (await service.command(KEY, ALICE, "remember", f"fact {n}")).ok
    full = await service.command(KEY, ALICE, "remember", "one more")
    assert not full.ok and full.text == sentences.memory_full(commands.MAX_FACTS)


async def test_changing_memory_needs_the_system_prompt_permission() -> None:
    service, store, _ = make()
    await service.command(KEY, ALICE, "remember", "keep me", viewer=ADMIN)
    for name, args in (("remember", "a new fact"), ("forget", "1")):
        refused = await service.command(KEY, BOB, name, args, viewer=MEMBER)
        assert not refused.ok and refused.private
        assert refused.text == sentences.not_allowed(
            name, "the channel's keepers", setting=True, shown_by="memory"
        )
        system = await service.command(KEY, BOB, "system", "be terse", viewer=MEMBER)
        assert not system.ok  # the same people may change the system prompt: none of them
    assert [f.text for f in await store.channel_memory(KEY.channel_key)] == ["keep me"]
    shown = await service.command(KEY, BOB, "memory", viewer=MEMBER)
    assert shown.ok and "keep me" in shown.text
    in_dm = Privileges(direct=True)
    assert (await service.command(KEY, BOB, "forget", "1", viewer=in_dm)).ok


async def test_forget_is_no_longer_reset_and_clear_still_is() -> None:
    service, store, _ = make()
    await ask(service, "hello", ALICE)
    assert commands.canonical("forget") == "forget" and commands.canonical("clear") == "reset"
    await service.command(KEY, ALICE, "forget", "1")
    assert len(store.messages) == 2
    cleared = await service.command(KEY, ALICE, "clear")
    assert cleared.text == sentences.conversation_forgotten(2)
    assert commands.parse_command("remember we ship on friday") is None  # a question
    assert commands.parse_command("!remember we ship on friday") == (
        "remember",
        "we ship on friday",
    )


async def test_memory_over_a_smaller_budget_leaves_facts_out_rather_than_the_answer() -> None:
    # Memory added under a large budget, then the budget shrinks (a model with a smaller
    # window): the facts that no longer fit are left out of the prompt; the answer still comes.
    service, _, model = make(parley_input_budget=1600)
    await service.command(KEY, ALICE, "remember", "short fact")
    await service.command(KEY, ALICE, "remember", " ".join(["go"] * 150))
    service.settings = service.settings.model_copy(update={"parley_input_budget": 300})
    events = await ask(service, "hello", ALICE)
    assert isinstance(events[-2], FinalText)
    system = model.requests[-1].messages[0].text
    assert system.endswith(memory_block(["short fact"]))
