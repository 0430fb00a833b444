"""One hierarchy for everything that can go wrong in Parley.

An error meant for a person carries the sentence they see (``user_message``); every adapter
renders it the same way. Anything else is a bug or an operator problem and is logged, while the
user gets a generic sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ParleyError(Exception):
    """Base of every error Parley raises on purpose."""


class ConfigError(ParleyError):
    """A setting is missing or invalid; the message names the variable."""


class SchemaOutOfDate(ParleyError):
    """The database schema is behind the code; run ``parley db upgrade``."""


class ClaimLost(ParleyError):
    """Another worker took over the answer this one was giving (this worker's lease ran out
    while it still lived, as when it stalls): that worker finishes it, this one gives it up."""


class Redelivered(ParleyError):
    """The event a turn was to claim is not this worker's to answer (handled before, or
    being answered by a live worker): nothing was stored, and nothing is said."""


class UserFacingError(ParleyError):
    """An error whose sentence is shown to the person who sent the message."""

    code = "error"

    def __init__(self, user_message: str, *, detail: str = "") -> None:
        super().__init__(detail or user_message)
        self.user_message = user_message
        self.detail = detail


class InputTooLong(UserFacingError):
    code = "too_long"


class BadCommand(UserFacingError):
    code = "bad_command"


class OverBudget(UserFacingError):
    code = "over_budget"


class LLMError(UserFacingError):
    """The model call failed; subclasses say why."""

    code = "llm_error"


class RateLimited(LLMError):
    code = "rate_limited"


class QuotaExhausted(LLMError):
    code = "quota"


class ModelTimeout(LLMError):
    code = "timeout"


class ContentRefused(LLMError):
    code = "refused"


class ModelUnavailable(LLMError):
    code = "model_unavailable"


class ModelNotFound(ModelUnavailable):
    """The model does not exist or this key may not use it; the next fallback model is tried."""

    code = "model_not_found"


class EndpointNotFound(ModelUnavailable):
    """The server has no chat completions route at the configured address (often a base URL
    without /v1); no fallback model can help."""

    code = "endpoint_not_found"


class ContextTooLong(LLMError):
    """The prompt and output limit exceed the model's context window; ``window`` is the
    window the server named, in Parley's tokens, when it said."""

    code = "context_too_long"

    def __init__(self, user_message: str, *, detail: str = "", window: int | None = None) -> None:
        super().__init__(user_message, detail=detail)
        self.window = window


class BrokenStream(LLMError):
    code = "broken_stream"


class InvalidJSONReply(LLMError):
    code = "invalid_json"

    def __init__(self, user_message: str, *, completions: Sequence[Any] = ()) -> None:
        super().__init__(user_message)
        # the model calls spent on the attempt, so they are still charged
        self.completions = list(completions)


class EmptyAnswer(LLMError):
    code = "empty_answer"
