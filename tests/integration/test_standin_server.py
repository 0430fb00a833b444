"""The stand-in model against the real ``openai`` client: wire format, usage, JSON mode, faults."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from adapters.standin import StandinServer
from core.llm import count_input_tokens
from core.tokens import TOKENS_PER_IMAGE, TOKENS_REPLY_PRIMER, count_message, count_text

ROOT = Path(__file__).resolve().parents[2]
HELLO = [
    {"role": "system", "content": "You are Parley."},
    {"role": "user", "content": "What does this stack trace mean?"},
]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.fixture
async def server() -> AsyncIterator[StandinServer]:
    async with StandinServer() as standin:
        yield standin


@pytest.fixture
async def client(server: StandinServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=5.0
    ) as real_client:
        yield real_client


def with_retries(server: StandinServer, retries: int, timeout: float = 5.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=server.base_url, api_key="sk-test", max_retries=retries, timeout=timeout
    )


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def raw_sse(server: StandinServer, body: dict[str, Any]) -> str:
    """The response body exactly as it went over the wire."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return await response.text()


async def test_plain_completion_reports_exact_usage(
    server: StandinServer, client: openai.AsyncOpenAI
) -> None:
    reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)

    text = reply.choices[0].message.content
    assert text is not None
    assert text.startswith("(offline stand-in model)")
    assert "What does this stack trace mean?" in text
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "gpt-4o"
    assert reply.usage is not None
    expected_prompt = (
        count_message("You are Parley.")
        + count_message("What does this stack trace mean?")
        + TOKENS_REPLY_PRIMER
    )
    assert reply.usage.prompt_tokens == expected_prompt
    assert reply.usage.completion_tokens == count_text(text)
    assert reply.usage.total_tokens == expected_prompt + count_text(text)
    assert [request["messages"] for request in server.requests] == [HELLO]


async def test_answers_are_deterministic(client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    second = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert first.choices[0].message.content == second.choices[0].message.content


async def test_long_input_is_echoed_in_part(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="gpt-4o", messages=user("x" * 5000))
    text = reply.choices[0].message.content or ""
    assert "x" * 300 in text
    assert "x" * 301 not in text


async def test_stream_deltas_and_final_usage_chunk(client: openai.AsyncOpenAI) -> None:
    plain = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1, "the answer should arrive in several deltas"
    assert "".join(deltas) == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert all(reason is None for reason in finishes[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == count_input_tokens(HELLO)
    assert last.usage.completion_tokens == count_text("".join(deltas))


async def test_stream_without_include_usage_has_no_usage_chunk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)


async def test_stream_ends_with_done_on_the_wire(server: StandinServer) -> None:
    body = {
        "model": "gpt-4o",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    text = await raw_sse(server, body)
    events = [block for block in text.split("\n\n") if block]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    usage_chunk = json.loads(events[-2].removeprefix("data: "))
    assert usage_chunk["object"] == "chat.completion.chunk"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == count_input_tokens(HELLO)


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
async def test_output_limit_truncates_with_length(
    client: openai.AsyncOpenAI, limit_field: str
) -> None:
    limit: dict[str, Any] = {limit_field: 4}
    reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO, **limit)
    text = reply.choices[0].message.content or ""
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == count_text(text)
    assert 0 < reply.usage.completion_tokens <= 4

    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        **limit,
    )
    chunks = [chunk async for chunk in stream]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


async def test_images_are_counted_and_mentioned(client: openai.AsyncOpenAI) -> None:
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "What is in these?"}, IMAGE, IMAGE]}
    ]
    reply = await client.chat.completions.create(model="gpt-4o", messages=messages)
    text = reply.choices[0].message.content or ""
    assert "2 images" in text
    assert "What is in these?" in text
    assert reply.usage is not None
    expected = count_message("What is in these?", images=2) + TOKENS_REPLY_PRIMER
    assert reply.usage.prompt_tokens == expected
    assert expected > 2 * TOKENS_PER_IMAGE


async def test_json_mode_requires_the_word_json(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-4o", messages=HELLO, response_format={"type": "json_object"}
        )
    assert caught.value.status_code == 400
    assert caught.value.param == "messages"
    assert caught.value.type == "invalid_request_error"
    assert caught.value.code is None
    assert "json" in caught.value.message.lower()


async def test_json_mode_answers_a_json_object(client: openai.AsyncOpenAI) -> None:
    messages: Any = [
        {"role": "system", "content": "Reply in JSON."},
        {"role": "user", "content": "List three colours."},
    ]
    reply = await client.chat.completions.create(
        model="gpt-4o", messages=messages, response_format={"type": "json_object"}
    )
    data = json.loads(reply.choices[0].message.content or "")
    assert isinstance(data, dict)
    assert "List three colours." in data["answer"]
    assert data["source"] == "offline stand-in"


async def test_unknown_models_are_not_found() -> None:
    async with (
        StandinServer(unknown_models={"gpt-4"}) as standin,
        with_retries(standin, 0) as client,
    ):
        for model in ("gpt-4", "missing-model"):
            with pytest.raises(openai.NotFoundError) as caught:
                await client.chat.completions.create(model=model, messages=HELLO)
            assert caught.value.code == "model_not_found"
            assert model in caught.value.message
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert reply.model == "gpt-4o-mini"


