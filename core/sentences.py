"""Every sentence Parley shows a person about the delivery of an answer, in one place.

Adapters never write their own wording for these situations: Slack, Discord and the terminal
show the same words, and a change here changes every platform at once.
"""

from __future__ import annotations

from collections.abc import Sequence

GENERIC_ERROR = "Sorry, something went wrong on my side while answering. Please try again."
RESTARTED = "Parley was restarted while answering; please ask again."
EMPTY_ANSWER = "_(empty answer)_"
CUT_OFF = "_(answer cut off at the output token limit)_"
WARNING_MARK = "⚠️"


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def file_too_large(name: str, limit: int, size: int | None = None) -> str:
    """An image over the size limit was not sent to the model."""
    if size is None:
        return f"{name} was not read: it is over the {_megabytes(limit)} limit for images."
    return (
        f"{name} was not read: it is {_megabytes(size)}, over the {_megabytes(limit)} limit "
        "for images."
    )


def file_truncated(name: str, limit: int) -> str:
    """A text file over the size limit: only its beginning was read."""
    return f"{name} is long: I read only its first {limit:,} bytes."


def file_not_downloaded(name: str, platform: str) -> str:
    """The platform would not give Parley a file's content."""
    return f"{name} could not be downloaded from {platform}, so I did not read it."


def file_unsupported(name: str) -> str:
    """A file that is neither an image nor text."""
    return f"{name} was not read: only images and text files are supported."


def image_unsupported(name: str, model: str) -> str:
    """An image sent to a model that does not accept images."""
    return f"{name} was not read: {model} does not accept images."


def with_notes(text: str, notes: Sequence[str]) -> str:
    """``text`` followed by the notes for the person (files not read, ...), one per line."""
    if not notes:
        return text
    return text + "\n\n" + "\n".join(f"_{note}_" for note in notes)


def answer_text(text: str, notes: Sequence[str] = ()) -> str:
    """The final message of an answer: the answer (or that it was empty), then the notes."""
    return with_notes(text if text.strip() else EMPTY_ANSWER, notes)


def failure_text(sentence: str, notes: Sequence[str] = ()) -> str:
    """The message ending a request that got no answer: the reason, then the notes."""
    return with_notes(f"{WARNING_MARK} {sentence.strip() or GENERIC_ERROR}", notes)


__all__ = [
    "CUT_OFF",
    "EMPTY_ANSWER",
    "GENERIC_ERROR",
    "RESTARTED",
    "WARNING_MARK",
    "answer_text",
    "failure_text",
    "file_not_downloaded",
    "file_too_large",
    "file_truncated",
    "file_unsupported",
    "image_unsupported",
    "with_notes",
]
