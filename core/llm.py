"""``ChatModel`` (see ``core.ports``) on the official ``openai`` client.

Everything Parley knows about the OpenAI API lives here: the wire format of messages and
images, streaming, usage, model fallback and turning the client's exceptions into
``core.errors`` with the sentences a user can read. Retries and timeouts are the client's own
options, never a loop of ours.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import math
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import httpx2
import jiter
import openai

from core import sentences
from core.errors import (
    BrokenStream,
    ConfigError,
    ContentRefused,
    ContextTooLong,
    EndpointNotFound,
    LLMError,
    ModelNotFound,
    ModelTimeout,
    ModelUnavailable,
    QuotaExhausted,
    RateLimited,
)
from core.ports import (
    ChatModel,
    ChatRequest,
    Completion,
    ImageInput,
    PromptMessage,
    Speech,
    SpeechRequest,
)
from core.tokens import TOKENS_REPLY_PRIMER, count_message, count_prompt, count_text

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

    from core.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
OPENAI_HOST = "api.openai.com"
OFFLINE_API_KEY = "offline"
_DONE = b"[DONE]"
_DRAIN_SECONDS = 0.1
# A request body as the openai client encodes one (compact, UTF-8 as it is, no NaN), by one
# encoder made once.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --- the wire format --------------------------------------------------------------------------


def image_url(image: ImageInput) -> str:
    """An image as the ``data:`` URL the chat completions API takes."""
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def wire_message(message: PromptMessage) -> dict[str, Any]:
    """A prompt message as OpenAI's JSON: content a string, or text and image parts."""
    if not message.images:
        return {"role": message.role, "content": message.text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.text}]
    parts += [{"type": "image_url", "image_url": {"url": image_url(i)}} for i in message.images]
    return {"role": message.role, "content": parts}


def message_text_and_images(message: Mapping[str, Any]) -> tuple[str, int]:
    """The text of an OpenAI JSON chat message and how many images it carries."""
    content = message.get("content")
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts: list[str] = []
    images = 0
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images += 1
    return "\n".join(texts), images


def count_input_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens of OpenAI JSON messages as ``core.tokens`` counts them (reply primer
    included); ``core.tokens.count_prompt`` counts the same for ``PromptMessage``s."""
    total = TOKENS_REPLY_PRIMER
    for message in messages:
        text, images = message_text_and_images(message)
        total += count_message(text, images)
    return total


# --- reading a stream -------------------------------------------------------------------------


class _Events:
    """Server-sent events read straight from the bytes of a stream: the data of each event.

    Lines end with LF, CRLF or CR; an empty line ends an event; its ``data:`` lines are joined
    with LF. Event names, ids, retry times and comments do not matter to a chat stream and are
    skipped, as is an event without data. Lean on purpose: no object per event or per line."""

    __slots__ = ("_data", "_rest")

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of each event that ``chunk`` completes."""
        if self._rest:
            chunk = self._rest + chunk
        if b"\r" in chunk:
            chunk = _lf_lines(chunk)
        lines = chunk.split(b"\n")
        self._rest = lines.pop()
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value[:1] == b" " else value)
            elif line == b"data":
                self._data.append(b"")
        return events


def _lf_lines(chunk: bytes) -> bytes:
    """``chunk`` with CRLF and CR line ends made LF; a CR at its very end is kept as it is
    (the next chunk may begin with the LF of a CRLF)."""
    held = chunk.endswith(b"\r")
    if held:
        chunk = chunk[:-1]
    chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return chunk + b"\r" if held else chunk


