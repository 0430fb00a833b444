"""An OpenAI-compatible chat completions server that answers without any model.

It is the offline stand-in for ``parley chat`` when no API key is configured, and the fake
OpenAI server of the integration tests and benchmarks. It speaks the real wire protocol (JSON,
SSE streaming with a usage chunk, OpenAI's error bodies and headers), counts tokens exactly
with ``core.tokens``, and can be told to misbehave: by ``inject()`` from the same process, or by
a ``[[fault:NAME]]`` / ``[[fault:NAME:ARG]]`` marker in the last user message from any process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from types import TracebackType
from typing import Any

from aiohttp import web

from adapters.standin.speech import speech_problem, speech_response
from core.llm import count_input_tokens, message_text_and_images
from core.tokens import count_text, encoding

# Each fault and the name of its one parameter (the marker's ARG), with its default.
FAULTS: dict[str, tuple[str, float] | None] = {
    "rate_limit": ("retry_after", 1.0),
    "quota": None,
    "server_error": None,
    "stall": ("seconds", 30.0),
    "cut_stream": ("chunks", 3.0),
    "invalid_json": None,
    "long_answer": ("tokens", 3000.0),
    "content_filter": None,
    "not_found": None,
    "no_usage": None,
    "early_done": ("chunks", 3.0),
}

MARKER = re.compile(r"\[\[fault:([a-z_]+)(?::([0-9.]+))?\]\]")
PREFIX = "(offline stand-in model)"
ECHO_CHARS = 300
WORDS_PER_CHUNK = 3
KNOWN_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4-turbo", "gpt-4")
_WORDS = re.compile(r"\S*\s*")


@dataclass(slots=True)
class _Queued:
    name: str
    arg: float | None
    remaining: int


class StandinServer:
    """Parley's own OpenAI-compatible HTTP server on aiohttp (see the module docstring).

    ``requests`` holds the JSON body of every chat completions request, in order of arrival.
    Models in ``unknown_models`` and any model named ``missing-*`` answer 404 model_not_found.
    ``latency`` seconds are waited before each streamed chunk, for realistic benchmarks.

    It can also play other OpenAI-compatible servers: ``model_name`` makes it one model that
    answers every request under that name (the offline stand-in is ``parley-standin``), or,
    with ``echo_model``, under the name asked for (as llama.cpp's server does) while listing
    only its own. ``context_window`` refuses prompts that do not fit with the real API's
    context-length error; with ``empty_stream_overflow`` a streamed request over the window
    gets a 200 and an empty body instead (llama.cpp's way); ``list_window`` puts the window in
    ``/v1/models`` as vLLM's ``max_model_len``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        unknown_models: Iterable[str] = frozenset(),
        *,
        record: bool = True,
        model_name: str | None = None,
        echo_model: bool = False,
        context_window: int | None = None,
        empty_stream_overflow: bool = False,
        list_window: bool = False,
    ) -> None:
        self.model_name = model_name
        self.echo_model = echo_model
        self.context_window = context_window
        self.empty_stream_overflow = empty_stream_overflow
        self.list_window = list_window
        self.host = host
        self.port = port
        self.latency = latency
        self.unknown_models = frozenset(unknown_models)
        self.record = record
        self.requests: list[dict[str, Any]] = []
        self.speech_requests: list[dict[str, Any]] = []
        self._faults: deque[_Queued] = deque()
        self._runner: web.AppRunner | None = None
        self._base_url = ""
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client, e.g. ``http://127.0.0.1:PORT/v1``."""
        if not self._base_url:
            raise RuntimeError("the stand-in server is not started")
        return self._base_url

    async def start(self) -> str:
        """Listen on ``host:port`` (port 0 picks a free one) and return the base URL."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_post("/v1/audio/speech", self._speech)
        # handler_cancellation: a client that gives up (timeout) ends its stalled handler.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = port
        self._base_url = f"http://{host}:{port}/v1"
        return self._base_url

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._base_url = ""

    async def __aenter__(self) -> StandinServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def inject(self, fault: str, *, times: int = 1, **params: float) -> None:
        """Queue ``fault`` for the next ``times`` requests (faults queued earlier go first).

        The one parameter a fault takes is named as in ``FAULTS``, e.g.
        ``inject("rate_limit", retry_after=0.05)`` or ``inject("stall", seconds=2)``.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        spec = FAULTS[fault]
        allowed = {spec[0]} if spec else set()
        if set(params) - allowed:
            raise TypeError(f"fault {fault!r} takes {sorted(allowed) or 'no parameters'}")
        arg = float(params[spec[0]]) if spec and spec[0] in params else None
        self._faults.append(_Queued(fault, arg, times))

    def reset(self) -> None:
        """Forget queued faults and recorded requests."""
        self._faults.clear()
        self.requests.clear()

    # --- handlers ---------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.StreamResponse:
        names = (self.model_name,) if self.model_name else KNOWN_MODELS
        data = [_model_object(name) for name in names]
        if self.list_window and self.context_window:
            for entry in data:
                entry["max_model_len"] = self.context_window
        return web.json_response({"object": "list", "data": data})

    async def _model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        if self._unknown(name):
            return _not_found(name, self._request_id())
        return web.json_response(_model_object(name))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        request_id = self._request_id()
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.", request_id)
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", request_id)
        if self.record:
            self.requests.append(body)

        faults = self._take_faults(body.get("messages"))
        if "stall" in faults:
            await asyncio.sleep(faults["stall"] or 0.0)
        failure: web.StreamResponse | None = _fault_response(faults, body, request_id)
        if failure is None:
            failure = self._rejection(body, request_id)
        if failure is None:
            failure = await self._overflow(request, body, request_id)
        if failure is not None:
            return failure

        reply = _reply(body, faults, request_id)
        if self.model_name and not self.echo_model:
            reply = replace(reply, model=self.model_name)
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
            return await self._stream(request, reply, request_id, faults, include_usage)
        if "cut_stream" in faults:
            return await _cut_plain(request, reply, request_id)
        return web.json_response(reply.completion(), headers={"x-request-id": request_id})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        """Text to speech: a short silent MP3 (see ``adapters.standin.speech``)."""
        request_id = self._request_id()
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.", request_id)
        if self.record and isinstance(body, dict):
            self.speech_requests.append(body)
        problem = speech_problem(body)
        if problem is not None:
            return _error(400, problem, request_id)
        faults = self._take_faults([{"role": "user", "content": body["input"]}])
        failure = _fault_response(faults, body, request_id)
        if failure is None and self._unknown(str(body["model"])):
            failure = _not_found(str(body["model"]), request_id)
        return failure or await speech_response(request, body, request_id)

    def _rejection(self, body: Mapping[str, Any], request_id: str) -> web.Response | None:
        """The 400 (or 404) the real API would answer to this request body, if any."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", request_id, param="model")
        if self._unknown(model):
            return _not_found(model, request_id)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty array", request_id, param="messages")
        if not all(isinstance(m, Mapping) for m in messages):
            return _error(400, "each message must be an object", request_id, param="messages")
        limit = _output_limit(body)
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            return _error(400, "max_tokens must be a positive integer", request_id, "max_tokens")
        if _json_mode(body) and not _mentions_json(messages):
            return _error(
                400,
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                request_id,
                param="messages",
            )
        return None

    async def _overflow(
        self, request: web.Request, body: Mapping[str, Any], request_id: str
    ) -> web.StreamResponse | None:
        """The answer to a prompt over ``context_window``, if it is one."""
        if self.context_window is None:
            return None
        prompt = count_input_tokens(body["messages"])
        output = _output_limit(body) or 0
        if prompt + output <= self.context_window:
            return None
        if body.get("stream") and self.empty_stream_overflow:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write_eof()
            return response
        return _error(
            400,
            f"This model's maximum context length is {self.context_window} tokens. However, "
            f"you requested {prompt + output} tokens ({prompt} in the messages, {output} in the "
            "completion). Please reduce the length of the messages or completion.",
            request_id,
            param="messages",
            code="context_length_exceeded",
        )

    async def _stream(
        self,
        request: web.Request,
        reply: _Reply,
        request_id: str,
        faults: dict[str, float | None],
        include_usage: bool,
    ) -> web.StreamResponse:
        """Send the answer as SSE chunks, or misbehave as the faults say."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": request_id,
            }
        )
        await response.prepare(request)
        cut_after = _int_arg(faults, "cut_stream")
        done_after = _int_arg(faults, "early_done")
        events = [reply.chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [reply.chunk({"content": piece}) for piece in _pieces(reply.text)]
        events.append(reply.chunk({}, finish_reason=reply.finish_reason))
        if include_usage and "no_usage" not in faults:
            events.append(reply.usage_chunk())

        for sent, event in enumerate(events):
            if cut_after is not None and sent >= cut_after:
                # Drop the connection mid-body: the client sees an incomplete chunked response.
                if request.transport is not None:
                    request.transport.abort()
                return response
            if done_after is not None and sent >= done_after:
                break
            if self.latency:
                await asyncio.sleep(self.latency)
            await response.write(b"data: " + _dumps(event) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # --- helpers ----------------------------------------------------------------------------

    def _request_id(self) -> str:
        return f"req_standin{next(self._ids):08d}"

    def _unknown(self, model: str) -> bool:
        return model in self.unknown_models or model.startswith("missing-")

    def _take_faults(self, messages: Any) -> dict[str, float | None]:
        """The faults for this request: the head of the queue, then markers in the message."""
        faults: dict[str, float | None] = {}
        if self._faults:
            head = self._faults[0]
            faults[head.name] = head.arg
            head.remaining -= 1
            if head.remaining <= 0:
                self._faults.popleft()
        for name, arg in _markers(messages):
            faults.setdefault(name, arg)
        for name, value in list(faults.items()):
            spec = FAULTS[name]
            if value is None and spec is not None:
                faults[name] = spec[1]
        return faults


@dataclass(frozen=True, slots=True)
class _Reply:
    """One answer and the ways to put it on the wire."""

    id: str
    model: str
    created: int
    text: str
    finish_reason: str
    usage: dict[str, int]

    def completion(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_standin",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_standin",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    def usage_chunk(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_standin",
            "choices": [],
            "usage": self.usage,
        }


def _output_limit(body: Mapping[str, Any]) -> Any:
    return body.get("max_completion_tokens") or body.get("max_tokens")


def _json_mode(body: Mapping[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, Mapping) and response_format.get("type") == "json_object"


def _reply(body: Mapping[str, Any], faults: Mapping[str, float | None], request_id: str) -> _Reply:
    """The answer to a valid request body, with its exact usage."""
    messages = body["messages"]
    text, finish_reason = _answer(messages, faults, _json_mode(body), _output_limit(body))
    usage = {"prompt_tokens": count_input_tokens(messages), "completion_tokens": count_text(text)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    completion_id = f"chatcmpl-standin{request_id.removeprefix('req_standin')}"
    return _Reply(completion_id, body["model"], int(time.time()), text, finish_reason, usage)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1715367049, "owned_by": "parley-standin"}


def _error(
    status: int,
    message: str,
    request_id: str,
    param: str | None = None,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error response in OpenAI's shape."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(
        body, status=status, headers={"x-request-id": request_id, **(headers or {})}
    )


def _not_found(model: str, request_id: str) -> web.Response:
    return _error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        request_id,
        code="model_not_found",
    )


def _fault_response(
    faults: Mapping[str, float | None], body: Mapping[str, Any], request_id: str
) -> web.Response | None:
    """The error response an injected fault asks for, if any."""
    if "rate_limit" in faults:
        seconds = max(0.0, faults["rate_limit"] or 0.0)
        return _error(
            429,
            "Rate limit reached for requests (offline stand-in fault injection).",
            request_id,
            type_="requests",
            code="rate_limit_exceeded",
            headers={
                # Whole seconds per HTTP; the openai client prefers the precise -ms header.
                "Retry-After": str(math.ceil(seconds)),
                "retry-after-ms": str(int(seconds * 1000)),
            },
        )
    if "quota" in faults:
        return _error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            request_id,
            type_="insufficient_quota",
            code="insufficient_quota",
        )
    if "server_error" in faults:
        return _error(
            500,
            "The server had an error while processing your request. Sorry about that!",
            request_id,
            type_="server_error",
        )
    if "content_filter" in faults:
        return _error(
            400,
            "The response was filtered due to the prompt triggering the content management "
            "policy (offline stand-in fault injection).",
            request_id,
            param="prompt",
            code="content_filter",
        )
    if "not_found" in faults:
        return _not_found(str(body.get("model")), request_id)
    return None


async def _cut_plain(request: web.Request, reply: _Reply, request_id: str) -> web.StreamResponse:
    """A non-streamed answer whose connection drops halfway through the body."""
    payload = _dumps(reply.completion())
    response = web.StreamResponse(
        headers={"Content-Type": "application/json", "x-request-id": request_id}
    )
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    if request.transport is not None:
        request.transport.abort()
    return response


def _int_arg(faults: Mapping[str, float | None], name: str) -> int | None:
    if name not in faults:
        return None
    return max(0, int(faults[name] or 0))


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return message_text_and_images(message)[0]
    return ""


def _markers(messages: Any) -> list[tuple[str, float | None]]:
    """``[[fault:NAME:ARG]]`` markers in the last user message (unknown names are ignored)."""
    text = _last_user_text(messages)
    if "[[fault:" not in text:
        return []
    found: list[tuple[str, float | None]] = []
    for match in MARKER.finditer(text):
        name, arg = match.group(1), match.group(2)
        if name in FAULTS:
            try:
                found.append((name, float(arg) if arg else None))
            except ValueError:
                found.append((name, None))
    return found


def _mentions_json(messages: list[Any]) -> bool:
    return any("json" in message_text_and_images(m)[0].lower() for m in messages)


def _answer(
    messages: list[Any], faults: Mapping[str, float | None], json_mode: bool, limit: int | None
) -> tuple[str, str]:
    """The deterministic answer text and its finish reason."""
    if "invalid_json" in faults:
        text = '{"answer": "' + PREFIX + " this reply is not valid JSON"
    else:
        if "long_answer" in faults:
            text = _long_text(max(1, int(faults["long_answer"] or 1)))
        else:
            text = _echo(messages)
        if json_mode:
            text = json.dumps({"answer": text, "source": "offline stand-in"}, ensure_ascii=False)
    if limit is not None:
        tokens = encoding().encode_ordinary(text)
        if len(tokens) > limit:
            cut = encoding().decode_bytes(tokens[:limit]).decode("utf-8", errors="ignore")
            return cut, "length"
    return text, "stop"


def _echo(messages: list[Any]) -> str:
    said = MARKER.sub("", _last_user_text(messages)).strip()
    if len(said) > ECHO_CHARS:
        said = said[:ECHO_CHARS] + "…"
    text = f"{PREFIX} You said: {said or '(nothing)'}"
    images = sum(message_text_and_images(m)[1] for m in messages)
    if images:
        text += f"\n\n(I received {images} image{'s' if images != 1 else ''}.)"
    return text


@lru_cache(maxsize=16)
def _long_text(tokens: int) -> str:
    """About ``tokens`` tokens of paragraphs with a fenced code block in the middle."""
    paragraphs: list[str] = []
    used = 0
    code_done = False
    number = 0
    while used < tokens + 50:
        number += 1
        paragraph = (
            f"{PREFIX} Paragraph {number}. This is a long, deterministic answer that lets "
            "Parley's splitting, streaming and length limits be tested without a real model. "
            "Each paragraph says the same thing with a different number, so it is easy to see "
            "where a message was split."
        )
        paragraphs.append(paragraph)
        used += count_text(paragraph) + 1
        if not code_done and used >= tokens // 2:
            code = (
                "```python\n"
                "def greet(name: str) -> str:\n"
                '    """Say hello from the offline stand-in."""\n'
                '    return f"Hello, {name}!"\n'
                "```"
            )
            paragraphs.append(code)
            used += count_text(code) + 1
            code_done = True
    ids = encoding().encode_ordinary("\n\n".join(paragraphs))[:tokens]
    return encoding().decode_bytes(ids).decode("utf-8", errors="ignore")


def _pieces(text: str) -> list[str]:
    """The text in deltas of a few words each; joined, they give the text back exactly."""
    words = [w for w in _WORDS.findall(text) if w]
    return ["".join(words[i : i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)]
