"""Parley against servers that are OpenAI-compatible but not OpenAI: the stand-in plays a
one-model server (llama.cpp's), a server with a small context window that fails streams with
an empty body, vLLM's window in ``/v1/models``; plus prices, estimated usage and the ledger."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
from aiohttp import web

from adapters.model_http import model_http_client
from adapters.standin import StandinServer
from bots.bootstrap import build
from core.errors import BrokenStream, ContextTooLong, EndpointNotFound, LLMError, ModelNotFound
from core.llm import ChatRequest, Completion, OpenAIChat, ServerModels
from core.messages import Author, ConversationKey, FinalText, Inbound, UsageReport, UserError
from core.ports import PromptMessage
from core.settings import Settings
from core.tokens import count_prompt
from tests.conftest import upgraded

KEY = ConversationKey("test", "w", "c")
LONG = "Tell me about the history of the harbour, the ships and the people there. " * 12


def request(text: str = "hello", model: str = "gpt-4o", **options: object) -> ChatRequest:
    messages = [PromptMessage("system", "You are Parley."), PromptMessage("user", text)]
    defaults: dict[str, object] = {"temperature": 0.7, "max_output_tokens": 64}
    return ChatRequest(model=model, messages=messages, **{**defaults, **options})  # type: ignore[arg-type]


def chat_on(
    base_url: str, fallbacks: tuple[str, ...] = (), *, transport: str = "httpx"
) -> OpenAIChat:
    """The client on ``transport``: the openai client's default one, or Parley's aiohttp one
    (the one ``parley run`` gives ``OpenAIChat.from_settings``)."""
    http_client = model_http_client(5.0) if transport == "aiohttp" else None
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="k", max_retries=1, timeout=5.0, http_client=http_client
    )
    return OpenAIChat(client, fallbacks)


async def complete(model: OpenAIChat, chat_request: ChatRequest) -> Completion:
    items = [item async for item in model.stream(chat_request)]
    assert isinstance(items[-1], Completion)
    return items[-1]


async def failure(model: OpenAIChat, chat_request: ChatRequest) -> LLMError:
    with pytest.raises(LLMError) as caught:
        async for _ in model.stream(chat_request):
            pass
    return caught.value


@asynccontextmanager
async def serving(*routes: web.RouteDef, **options: Any) -> AsyncIterator[str]:
    """``routes`` served on a free local port (``options`` for the runner); yields its URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, **options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_a_one_model_server_names_the_model_that_answered() -> None:
    async with StandinServer(model_name="/models/smol.gguf", echo_model=True) as server:
        chat = chat_on(server.base_url)
        done = await complete(chat, request(model="gpt-4o"))
        await chat.close()
    # the server echoed "gpt-4o"; the model it lists is the one that answered
    assert server.requests[-1]["model"] == "gpt-4o"
    assert done.model == "/models/smol.gguf"


async def test_usage_is_marked_estimated_when_the_server_sends_none() -> None:
    async with StandinServer() as server:
        chat = chat_on(server.base_url)
        reported = await complete(chat, request())
        server.inject("no_usage")
        estimated = await complete(chat, request())
        await chat.close()
    assert not reported.estimated
    assert estimated.estimated
    assert estimated.input_tokens == count_prompt(request().messages)


async def test_a_missing_route_is_not_a_missing_model() -> None:
    async with StandinServer() as server:
        root = server.base_url.removesuffix("/v1")
        chat = chat_on(root, ("gpt-4o-mini",))
        error = await failure(chat, request())
        await chat.close()
        chat = chat_on(server.base_url)
        missing = await failure(chat, request(model="missing-model"))
        await chat.close()
    assert isinstance(error, EndpointNotFound)
    assert "/v1" in error.user_message and "not available" not in error.user_message
    assert isinstance(missing, ModelNotFound)
    assert "missing-model is not available" in missing.user_message


async def test_a_context_error_names_the_window_in_parleys_tokens() -> None:
    async with StandinServer(context_window=300) as server:
        chat = chat_on(server.base_url)
        error = await failure(chat, request(LONG, max_output_tokens=100))
        await chat.close()
    assert isinstance(error, ContextTooLong)
    assert error.window == 300
    assert "too long for the model's context window" in error.user_message


async def test_an_empty_stream_is_asked_again_and_says_why() -> None:
    async with StandinServer(context_window=300, empty_stream_overflow=True) as server:
        chat = chat_on(server.base_url)
        error = await failure(chat, request(LONG, max_output_tokens=100))
        short = await complete(chat, request("hi", max_output_tokens=100))
        await chat.close()
    assert isinstance(error, ContextTooLong) and error.window == 300
    assert [r.get("stream") for r in server.requests[:2]] == [True, None]
    assert short.text and short.finish_reason == "stop"


