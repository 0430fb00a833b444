"""``OpenAIChat`` on the real ``openai`` client against the stand-in model: streaming, usage,
fallback, and every fault turned into the right ``core.errors`` class."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import openai
import pytest
from pydantic import SecretStr

from adapters.model_http import model_http_client
from adapters.standin import StandinServer
from core.errors import (
    BrokenStream,
    ConfigError,
    ContentRefused,
    LLMError,
    ModelNotFound,
    ModelTimeout,
    ModelUnavailable,
    QuotaExhausted,
    RateLimited,
)
from core.llm import ChatModel, ChatRequest, Completion, OpenAIChat, count_input_tokens
from core.ports import ImageInput, PromptMessage
from core.settings import Settings
from core.tokens import TOKENS_PER_IMAGE, count_prompt, count_text

API_KEY = "sk-parley-test-secret-4242"
CONTENT = "my private question about the quarterly numbers"


def request(text: str = CONTENT, model: str = "gpt-4o", **options: object) -> ChatRequest:
    messages = [PromptMessage("system", "You are Parley."), PromptMessage("user", text)]
    defaults: dict[str, object] = {"temperature": 0.7, "max_output_tokens": 256}
    return ChatRequest(model=model, messages=messages, **{**defaults, **options})  # type: ignore[arg-type]


@pytest.fixture
async def server() -> AsyncIterator[StandinServer]:
    async with StandinServer(unknown_models={"gpt-4-gone"}) as standin:
        yield standin


ChatFactory = Callable[..., OpenAIChat]


@pytest.fixture(params=["aiohttp", "httpx"])
def make_chat(request: pytest.FixtureRequest) -> ChatFactory:
    """``OpenAIChat`` on Parley's aiohttp transport (the one ``parley run`` gives
    ``OpenAIChat.from_settings``) and on the openai client's default one: each test runs on
    both."""

    def make(
        base_url: str,
        fallbacks: Sequence[str] = (),
        *,
        retries: int = 0,
        timeout: float = 5.0,
    ) -> OpenAIChat:
        http_client = model_http_client(timeout) if request.param == "aiohttp" else None
        client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=API_KEY,
            max_retries=retries,
            timeout=timeout,
            http_client=http_client,
        )
        return OpenAIChat(client, fallbacks)

    return make


@pytest.fixture
async def chat(server: StandinServer, make_chat: ChatFactory) -> AsyncIterator[OpenAIChat]:
    model = make_chat(server.base_url, ["gpt-4o-mini"])
    yield model
    await model.close()


async def collect(model: ChatModel, chat_request: ChatRequest) -> tuple[list[str], Completion]:
    """Drain a stream, checking it is deltas followed by exactly one Completion."""
    items = [item async for item in model.stream(chat_request)]
    assert items, "the stream yielded nothing"
    *deltas, last = items
    assert isinstance(last, Completion)
    assert all(isinstance(delta, str) for delta in deltas)
    return [d for d in deltas if isinstance(d, str)], last


async def failure(model: ChatModel, chat_request: ChatRequest) -> tuple[list[str], LLMError]:
    """Drain a stream that must fail; return the deltas seen before the error."""
    seen: list[str] = []
    with pytest.raises(LLMError) as caught:
        async for item in model.stream(chat_request):
            assert isinstance(item, str), "no Completion may follow a failure"
            seen.append(item)
    assert caught.value.user_message.strip()
    return seen, caught.value


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Operator logs of the test, checked afterwards to hold neither the key nor the content."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    assert API_KEY not in caplog.text
    assert CONTENT not in caplog.text


async def test_deltas_make_up_the_completion(chat: OpenAIChat, server: StandinServer) -> None:
    server.latency = 0.02  # the chunks arrive apart, as a model writes them
    deltas, done = await collect(chat, request())
    assert len(deltas) > 1
    assert "".join(deltas) == done.text
    assert done.text.startswith("(offline stand-in model)")
    assert CONTENT in done.text
    assert done.model == "gpt-4o"
    assert done.finish_reason == "stop"
    assert done.input_tokens == count_prompt(request().messages)
    assert done.output_tokens == count_text(done.text)

    sent = server.requests[-1]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 256
    assert sent["temperature"] == 0.7
    assert "response_format" not in sent


async def test_prompt_messages_go_on_the_wire_as_openai_json(
    chat: OpenAIChat, server: StandinServer
) -> None:
    png = b"\x89PNG\r\n\x1a\n"
    messages = [
        PromptMessage("system", "You are Parley."),
        PromptMessage("assistant", "Earlier answer."),
        PromptMessage("user", "What is in these?", (ImageInput("image/png", png),) * 2),
    ]
    chat_request = ChatRequest("gpt-4o", messages, 0.7, 256)
    _, done = await collect(chat, chat_request)
    url = "data:image/png;base64,iVBORw0KGgo="
    assert server.requests[-1]["messages"] == [
        {"role": "system", "content": "You are Parley."},
        {"role": "assistant", "content": "Earlier answer."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        },
    ]
    # the stand-in counts the wire, the core counts PromptMessages: the same number
    assert done.input_tokens == count_prompt(messages) > 2 * TOKENS_PER_IMAGE
    assert count_prompt(messages) == count_input_tokens(server.requests[-1]["messages"])
    assert "2 images" in done.text


async def test_output_limit_reports_length(chat: OpenAIChat) -> None:
    _, done = await collect(chat, request(max_output_tokens=3))
    assert done.finish_reason == "length"
    assert 0 < done.output_tokens <= 3


async def test_json_mode(chat: OpenAIChat, server: StandinServer) -> None:
    _, done = await collect(chat, request("Reply in JSON: three colours", json_mode=True))
    assert server.requests[-1]["response_format"] == {"type": "json_object"}
    assert json.loads(done.text)["source"] == "offline stand-in"


async def test_json_mode_without_the_word_is_a_plain_llm_error(
    chat: OpenAIChat, logs: pytest.LogCaptureFixture
) -> None:
    _, error = await failure(chat, request(json_mode=True))
    assert type(error) is LLMError
    assert "BadRequestError" in logs.text


async def test_falls_back_to_the_next_model(
    server: StandinServer, logs: pytest.LogCaptureFixture, make_chat: ChatFactory
) -> None:
    model = make_chat(server.base_url, ["gpt-4o-mini", "gpt-4o"])
    try:
        deltas, done = await collect(model, request(model="missing-4o"))
    finally:
        await model.close()
    assert done.model == "gpt-4o-mini"
    assert "".join(deltas) == done.text
    assert [sent["model"] for sent in server.requests] == ["missing-4o", "gpt-4o-mini"]
    assert "missing-4o" in logs.text
    assert "gpt-4o-mini" in logs.text


async def test_fallback_skips_duplicates(server: StandinServer, make_chat: ChatFactory) -> None:
    model = make_chat(server.base_url, ["gpt-4-gone", "gpt-4-gone", "gpt-4o"])
    try:
        _, done = await collect(model, request(model="gpt-4-gone"))
    finally:
        await model.close()
    assert done.model == "gpt-4o"
    assert [sent["model"] for sent in server.requests] == ["gpt-4-gone", "gpt-4o"]


async def test_no_model_available(
    server: StandinServer, logs: pytest.LogCaptureFixture, make_chat: ChatFactory
) -> None:
    model = make_chat(server.base_url, ["missing-mini"])
    try:
        _, error = await failure(model, request(model="missing-4o"))
    finally:
        await model.close()
    assert isinstance(error, ModelNotFound)
    assert isinstance(error, ModelUnavailable)
    assert "missing-4o" in error.user_message
    assert len(server.requests) == 2


async def test_not_found_fault_falls_back(chat: OpenAIChat, server: StandinServer) -> None:
    server.inject("not_found")
    _, done = await collect(chat, request())
    assert done.model == "gpt-4o-mini"


async def test_rate_limited_names_the_wait(
    chat: OpenAIChat, server: StandinServer, logs: pytest.LogCaptureFixture
) -> None:
    server.inject("rate_limit", retry_after=1)
    _, error = await failure(chat, request())
    assert isinstance(error, RateLimited)
    assert "in 1 second" in error.user_message
    assert "RateLimitError" in logs.text
    assert "status=429" in logs.text
    assert "req_standin" in logs.text


async def test_rate_limit_recovers_within_client_retries(
    server: StandinServer, make_chat: ChatFactory
) -> None:
    server.inject("rate_limit", retry_after=0.01)
    model = make_chat(server.base_url, retries=1)
    try:
        _, done = await collect(model, request())
    finally:
        await model.close()
    assert done.text
    assert len(server.requests) == 2


async def test_quota(chat: OpenAIChat) -> None:
    _, error = await failure(chat, request(CONTENT + " [[fault:quota]]"))
    assert isinstance(error, QuotaExhausted)


async def test_server_error(chat: OpenAIChat, server: StandinServer) -> None:
    server.inject("server_error")
    _, error = await failure(chat, request())
    assert type(error) is ModelUnavailable
    assert len(server.requests) == 1, "a server error is not a reason to try another model"


async def test_stall_is_a_timeout(
    server: StandinServer, logs: pytest.LogCaptureFixture, make_chat: ChatFactory
) -> None:
    server.inject("stall", seconds=30)
    model = make_chat(server.base_url, timeout=0.3)
    try:
        _, error = await failure(model, request())
    finally:
        await model.close()
    assert isinstance(error, ModelTimeout)
    assert "APITimeoutError" in logs.text


async def test_unreachable_service(make_chat: ChatFactory) -> None:
    with socket.socket() as bound:  # bound but not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        model = make_chat(f"http://127.0.0.1:{port}/v1")
        try:
            _, error = await failure(model, request())
        finally:
            await model.close()
    assert type(error) is ModelUnavailable
    assert "could not reach" in error.user_message


async def test_a_server_that_hangs_up_is_unreachable_not_slow(
    make_chat: ChatFactory, logs: pytest.LogCaptureFixture
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    model = make_chat(f"http://127.0.0.1:{port}/v1")
    try:
        _, error = await failure(model, request())
    finally:
        await model.close()
        server.close()
    assert type(error) is ModelUnavailable
    assert "APIConnectionError" in logs.text and "APITimeoutError" not in logs.text


async def test_cut_stream_is_broken(chat: OpenAIChat, logs: pytest.LogCaptureFixture) -> None:
    seen, error = await failure(chat, request(CONTENT + " [[fault:cut_stream:4]]"))
    assert isinstance(error, BrokenStream)
    assert "cut off" in error.user_message
    assert "".join(seen).startswith("(offline stand-in model)")


async def test_stream_ending_without_finish_is_broken(
    chat: OpenAIChat, server: StandinServer
) -> None:
    server.inject("early_done", chunks=3)
    seen, error = await failure(chat, request())
    assert isinstance(error, BrokenStream)
    assert seen


async def test_missing_usage_is_estimated(chat: OpenAIChat, server: StandinServer) -> None:
    server.inject("no_usage")
    _, done = await collect(chat, request())
    assert done.input_tokens == count_prompt(request().messages)
    assert done.output_tokens == count_text(done.text)


async def test_content_filter_is_refused(chat: OpenAIChat) -> None:
    _, error = await failure(chat, request(CONTENT + " [[fault:content_filter]]"))
    assert isinstance(error, ContentRefused)


async def test_invalid_json_is_passed_on_for_the_service_to_judge(chat: OpenAIChat) -> None:
    _, done = await collect(chat, request("JSON please [[fault:invalid_json]]", json_mode=True))
    with pytest.raises(json.JSONDecodeError):
        json.loads(done.text)


async def test_long_answer_streams_whole(chat: OpenAIChat) -> None:
    deltas, done = await collect(
        chat, request("[[fault:long_answer:2000]]", max_output_tokens=4096)
    )
    assert "".join(deltas) == done.text
    assert done.finish_reason == "stop"
    assert 1990 <= done.output_tokens <= 2000


async def test_stopping_early_leaves_the_client_usable(chat: OpenAIChat) -> None:
    stream = chat.stream(request())
    first = await anext(stream)
    assert isinstance(first, str)
    await stream.aclose()  # type: ignore[attr-defined]
    _, done = await collect(chat, request())
    assert done.text


async def test_from_settings_offline_placeholder_key(server: StandinServer) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=None,
        openai_base_url=None,
        openai_timeout=5.0,
        openai_max_retries=0,
        parley_fallback_models=["gpt-4o-mini"],
    )
    model = OpenAIChat.from_settings(settings, base_url=server.base_url)
    try:
        _, done = await collect(model, request(model="missing-4o"))
    finally:
        await model.close()
    assert done.model == "gpt-4o-mini"


async def test_from_settings_uses_the_key_and_url(server: StandinServer) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=SecretStr(API_KEY),
        openai_base_url=server.base_url,
    )
    model = OpenAIChat.from_settings(settings)
    try:
        _, done = await collect(model, request())
    finally:
        await model.close()
    assert done.text


async def test_from_settings_with_credentials_in_the_url(server: StandinServer) -> None:
    url = server.base_url.replace("http://", "http://gateway-user:gateway-secret@")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=SecretStr(API_KEY),
        openai_base_url=url,
        openai_max_retries=0,
    )
    model = OpenAIChat.from_settings(settings)
    try:
        _, done = await collect(model, request())
    finally:
        await model.close()
    assert done.text


def test_from_settings_without_key_or_url() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=None,
        openai_base_url=None,
    )
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIChat.from_settings(settings)