@dataclass(slots=True)
class _Answer:
    """What one stream has said so far."""

    parts: list[str] = field(default_factory=list)
    refused: bool = False
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    chunks: int = 0
    done: bool = False
    events: _Events = field(default_factory=_Events)

    def feed(self, data: bytes, response: httpx2.Response) -> tuple[str, Exception | None]:
        """Take in the bytes of the stream as they arrived; returns the text the events they
        complete add (one piece: it arrived at once), and the error that cut them short.

        The error is a ValueError for an event that is not a JSON object, or
        ``openai.APIError`` for an error the server reported in the stream (as the client's
        own stream reader raises it); the text of the events before it comes with it."""
        added = ""
        try:
            for event in self.events.feed(data):
                if event.startswith(_DONE):
                    self.done = True
                    break
                chunk = _json(event)
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise _in_stream_error(chunk["error"], response)
                added += self.add(chunk)
        except (ValueError, openai.APIError) as exc:
            return added, exc
        return added, None

    def add(self, chunk: object) -> str:
        """Take in one chunk (the JSON the server streamed); returns the text it adds.

        Read as plain JSON: a model object per chunk cost more CPU than the rest of a turn's
        streaming. Raises ValueError for a chunk that is not a JSON object."""
        if not isinstance(chunk, dict):
            raise ValueError("a stream chunk is not a JSON object")
        self.chunks += 1
        if self.model is None and isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = _count(usage.get("prompt_tokens"))
            self.output_tokens = _count(usage.get("completion_tokens"))
        added = ""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = {}
            if delta.get("refusal"):
                self.refused = True
            content = delta.get("content")
            if content and isinstance(content, str):
                self.parts.append(content)
                added += content
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
        return added

    def completion(self, request: ChatRequest, model: str, request_id: str | None) -> Completion:
        """The finished answer; raises if the stream ended early or the model refused."""
        if self.finish_reason is None:
            log.warning(
                "model call failed: stream ended without finish_reason model=%s request_id=%s",
                model,
                request_id,
            )
            raise _broken("stream ended without finish_reason")
        text = "".join(self.parts)
        if self.finish_reason == "content_filter" or (self.refused and not text):
            log.warning(
                "model call refused: finish_reason=%s model=%s request_id=%s",
                self.finish_reason,
                model,
                request_id,
            )
            raise _refused()
        return _completion(
            request,
            text,
            self.model or model,
            self.finish_reason,
            self.input_tokens,
            self.output_tokens,
        )


def _json(event: bytes) -> object:
    """The JSON of one event. jiter reads a chunk in a quarter of the time json takes; what
    it refuses goes to json, which reads a little more (a lone surrogate in an escape, a
    byte order mark) or raises the ValueError for a broken chunk."""
    try:
        return jiter.from_json(event, cache_mode="keys")
    except ValueError:
        return json.loads(event)


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows ``[DONE]`` (the end of the body), so the connection can be used again;
    a server that keeps the stream open or drops it then costs at most ``_DRAIN_SECONDS``, and
    never the answer, which is complete."""
    with contextlib.suppress(TimeoutError, httpx2.RequestError, ssl.SSLError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in chunks:
                pass


def _in_stream_error(error: object, response: httpx2.Response) -> openai.APIError:
    """The client's error for an error the server reported inside a stream."""
    message = error.get("message") if isinstance(error, dict) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return openai.APIError(message, response.request, body=error)