async def test_errors_inside_a_stream_get_their_own_sentence() -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        body = (await request.json())["messages"][-1]["content"]
        code = "context_length_exceeded" if "long" in body else "model_not_found"
        message = (
            "This model's maximum context length is 512 tokens."
            if "long" in body
            else "The model `x` does not exist."
        )
        error = f'{{"error": {{"message": "{message}", "type": "invalid_request_error", "code": "{code}"}}}}'
        await response.write(f"data: {error}\n\n".encode())
        await response.write_eof()
        return response

    async with serving(web.post("/v1/chat/completions", broken)) as url:
        chat = chat_on(f"{url}/v1")
        try:
            too_long = await failure(chat, request("a long one"))
            missing = await failure(chat, request("anything"))
        finally:
            await chat.close()
    assert isinstance(too_long, ContextTooLong) and too_long.window == 512
    assert isinstance(missing, ModelNotFound)


# --- streams framed in every way server-sent events may be ----------------------------------

REQUEST_ID = "req-raw-1"


def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c1", "model": "raw-model", "choices": [choice], **extra}


@asynccontextmanager
async def raw_server(
    pieces: list[bytes], *, then: str = "end", peers: list[object] | None = None
) -> AsyncIterator[str]:
    """A server that answers every chat request with ``pieces``, each written on its own
    (a short pause between them, so the client reads them apart), ``then`` ends the body
    ("end"), keeps it open ("hang") or drops the connection ("drop"); yields its base URL.
    The client's address of each request goes to ``peers``."""

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        if peers is not None and request.transport is not None:
            peers.append(request.transport.get_extra_info("peername"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-request-id": REQUEST_ID}
        )
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.002)
        if then == "hang":
            await asyncio.sleep(60)
        elif then == "drop" and request.transport is not None:
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    routes = web.post("/v1/chat/completions", answer), web.get("/v1/models", models)
    # handler_cancellation: a hanging answer ends when the client goes
    async with serving(*routes, handler_cancellation=True, shutdown_timeout=0.5) as url:
        yield f"{url}/v1"


TRANSPORTS = pytest.mark.parametrize("transport", ["aiohttp", "httpx"])


def split(data: bytes, *cuts: int) -> list[bytes]:
    """``data`` cut at the given offsets."""
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False) if a < b]


@TRANSPORTS
async def test_a_stream_is_read_however_its_events_are_framed(transport: str) -> None:
    first = json.dumps(event({"role": "assistant", "content": "Hel"}))
    body = (
        b": a comment, then CRLF line ends, an id, a name and a retry time\r\n"
        + b"id: 1\r\nevent: message\r\nretry: 100\r\ndata: "
        + first.encode()
        + b"\r\n\r\n"
        # one JSON object over two data lines (joined with LF), no space after the colon
        + b'data:{"id": "c1", "choices": [{"index": 0,\ndata: "delta": {"content": "lo "}}]}\n\n'
        # CR line ends
        + b"data: "
        + json.dumps(event({"content": "w\u00f6rld"}), ensure_ascii=False).encode()
        + b"\r\r"
        + b"data: "
        + json.dumps(event({}, "stop")).encode()
        + b"\n\n"
        + b"data: "
        + json.dumps(
            {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
        ).encode()
        + b"\n\ndata: [DONE]\n\n"
    )
    # cut between a CR and its LF, inside a field name, inside a UTF-8 character, inside JSON
    cr_lf = body.index(b"\r\n") + 1
    pieces = split(body, cr_lf, cr_lf + 3, body.index(b"\xc3") + 1, body.index(b"stop") + 2)
    async with raw_server(pieces) as url:
        chat = chat_on(url, transport=transport)
        try:
            deltas = [d async for d in chat.stream(request())]
        finally:
            await chat.close()
    done = deltas.pop()
    # the events one read completes come in one piece: "Hel" and "lo " arrive together
    assert deltas[0].startswith("Hello ") and "".join(deltas) == "Hello w\u00f6rld"
    assert isinstance(done, Completion)
    assert done.text == "Hello w\u00f6rld" and done.finish_reason == "stop"
    assert (done.input_tokens, done.output_tokens, done.estimated) == (7, 3, False)
    assert done.model == "raw-model"


async def test_an_emoji_escaped_in_two_chunks_is_read_as_it_was_sent() -> None:
    # a server that escapes non-ASCII may cut a surrogate pair between two chunks
    halves = [json.dumps(event({"content": half})) for half in ("caf\u00e9 \ud83d", "\ude00")]
    assert "\\ud83d" in halves[0], "sent escaped"
    pieces = [opened(""), *(f"data: {half}\n\n".encode() for half in halves), *answered("")[1:]]
    async with raw_server(pieces) as url:
        chat = chat_on(url)
        try:
            done = await complete(chat, request())
        finally:
            await chat.close()
    assert done.text == "caf\u00e9 \ud83d\ude00"


def answered(text: str) -> list[bytes]:
    """A whole answer: its text, its end, its usage and ``[DONE]``."""
    return [
        opened(text),
        b"data: " + json.dumps(event({}, "stop")).encode() + b"\n\n",
        b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}\n\n',
        b"data: [DONE]\n\n",
    ]