async def test_models_are_listed(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    ids = [model.id async for model in page]
    assert "gpt-4o" in ids
    assert "gpt-4o-mini" in ids


async def test_rate_limit_is_retried_after_retry_after(server: StandinServer) -> None:
    server.inject("rate_limit", retry_after=0.01)
    async with with_retries(server, 1) as client:
        reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content
    assert len(server.requests) == 2


async def test_rate_limit_gives_up_after_the_client_retries(server: StandinServer) -> None:
    server.inject("rate_limit", times=2, retry_after=0.01)
    async with with_retries(server, 1) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["Retry-After"] == "1"
    assert caught.value.response.headers["retry-after-ms"] == "10"
    assert len(server.requests) == 2


async def test_marker_fault_hits_every_retry(server: StandinServer) -> None:
    async with with_retries(server, 1) as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="gpt-4o", messages=user("hello [[fault:rate_limit:0.01]]")
            )
    assert len(server.requests) == 2


async def test_quota(client: openai.AsyncOpenAI, server: StandinServer) -> None:
    server.inject("quota")
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.code == "insufficient_quota"


async def test_server_error_then_recovery_on_retry(server: StandinServer) -> None:
    server.inject("server_error")
    async with with_retries(server, 1) as client:
        reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content
    assert len(server.requests) == 2


async def test_server_error(client: openai.AsyncOpenAI, server: StandinServer) -> None:
    server.inject("server_error")
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.status_code == 500
    assert caught.value.request_id is not None


async def test_stall_past_the_client_timeout(server: StandinServer) -> None:
    server.inject("stall", seconds=30)
    async with with_retries(server, 0, timeout=0.3) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content


async def test_cut_stream_breaks_mid_answer(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=user("tell me a story [[fault:cut_stream]]"), stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received).startswith("(offline")
    assert len(received) == 3


async def test_cut_plain_response(client: openai.AsyncOpenAI, server: StandinServer) -> None:
    server.inject("cut_stream")
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)


async def test_invalid_json_in_json_mode(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("Answer in JSON [[fault:invalid_json]]"),
        response_format={"type": "json_object"},
    )
    text = reply.choices[0].message.content or ""
    assert text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


async def test_long_answer(client: openai.AsyncOpenAI, server: StandinServer) -> None:
    server.inject("long_answer", tokens=800)
    reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    text = reply.choices[0].message.content or ""
    assert reply.usage is not None
    assert reply.usage.completion_tokens == count_text(text)
    assert 790 <= reply.usage.completion_tokens <= 800
    assert "```python\n" in text
    assert text.count("```") == 2

    by_marker = await client.chat.completions.create(
        model="gpt-4o", messages=user("[[fault:long_answer]]")
    )
    assert by_marker.usage is not None
    assert 2990 <= by_marker.usage.completion_tokens <= 3000
    again = await client.chat.completions.create(
        model="gpt-4o", messages=user("[[fault:long_answer]]")
    )
    assert again.choices[0].message.content == by_marker.choices[0].message.content


async def test_content_filter(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-4o", messages=user("[[fault:content_filter]]")
        )
    assert caught.value.code == "content_filter"


async def test_not_found_fault(client: openai.AsyncOpenAI, server: StandinServer) -> None:
    server.inject("not_found")
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.code == "model_not_found"


async def test_no_usage_and_early_done(client: openai.AsyncOpenAI, server: StandinServer) -> None:
    server.inject("no_usage")
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"

    server.inject("early_done", chunks=2)
    stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 2
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks)


async def test_injected_faults_apply_in_order_then_stop(
    client: openai.AsyncOpenAI, server: StandinServer
) -> None:
    server.inject("server_error", times=2)
    server.inject("not_found")
    outcomes: list[str] = []
    for _ in range(4):
        try:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            outcomes.append("ok")
        except openai.APIStatusError as exc:
            outcomes.append(str(exc.status_code))
    assert outcomes == ["500", "500", "404", "ok"]


async def test_inject_rejects_mistakes_and_reset_clears(
    client: openai.AsyncOpenAI, server: StandinServer
) -> None:
    with pytest.raises(ValueError):
        server.inject("meteor_strike")
    with pytest.raises(TypeError):
        server.inject("stall", retry_after=1)
    await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    server.inject("server_error")
    server.reset()
    assert server.requests == []
    reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content
    assert len(server.requests) == 1


async def test_latency_still_streams_the_whole_answer() -> None:
    async with StandinServer(latency=0.001) as standin, with_retries(standin, 0) as client:
        stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert "What does this stack trace mean?" in text


async def test_many_concurrent_streams(server: StandinServer, client: openai.AsyncOpenAI) -> None:
    async def one(index: int) -> str:
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=user(f"conversation {index}"), stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    answers = await asyncio.gather(*(one(i) for i in range(50)))
    assert all(f"conversation {i}" in answer for i, answer in enumerate(answers))
    assert len(server.requests) == 50


async def test_runs_standalone() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.standin",
        "--port",
        "0",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1")
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
            reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert (reply.choices[0].message.content or "").startswith("(offline stand-in model)")
    finally:
        process.terminate()
        assert await process.wait() == 0