def _count(value: object) -> int | None:
    """A token count as the server reported it, if it is one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _completion(
    request: ChatRequest,
    text: str,
    model: str,
    finish_reason: str,
    input_tokens: int | None,
    output_tokens: int | None,
) -> Completion:
    """A Completion with the server's usage, or Parley's estimate marked as one."""
    if input_tokens is None or output_tokens is None:
        # Some OpenAI-compatible servers omit usage; estimate it the way the API counts.
        estimate = count_prompt(request.messages), count_text(text)
        return Completion(text, model, *estimate, finish_reason, estimated=True)
    return Completion(text, model, input_tokens, output_tokens, finish_reason)


# --- what the server says about its models ------------------------------------------------


class ServerModels:
    """The models an OpenAI-compatible server lists, and their context windows where it
    says (vLLM's ``max_model_len`` in ``/models``, Ollama's ``/api/show``); asked once.

    It names the model that really answered: a server with one model loaded (llama.cpp's)
    answers any model name and echoes the name it was asked for.
    """

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client.with_options(max_retries=0)
        self._openai = client.base_url.host == OPENAI_HOST
        self._listed: dict[str, int | None] | None = None
        self._shown: dict[str, int | None] = {}

    async def listed(self) -> dict[str, int | None]:
        """Model ids the server lists, each with its window if the listing gives it."""
        if self._listed is None:
            self._listed = {}
            try:
                page = await self._client.models.list()
            except (openai.APIError, ValueError) as exc:
                log.info("the model server lists no models (%s)", type(exc).__name__)
                return self._listed
            for entry in page.data:
                window = (entry.model_extra or {}).get("max_model_len")
                self._listed[entry.id] = window if isinstance(window, int) else None
        return self._listed

    async def identify(self, completion: Completion, requested: str) -> Completion:
        """``completion`` named by the model that answered, with the window the server
        reports for it."""
        listed = await self.listed()
        model = completion.model
        if model not in listed and len(listed) == 1:
            model = next(iter(listed))
            if model != requested:
                log.info("the server answered %s with its only model, %s", requested, model)
        window = listed.get(model)
        if window is None and model in listed and not self._openai:
            window = await self._ollama_window(model)
        if model == completion.model and window == completion.window:
            return completion
        return replace(completion, model=model, window=window)

    async def named(self, requested: str) -> str:
        """The model that answers a request for ``requested``: itself, or the only model of
        a server that has one (the offline stand-in answers every model as itself)."""
        listed = await self.listed()
        if requested not in listed and len(listed) == 1:
            return next(iter(listed))
        return requested

    async def _ollama_window(self, model: str) -> int | None:
        """The context Ollama runs ``model`` with: ``num_ctx`` if set, else what the model
        was trained for (``<architecture>.context_length``); None from other servers."""
        if model in self._shown:
            return self._shown[model]
        self._shown[model] = None
        root = str(self._client.base_url).rstrip("/").removesuffix("/v1")
        try:
            shown = await self._client.post(
                f"{root}/api/show", cast_to=object, body={"model": model}
            )
        except (openai.APIError, ValueError):
            return None
        self._shown[model] = _ollama_context(shown)
        return self._shown[model]


def _ollama_context(shown: object) -> int | None:
    """The context window in an Ollama ``/api/show`` answer, if it gives one."""
    if not isinstance(shown, Mapping):
        return None
    found = re.search(r"num_ctx\s+(\d+)", str(shown.get("parameters") or ""))
    if found:
        return int(found.group(1))
    info = shown.get("model_info")
    if isinstance(info, Mapping):
        for key, value in info.items():
            if str(key).endswith(".context_length") and isinstance(value, int):
                return value
    return None


def _http_client(
    url: str | None, timeout: float, make: Callable[[float], httpx2.AsyncClient] | None
) -> httpx2.AsyncClient | None:
    """The HTTP client for the openai client: ``make``'s (Parley's own, on aiohttp), else the
    openai client's aiohttp transport, each with 1,000 connections at once: the client's
    default transport checks every pooled connection on each request, a quarter of a worker's
    CPU at 100 conversations at once.

    A URL with credentials (``https://user:secret@gateway/v1``) keeps the default transport
    (None), which sends them as basic auth; the aiohttp ones refuse them next to the key."""
    parts = urlsplit(url or "")
    if parts.username or parts.password:
        return None
    client = make(timeout) if make is not None else openai.DefaultAioHttpClient(timeout=timeout)
    _only_accept_encoding(client.headers)
    return client


def _only_accept_encoding(headers: httpx2.Headers) -> None:
    """Of the HTTP client's own default headers keep Accept-Encoding (the encodings it can
    decode): the openai client sends its own Accept and User-Agent, and HTTP/1.1 keeps a
    connection open without ``Connection: keep-alive``. Each default header costs every
    request a merge with the openai client's headers."""
    accept_encoding = headers.get("Accept-Encoding")
    headers.clear()
    if accept_encoding:
        headers["Accept-Encoding"] = accept_encoding


# The openai client's headers naming the platform it runs on (its OS, architecture, Python,
# version, async library), left out: the same on every request, none of them needed by a
# server, and with them a request had nearly twice as many headers to merge, copy and
# send (about a tenth of the CPU of a request through the client). The retry count and read
# timeout it sends on each request stay.
_WITHOUT_PLATFORM_HEADERS: Mapping[str, Any] = {  # openai.Omit(): a default header left out
    name: openai.Omit()
    for name in (
        "X-Stainless-Lang",
        "X-Stainless-Package-Version",
        "X-Stainless-OS",
        "X-Stainless-Arch",
        "X-Stainless-Runtime",
        "X-Stainless-Runtime-Version",
        "X-Stainless-Async",
    )
}


