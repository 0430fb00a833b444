"""The LLM port (``ChatModel``) and its implementation on the official ``openai`` client.

Everything Parley knows about the OpenAI API lives here: streaming, usage, model fallback and
turning the client's exceptions into ``core.errors`` sentences a user can read. Retries and
timeouts are the client's own options, never a loop of ours.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import openai

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
from core.tokens import TOKENS_REPLY_PRIMER, count_message, count_text

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionChunk

    from core.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
OFFLINE_API_KEY = "offline"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One call to the model: OpenAI chat messages (content a string or a list of parts)."""

    model: str
    messages: list[dict[str, Any]]
    temperature: float
    max_output_tokens: int
    json_mode: bool = False


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of a streamed answer: the whole text, who wrote it and what it cost in tokens."""

    text: str
    model: str
    input_tokens: int
    output_tokens: int
    finish_reason: str


class ChatModel(Protocol):
    """The port the conversation service talks to; fakes implement it in unit tests."""

    def stream(self, request: ChatRequest) -> AsyncIterator[str | Completion]:
        """Yield text deltas (str) as they arrive, then exactly one Completion.

        Raise ``core.errors.LLMError`` subclasses on failure.
        """
        ...


def message_text_and_images(message: Mapping[str, Any]) -> tuple[str, int]:
    """The text of a chat message and how many images it carries (content str or parts)."""
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
    """Prompt tokens of a request as ``core.tokens`` counts them, including the reply primer."""
    total = TOKENS_REPLY_PRIMER
    for message in messages:
        text, images = message_text_and_images(message)
        total += count_message(text, images)
    return total


class OpenAIChat:
    """``ChatModel`` on ``openai.AsyncOpenAI``, with fallback to other models when one is missing."""

    def __init__(self, client: openai.AsyncOpenAI, fallback_models: Sequence[str] = ()) -> None:
        self._client = client
        self._fallback_models = tuple(fallback_models)

    @classmethod
    def from_settings(cls, settings: Settings, base_url: str | None = None) -> OpenAIChat:
        """Build the client from settings; ``base_url`` (e.g. the stand-in) overrides the setting.

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
        )
        return cls(client, settings.parley_fallback_models)

    async def close(self) -> None:
        """Release the HTTP connections."""
        await self._client.close()

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Completion]:
        """Stream the answer from the first model that exists, falling back in order."""
        models = list(dict.fromkeys([request.model, *self._fallback_models]))
        for index, model in enumerate(models):
            try:
                chunks = await self._open(request, model)
            except openai.APIStatusError as exc:
                if not _is_model_missing(exc):
                    _log_failure(exc, model)
                    raise _user_error(exc, model) from exc
                following = models[index + 1] if index + 1 < len(models) else None
                log.warning(
                    "model %s unavailable (%s status=%s request_id=%s); %s",
                    model,
                    type(exc).__name__,
                    exc.status_code,
                    exc.request_id,
                    f"falling back to {following}" if following else "no fallback left",
                )
                continue
            except openai.APIError as exc:
                _log_failure(exc, model)
                raise _user_error(exc, model) from exc
            async with contextlib.aclosing(self._read(chunks, request, model)) as items:
                async for item in items:
                    yield item
            return
        tried = ", ".join(models[1:])
        also = f" (also tried {tried})" if tried else ""
        raise ModelNotFound(
            f"The model {request.model} is not available to this bot{also}; "
            "please ask the bot's operator to check the model setting.",
            detail=f"no model available among {models}",
        )

    async def _open(
        self, request: ChatRequest, model: str
    ) -> openai.AsyncStream[ChatCompletionChunk]:
        # The messages are plain JSON already. Sent through ``extra_body`` they skip the
        # client's per-field type transform, whose CPU cost grows with every message in the
        # context (it dominated Parley's per-turn overhead in bench/core_overhead.py).
        body: dict[str, Any] = {"messages": request.messages}
        if request.json_mode:
            body["response_format"] = {"type": "json_object"}
        return await self._client.chat.completions.create(
            model=model,
            messages=[],
            temperature=request.temperature,
            max_tokens=request.max_output_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=body,
        )

    async def _read(
        self,
        chunks: openai.AsyncStream[ChatCompletionChunk],
        request: ChatRequest,
        model: str,
    ) -> AsyncGenerator[str | Completion, None]:
        """Yield the deltas of one open stream, then its Completion."""
        parts: list[str] = []
        refusal: list[str] = []
        finish_reason: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        try:
            async for chunk in chunks:
                if chunk.usage is not None:
                    input_tokens = chunk.usage.prompt_tokens
                    output_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    delta = choice.delta
                    if delta.refusal:
                        refusal.append(delta.refusal)
                    if delta.content:
                        parts.append(delta.content)
                        yield delta.content
                    if choice.finish_reason is not None:
                        finish_reason = choice.finish_reason
        except openai.APIError as exc:
            _log_failure(exc, model, request_id=_request_id(chunks))
            if isinstance(exc, openai.APITimeoutError) and not parts:
                raise _user_error(exc, model) from exc
            if exc.code == "content_filter":
                raise _refused() from exc
            raise _broken(f"stream failed: {type(exc).__name__}") from exc
        except ValueError as exc:  # a chunk that is not JSON: the server broke the protocol
            log.warning(
                "model call failed: unreadable stream chunk model=%s request_id=%s",
                model,
                _request_id(chunks),
            )
            raise _broken("unreadable stream chunk") from exc
        finally:
            await chunks.close()

        if finish_reason is None:
            log.warning(
                "model call failed: stream ended without finish_reason model=%s request_id=%s",
                model,
                _request_id(chunks),
            )
            raise _broken("stream ended without finish_reason")
        text = "".join(parts)
        if finish_reason == "content_filter" or (refusal and not text):
            log.warning(
                "model call refused: finish_reason=%s model=%s request_id=%s",
                finish_reason,
                model,
                _request_id(chunks),
            )
            raise _refused()
        if input_tokens is None or output_tokens is None:
            # Some OpenAI-compatible servers omit usage; estimate it the way the API counts.
            input_tokens = count_input_tokens(request.messages)
            output_tokens = count_text(text)
        yield Completion(
            text=text,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            finish_reason=finish_reason,
        )