async def test_the_client_parley_runs_reads_gzip_and_sends_a_cookie_back_once() -> None:
    """``parley run``'s HTTP client: it still asks for compressed answers and reads them
    (decoded once), and a cookie the server set goes back, once."""
    seen: list[tuple[str, list[str]]] = []

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        seen.append(
            (request.headers.get("Accept-Encoding", ""), request.headers.getall("Cookie", []))
        )
        response = web.Response(
            body=gzip.compress(b"".join(answered("Hi"))),
            headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"},
        )
        response.set_cookie("affinity", "a1")
        return response

    async with serving(web.post("/v1/chat/completions", answer)) as url:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            openai_api_key="k",
            openai_base_url=f"{url}/v1",
            openai_max_retries=0,
        )
        chat = OpenAIChat.from_settings(settings, http_client=model_http_client)
        try:
            first = await complete(chat, request())
            second = await complete(chat, request())
        finally:
            await chat.close()
    assert first.text == second.text == "Hi"
    assert all("gzip" in accepted for accepted, _ in seen)
    assert [cookies for _, cookies in seen] == [[], ["affinity=a1"]]


@TRANSPORTS
@pytest.mark.parametrize("then", ["hang", "drop"])
async def test_what_follows_done_cannot_fail_a_complete_answer(transport: str, then: str) -> None:
    async with raw_server(answered("Hi"), then=then) as url:
        client = openai.AsyncOpenAI(
            base_url=url,
            api_key="k",
            max_retries=0,
            timeout=2.0,  # a stream kept open after [DONE] would time out the answer
            http_client=model_http_client(2.0) if transport == "aiohttp" else None,
        )
        chat = OpenAIChat(client)
        try:
            done = await complete(chat, request())
        finally:
            await chat.close()
    assert done.text == "Hi" and done.finish_reason == "stop"


@TRANSPORTS
async def test_one_connection_serves_one_answer_after_another(transport: str) -> None:
    peers: list[object] = []
    async with raw_server(answered("Hi"), peers=peers) as url:
        chat = chat_on(url, transport=transport)
        try:
            for _ in range(3):
                assert (await complete(chat, request())).text == "Hi"
        finally:
            await chat.close()
    assert len(peers) == 3 and len(set(peers)) == 1, peers


def opened(text: str) -> bytes:
    return b"data: " + json.dumps(event({"role": "assistant", "content": text})).encode() + b"\n\n"


@TRANSPORTS
@pytest.mark.parametrize(
    ("trouble", "logged"),
    [
        (
            b'event: error\ndata: {"error": {"message": "overloaded", "type": "server_error"}}\n\n',
            "APIError",
        ),
        (b"data: {not json\n\n", "unreadable stream chunk"),
        (b"data: [1, 2]\n\n", "unreadable stream chunk"),
        (b'data: {"choices": [{"index": 0, "delta": {"content": "\xff"}}]}\n\n', "unreadable"),
    ],
    ids=["error-event", "not-json", "not-an-object", "not-utf-8"],
)
async def test_trouble_after_the_first_words_is_a_broken_stream_logged_with_its_request_id(
    transport: str, trouble: bytes, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="core.llm")
    async with raw_server([opened("Hello"), trouble, opened(" never read")]) as url:
        chat = chat_on(url, transport=transport)
        seen: list[object] = []
        try:
            with pytest.raises(BrokenStream):
                async for item in chat.stream(request()):
                    seen.append(item)
            # the connection that failed is not reused in a broken state
            again = await failure(chat, request())
        finally:
            await chat.close()
    assert seen == ["Hello"]
    assert isinstance(again, BrokenStream)
    failed = [r.getMessage() for r in caplog.records if "model call failed" in r.getMessage()]
    assert len(failed) == 2
    assert all(logged in m and f"request_id={REQUEST_ID}" in m for m in failed), failed


# --- through the whole core ------------------------------------------------------------------


@pytest.fixture
async def small_server() -> AsyncIterator[StandinServer]:
    async with StandinServer(
        model_name="/models/small.gguf",
        echo_model=True,
        context_window=1200,
        empty_stream_overflow=True,
    ) as server:
        yield server