class OpenAIChat:
    """``ChatModel`` on ``openai.AsyncOpenAI``, with fallback to other models when one is missing."""

    def __init__(self, client: openai.AsyncOpenAI, fallback_models: Sequence[str] = ()) -> None:
        self._client = client
        self._fallback_models = tuple(fallback_models)
        self._server = ServerModels(client)
        base = client.base_url
        # The absolute URL, as the client would make it of "/chat/completions" (once, not on
        # every request).
        self._chat_url = str(base.copy_with(raw_path=base.raw_path + b"chat/completions"))
        # Each request's idempotency key: unique to this process, cheaper than a UUID.
        self._key_prefix = f"parley-{secrets.token_hex(8)}-"
        self._keys = itertools.count()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        base_url: str | None = None,
        http_client: Callable[[float], httpx2.AsyncClient] | None = None,
    ) -> OpenAIChat:
        """Build the client from settings; ``base_url`` (e.g. the stand-in) overrides the setting;
        ``http_client`` makes the HTTP client (given the timeout) it sends requests with.

        Without a key, an explicit endpoint gets a placeholder key (local servers ignore it).
        """
        url = base_url or settings.openai_base_url
        if settings.openai_api_key is not None:
            api_key = settings.openai_api_key.get_secret_value()
        elif url:
            api_key = OFFLINE_API_KEY
        else:
            raise ConfigError(
                "OPENAI_API_KEY is not set: set it, or set OPENAI_BASE_URL to an "
                "OpenAI-compatible server"
            )
        client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=url or DEFAULT_BASE_URL,
            organization=settings.openai_organization,
            timeout=settings.openai_timeout,
            max_retries=settings.openai_max_retries,
            http_client=_http_client(url, settings.openai_timeout, http_client),
            default_headers=_WITHOUT_PLATFORM_HEADERS,
        )
        return cls(client, settings.parley_fallback_models)

    async def close(self) -> None:
        """Release the HTTP connections (the transport's session and its sockets)."""
        await self._client.close()

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Completion]:
        """Stream the answer from the first model that exists, falling back in order: its text
        as it arrives (what one read of the stream brings, in one piece), then its Completion.

        The stream is read here, not in a generator of its own: every piece of every answer
        passes through each generator between the model and the platform."""
        response, model = await self._opened(request)
        answer = _Answer()
        try:
            chunks = response.aiter_bytes()
            async for data in chunks:
                added, failed = answer.feed(data, response)
                if added:
                    yield added
                if failed is not None:
                    raise failed
                if answer.done:
                    await _drain(chunks)
                    break
        except (openai.APIError, httpx2.RequestError, ssl.SSLError) as exc:
            error = _client_error(exc, response)
            _log_failure(error, model, request_id=_request_id(response))
            raise _stream_error(error, model, request, started=bool(answer.parts)) from exc
        except ValueError as exc:  # a chunk that is not JSON: the server broke the protocol
            log.warning(
                "model call failed: unreadable stream chunk model=%s request_id=%s",
                model,
                _request_id(response),
            )
            raise _broken("unreadable stream chunk") from exc
        finally:
            await response.aclose()
        if answer.chunks == 0 and answer.finish_reason is None:
            log.warning(
                "model stream was empty; asking again without streaming model=%s request_id=%s",
                model,
                _request_id(response),
            )
            completion = await self._whole(request, model)
            if completion.text:
                yield completion.text
        else:
            completion = answer.completion(request, model, _request_id(response))
        yield await self._server.identify(completion, model)

    async def _opened(self, request: ChatRequest) -> tuple[httpx2.Response, str]:
        """The open stream of the first model that exists, and that model."""
        models = list(dict.fromkeys([request.model, *self._fallback_models]))
        for index, model in enumerate(models):
            try:
                return await self._open(request, model), model
            except openai.APIStatusError as exc:
                if not _is_model_missing(exc):
                    _log_failure(exc, model)
                    raise _user_error(exc, model, request) from exc
                following = models[index + 1] if index + 1 < len(models) else None
                log.warning(
                    "model %s unavailable (%s status=%s request_id=%s); %s",
                    model,
                    type(exc).__name__,
                    exc.status_code,
                    exc.request_id,
                    f"falling back to {following}" if following else "no fallback left",
                )
            except openai.APIError as raised:
                error = _true_error(raised)
                _log_failure(error, model)
                raise _user_error(error, model, request) from raised
        raise ModelNotFound(
            sentences.model_not_found(request.model, models[1:]),
            detail=f"no model available among {models}",
        )

    async def speak(self, request: SpeechRequest) -> Speech:
        """``request.text`` read aloud by the speech endpoint (``SpeechModel``).

        Models billed by tokens are asked for server-sent events, whose last event reports
        the tokens; ``tts-1`` and ``tts-1-hd`` (billed by character) answer the audio itself."""
        by_tokens = not request.model.startswith("tts-1")
        extra: dict[str, Any] = {"stream_format": "sse"} if by_tokens else {}
        try:
            answer = await self._client.audio.speech.create(
                input=request.text,
                model=request.model,
                voice=request.voice,
                response_format=cast(Any, request.audio_format),
                **extra,
            )
        except openai.APIError as raised:
            exc = _true_error(raised)
            _log_failure(exc, request.model)
            raise _speech_error(exc, request.model) from raised
        model = await self._server.named(request.model)
        kind = answer.response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "text/event-stream":
            audio, tokens = _speech_events(answer.text)
        else:
            audio, tokens = answer.content, None
        if not audio:
            log.warning("speech call failed: no audio in the answer model=%s", request.model)
            raise _broken("speech without audio")
        audio_format = _sniffed(audio) or AUDIO_FORMATS.get(kind, request.audio_format)
        if tokens is None:
            return Speech(audio, audio_format, model)
        return Speech(audio, audio_format, model, tokens[0], tokens[1])

    async def _open(self, request: ChatRequest, model: str) -> httpx2.Response:
        """Open the stream: the client's own request (auth, retries, timeouts, errors), its
        body handed over unread (``stream`` reads the events from its bytes). The body goes
        as the JSON bytes the client would make of it: its encoder, made on every request,
        and its merge of the body with ``extra_body`` are not needed."""
        body = _body(request)
        body.update(
            model=model,
            temperature=request.temperature,
            max_tokens=request.max_output_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        return await self._client.post(
            self._chat_url,
            cast_to=httpx2.Response,
            content=_JSON.encode(body).encode(),
            options=self._request_options(),
            stream=True,
        )

    def _request_options(self) -> openai.RequestOptions:
        """A chat request's options, each one the client's own: given, they spare the client
        a copy of its default (for most, a deep copy) on every request."""
        return {
            "headers": {},
            "params": {},
            "max_retries": self._client.max_retries,
            "timeout": self._client.timeout,
            "idempotency_key": f"{self._key_prefix}{next(self._keys)}",
        }

    async def _whole(self, request: ChatRequest, model: str) -> Completion:
        """The same request without streaming: some servers (llama.cpp's) fail a stream with
        an empty body, and only a plain request says why. Its errors are raised as ours."""
        client = self._client.with_options(max_retries=max(1, self._client.max_retries))
        try:
            done: ChatCompletion = await client.chat.completions.create(
                model=model,
                messages=[],
                temperature=request.temperature,
                max_tokens=request.max_output_tokens,
                extra_body=_body(request),
            )
        except openai.APIError as raised:
            exc = _true_error(raised)
            _log_failure(exc, model)
            raise _user_error(exc, model, request) from raised
        if not done.choices:
            raise _broken("empty answer to a plain request")
        choice = done.choices[0]
        usage = done.usage
        return _completion(
            request,
            choice.message.content or "",
            done.model or model,
            choice.finish_reason or "stop",
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
        )


# The audio format of a speech answer by its Content-Type (else the format asked for).
AUDIO_FORMATS = {
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/ogg": "opus",
    "audio/opus": "opus",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/aac": "aac",
    "audio/flac": "flac",
}


def _sniffed(audio: bytes) -> str | None:
    """The audio format the bytes themselves show (their magic numbers), if one we know."""
    if len(audio) > 1 and audio[0] == 0xFF and audio[1] & 0xE0 == 0xE0:
        # a frame sync: layer bits 00 are AAC's ADTS, any other layer is MPEG audio
        return "aac" if audio[1] & 0x06 == 0 else "mp3"
    if audio.startswith(b"ID3"):
        return "mp3"
    if audio.startswith(b"OggS"):
        return "opus"
    if audio.startswith(b"RIFF") and audio[8:12] == b"WAVE":
        return "wav"
    if audio.startswith(b"fLaC"):
        return "flac"
    return None


def _speech_events(body: str) -> tuple[bytes, tuple[int, int] | None]:
    """The audio of a speech answer sent as server-sent events (``speech.audio.delta``
    pieces in base64) and the tokens its ``speech.audio.done`` event reports."""
    audio = bytearray()
    tokens: tuple[int, int] | None = None
    for line in body.splitlines():
        data = line.removeprefix("data:").strip() if line.startswith("data:") else ""
        if not data or data == "[DONE]":
            continue
        try:
            event = json.loads(data)
            if event.get("type") == "speech.audio.delta":
                audio += base64.b64decode(event.get("audio") or "", validate=True)
            elif event.get("type") == "speech.audio.done":
                usage = event.get("usage") or {}
                tokens = int(usage["input_tokens"]), int(usage["output_tokens"])
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
            log.warning("speech call failed: unreadable event (%s)", type(exc).__name__)
            raise _broken("unreadable speech event") from exc
    return bytes(audio), tokens


def _speech_error(exc: openai.APIError, model: str) -> LLMError:
    """The error for a failed speech call: a missing speech model or endpoint says so, the
    rest get the sentences every model call gets."""
    missing = isinstance(exc, openai.NotFoundError | openai.PermissionDeniedError)
    if missing or exc.code == "model_not_found":
        detail = f"{type(exc).__name__} model={model} code={exc.code}"
        return ModelNotFound(sentences.speech_model_missing(model), detail=detail)
    return _user_error(exc, model)


def _body(request: ChatRequest) -> dict[str, Any]:
    """The request's messages (and JSON mode) as plain JSON for ``extra_body``.

    Sent this way they skip the client's per-field type transform, whose CPU cost grows with
    every message in the context (it dominated Parley's per-turn overhead in
    bench/core_overhead.py)."""
    messages = [
        wire_message(m) if m.images else {"role": m.role, "content": m.text}
        for m in request.messages
    ]  # text-only messages built inline: this runs for every message of every turn
    body: dict[str, Any] = {"messages": messages}
    if request.json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def _error_text(exc: openai.APIError) -> str:
    """What the server said about an error, lower-cased: its message and its body."""
    return f"{exc.message} {exc.body!r}".lower()


def _names_model(exc: openai.APIError) -> bool:
    """The error is about the model (or Azure deployment) asked for, not about the request."""
    if exc.code in {"model_not_found", "DeploymentNotFound"}:
        return True
    text = _error_text(exc)
    return "model" in text or "deployment" in text


def _is_model_missing(exc: openai.APIStatusError) -> bool:
    """The model does not exist or this key may not use it: worth trying the next one.

    A 404 that does not name a model is a route the server lacks (a base URL without /v1):
    no other model would fare better."""
    if isinstance(exc, openai.NotFoundError):
        return _names_model(exc)
    if isinstance(exc, openai.PermissionDeniedError):
        return True
    return isinstance(exc, openai.BadRequestError) and exc.code == "model_not_found"


_WINDOW = re.compile(r"(?:maximum context length|context window|n_ctx)\D{0,20}?(\d+)")
_SERVER_PROMPT = re.compile(
    r"(\d+) in the messages|messages resulted in (\d+) tokens|request has (\d+) input tokens"
    r"|n_prompt_tokens\D{0,5}(\d+)"
)
_CONTEXT_WORDS = ("context length", "context_length", "context size", "context window")


def _is_context_error(exc: openai.APIError) -> bool:
    """The prompt and the output limit do not fit the model's context window."""
    if exc.code == "context_length_exceeded" or exc.type == "exceed_context_size_error":
        return True
    text = _error_text(exc)
    return any(word in text for word in _CONTEXT_WORDS)


def _context_too_long(exc: openai.APIError, request: ChatRequest | None) -> ContextTooLong:
    """The error for an over-long prompt, with the window the server named, in Parley's
    tokens: scaled by how many tokens the server counted in a prompt Parley counts
    differently (its tokenizer is not the model's)."""
    text = _error_text(exc)
    found = _WINDOW.search(text)
    window = int(found.group(1)) if found else None
    counted = _SERVER_PROMPT.search(text)
    if window and counted and request is not None:
        theirs = int(next(g for g in counted.groups() if g))
        ours = count_prompt(request.messages)
        if theirs > ours > 0:
            window = window * ours // theirs
    return ContextTooLong(
        sentences.MODEL_CONTEXT_TOO_LONG, detail=f"server window={window}", window=window
    )


def _request_id(response: httpx2.Response) -> str | None:
    return response.headers.get("x-request-id")


def _client_error(exc: Exception, response: httpx2.Response) -> openai.APIError:
    """The client's error for a failure while reading a stream, as its own reader raises."""
    if isinstance(exc, openai.APIError):
        return _true_error(exc)
    if isinstance(exc, httpx2.TimeoutException) and _timed_out(exc):
        return openai.APITimeoutError(request=response.request)
    return openai.APIConnectionError(request=response.request)


def _true_error(exc: openai.APIError) -> openai.APIError:
    """``exc``, or a connection error where the client reported a timeout that was not one.

    The client's aiohttp transport reports every connection error it does not know better
    (a refused connection, a server that hung up) as a connect timeout."""
    if isinstance(exc, openai.APITimeoutError) and not _timed_out(exc):
        error = openai.APIConnectionError(request=exc.request)
        error.__cause__ = exc.__cause__
        return error
    return exc


def _timed_out(exc: BaseException) -> bool:
    """Whether a timeout is among the causes of ``exc`` (each transport raises the client's
    timeout errors from the ``TimeoutError`` that made them)."""
    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None:
            return False
        if isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _log_failure(exc: openai.APIError, model: str, *, request_id: str | None = None) -> None:
    """One line for the operator: what failed, where to look; never the key or the content."""
    status = getattr(exc, "status_code", None)
    request_id = request_id or getattr(exc, "request_id", None)
    log.warning(
        "model call failed: %s status=%s code=%s model=%s request_id=%s",
        type(exc).__name__,
        status,
        exc.code,
        model,
        request_id,
    )


def _retry_after_seconds(exc: openai.APIStatusError) -> float | None:
    """The wait the server asked for (``retry-after-ms`` or ``retry-after``), if any."""
    headers = exc.response.headers
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _refused() -> ContentRefused:
    return ContentRefused(sentences.MODEL_REFUSED)


def _broken(detail: str) -> BrokenStream:
    return BrokenStream(sentences.MODEL_STREAM_BROKEN, detail=detail)


def _stream_error(
    exc: openai.APIError, model: str, request: ChatRequest, *, started: bool
) -> LLMError:
    """The error for a stream that failed after it opened (``started``: text had arrived).

    An error the server reported inside the stream gets the sentence the same error gets
    before a stream opens: missing model, over-long prompt, content filter."""
    if isinstance(exc, openai.APITimeoutError) and not started:
        return _user_error(exc, model, request)
    if exc.code == "content_filter":
        return _refused()
    if not isinstance(exc, openai.APIConnectionError) and exc.body is not None:
        if _is_context_error(exc):
            return _context_too_long(exc, request)
        if exc.code == "model_not_found":
            return ModelNotFound(sentences.model_not_found(model, ()), detail="in stream")
    return _broken(f"stream failed: {type(exc).__name__}")


def _user_error(exc: openai.APIError, model: str, request: ChatRequest | None = None) -> LLMError:
    """The ``core.errors`` class and user sentence for an error the openai client raised."""
    detail = f"{type(exc).__name__} model={model} code={exc.code}"
    if isinstance(exc, openai.NotFoundError) and not _names_model(exc):
        return EndpointNotFound(sentences.MODEL_ENDPOINT_MISSING, detail=detail)
    if isinstance(exc, openai.APITimeoutError):
        return ModelTimeout(sentences.MODEL_TIMEOUT, detail=detail)
    if isinstance(exc, openai.APIConnectionError):
        return ModelUnavailable(sentences.MODEL_UNREACHABLE, detail=detail)
    if isinstance(exc, openai.RateLimitError):
        if exc.code == "insufficient_quota":
            return QuotaExhausted(sentences.MODEL_QUOTA, detail=detail)
        wait = _retry_after_seconds(exc)
        return RateLimited(sentences.model_rate_limited(wait), detail=detail)
    if exc.code == "content_filter":
        return _refused()
    if isinstance(exc, openai.InternalServerError):
        return ModelUnavailable(sentences.MODEL_SERVER_ERROR, detail=detail)
    if isinstance(exc, openai.AuthenticationError):
        return LLMError(sentences.MODEL_KEY_REJECTED, detail=detail)
    if _is_context_error(exc):
        return _context_too_long(exc, request)
    if isinstance(exc, openai.BadRequestError):
        return LLMError(sentences.MODEL_BAD_REQUEST, detail=detail)
    return LLMError(sentences.MODEL_FAILED, detail=detail)


__all__ = [
    "ChatModel",
    "ChatRequest",
    "Completion",
    "ImageInput",
    "OpenAIChat",
    "PromptMessage",
    "ServerModels",
    "Speech",
    "SpeechRequest",
    "count_input_tokens",
    "image_url",
    "message_text_and_images",
    "wire_message",
]