def _is_model_missing(exc: openai.APIStatusError) -> bool:
    """The model does not exist or this key may not use it: worth trying the next one."""
    if isinstance(exc, openai.NotFoundError | openai.PermissionDeniedError):
        return True
    return isinstance(exc, openai.BadRequestError) and exc.code == "model_not_found"


def _request_id(chunks: openai.AsyncStream[ChatCompletionChunk]) -> str | None:
    return chunks.response.headers.get("x-request-id")


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
    return ContentRefused(
        "The model declined to answer this request (content filter); please rephrase it."
    )


def _broken(detail: str) -> BrokenStream:
    return BrokenStream(
        "The answer was cut off because the connection to the model broke; please try again.",
        detail=detail,
    )


def _user_error(exc: openai.APIError, model: str) -> LLMError:
    """The ``core.errors`` class and user sentence for an error the openai client raised."""
    detail = f"{type(exc).__name__} model={model} code={exc.code}"
    if isinstance(exc, openai.APITimeoutError):
        return ModelTimeout(
            "The model took too long to answer; please try again in a moment.", detail=detail
        )
    if isinstance(exc, openai.APIConnectionError):
        return ModelUnavailable(
            "Parley could not reach the model service; please try again in a moment.",
            detail=detail,
        )
    if isinstance(exc, openai.RateLimitError):
        if exc.code == "insufficient_quota":
            return QuotaExhausted(
                "The bot's OpenAI account has run out of credit; please tell the bot's operator.",
                detail=detail,
            )
        wait = _retry_after_seconds(exc)
        seconds = max(1, math.ceil(wait)) if wait is not None else 0
        when = f"in {seconds} second{'s' if seconds != 1 else ''}" if seconds else "in a minute"
        return RateLimited(
            f"The model is rate limited right now; please try again {when}.", detail=detail
        )
    if exc.code == "content_filter":
        return _refused()
    if isinstance(exc, openai.InternalServerError):
        return ModelUnavailable(
            "The model service had an error; please try again in a moment.", detail=detail
        )
    if isinstance(exc, openai.AuthenticationError):
        return LLMError(
            "The bot's OpenAI API key was rejected; please tell the bot's operator.",
            detail=detail,
        )
    if exc.code == "context_length_exceeded":
        return LLMError(
            "This conversation is too long for the model; use reset to start afresh.",
            detail=detail,
        )
    if isinstance(exc, openai.BadRequestError):
        return LLMError(
            "The model service rejected this request; please rephrase it or reset the "
            "conversation.",
            detail=detail,
        )
    return LLMError("The model call failed; please try again in a moment.", detail=detail)