async def parley_on(base_url: str, database_url: str, **settings: object):
    await upgraded(database_url)
    options: dict[str, object] = {"parley_max_output_tokens": 200, **settings}
    return await build(
        Settings(_env_file=None, database_url=database_url, openai_base_url=base_url, **options)
    )


async def ask(parley, text: str) -> list[object]:
    return [e async for e in parley.service.answer(Inbound(KEY, Author("u1", "Ann"), text))]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_small_window_is_learned_and_every_turn_answered(
    small_server: StandinServer, database_url: str
) -> None:
    parley = await parley_on(small_server.base_url, database_url)
    try:
        for turn in range(12):
            events = await ask(parley, f"Turn {turn}. {LONG}")
            errors = [e for e in events if isinstance(e, UserError)]
            assert not errors, (turn, errors)
        usage = await parley.service.command(KEY, Author("u1", "Ann"), "usage")
    finally:
        await parley.close()
    window = parley.service.windows["gpt-4o"]
    assert window <= 1200
    # answers are named, stored and priced by the model that answered: no price known
    final = next(e for e in events if isinstance(e, FinalText))
    report = next(e for e in events if isinstance(e, UsageReport))
    assert final.model == report.model == "/models/small.gguf"
    assert report.cost_usd is None
    assert "price unknown" in usage.text and "$" not in usage.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_vllm_window_from_the_model_list(database_url: str) -> None:
    async with StandinServer(model_name="served", context_window=4000, list_window=True) as server:
        parley = await parley_on(server.base_url, database_url, parley_model="served")
        try:
            events = await ask(parley, "hello")
        finally:
            await parley.close()
    assert not [e for e in events if isinstance(e, UserError)]
    assert parley.service.windows["served"] == 4000


async def test_estimated_and_unpriced_calls_in_the_ledger(database_url: str) -> None:
    async with StandinServer() as server:
        parley = await parley_on(server.base_url, database_url, openai_api_key="k")
        try:
            server.inject("no_usage")
            events = await ask(parley, "hello")
            await ask(parley, "again")
            usage = await parley.service.command(KEY, Author("u1", "Ann"), "usage")
            here = await parley.service.store.channel_usage(KEY.channel_key)
        finally:
            await parley.close()
    report = next(e for e in events if isinstance(e, UsageReport))
    assert report.estimated and report.cost_usd is not None
    assert here.turns == 2 and here.estimated_calls == 1 and here.unpriced_calls == 0
    assert "estimated for 1 of them" in usage.text


async def test_json_cut_at_the_token_limit_is_reported_as_cut_off(database_url: str) -> None:
    async with StandinServer() as server:
        parley = await parley_on(
            server.base_url, database_url, openai_api_key="k", parley_max_output_tokens=16
        )
        try:
            await parley.service.command(KEY, Author("u1", "Ann"), "json", "on")
            events = await ask(parley, "give me a long JSON answer about harbours please")
        finally:
            await parley.close()
    error = next(e for e in events if isinstance(e, UserError))
    assert "cut off at the output token limit (16 tokens)" in error.text
    assert len(server.requests) == 1  # no second try that would be cut again


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_model_accepts_any_id_a_server_lists(database_url: str) -> None:
    async with StandinServer(model_name="/home/me/models/SmolLM2-135M.Q4_1.gguf") as server:
        parley = await parley_on(server.base_url, database_url)
        try:
            reply = await parley.service.command(
                KEY, Author("u1", "Ann"), "model", "/home/me/models/SmolLM2-135M.Q4_1.gguf"
            )
            bad = await parley.service.command(KEY, Author("u1", "Ann"), "model", "two words")
        finally:
            await parley.close()
    assert reply.ok and "SmolLM2-135M.Q4_1.gguf" in reply.text
    assert not bad.ok


async def test_ollama_window_from_its_model_info() -> None:
    async def models(request: web.Request) -> web.Response:
        names = ["llama3.1:8b", "qwen2:0.5b"]
        return web.json_response({"object": "list", "data": [{"id": n} for n in names]})

    async def show(request: web.Request) -> web.Response:
        name = (await request.json())["model"]
        if name == "llama3.1:8b":
            return web.json_response({"parameters": "num_ctx 8192\nstop <|eot_id|>"})
        return web.json_response({"model_info": {"qwen2.context_length": 32768}})

    async with serving(web.get("/v1/models", models), web.post("/api/show", show)) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k")
        server = ServerModels(client)
        try:
            tuned = await server.identify(
                Completion("x", "llama3.1:8b", 1, 1, "stop"), "llama3.1:8b"
            )
            trained = await server.identify(
                Completion("x", "qwen2:0.5b", 1, 1, "stop"), "qwen2:0.5b"
            )
        finally:
            await client.close()
    assert tuned.window == 8192 and tuned.model == "llama3.1:8b"
    assert trained.window == 32768
