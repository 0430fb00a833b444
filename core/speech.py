"""Voice answers (``speak``): the text an answer is read from, and the file it becomes.

An answer is written in Markdown for the eye; read aloud, its markup would be spoken as
symbols. ``spoken_text`` keeps the words, and cuts them to what the speech endpoint reads at
once (``MAX_SPEECH_CHARS``).
"""

from __future__ import annotations

import re

from core.messages import AudioFile

# OpenAI's speech endpoint reads at most this many characters of input.
MAX_SPEECH_CHARS = 4096

MIME_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "wav": "audio/wav",
    "aac": "audio/aac",
    "flac": "audio/flac",
}

_FENCE = re.compile(r"^\s*(```|~~~).*$", re.MULTILINE)
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+", re.MULTILINE)
_QUOTE = re.compile(r"^\s*>\s?", re.MULTILINE)
_MARKS = re.compile(r"(\*\*|__|\*|`|~~)")
_BLANKS = re.compile(r"\n{3,}")


def spoken_text(answer: str, limit: int = MAX_SPEECH_CHARS) -> tuple[str, bool]:
    """``answer`` as words to read aloud (Markdown marks dropped, links read by their text),
    cut to ``limit`` characters at a word boundary; True when it was cut."""
    text = _FENCE.sub("", answer)
    text = _LINK.sub(r"\1", text)
    text = _HEADING.sub("", text)
    text = _BULLET.sub("", text)
    text = _QUOTE.sub("", text)
    text = _MARKS.sub("", text)
    text = _BLANKS.sub("\n\n", text).strip()
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(), True


def audio_file(data: bytes, audio_format: str) -> AudioFile:
    """The file a ``speak`` command uploads: named after what it is, with the extension and
    media type of ``audio_format``."""
    extension = audio_format if audio_format in MIME_TYPES else "mp3"
    return AudioFile(f"parley-answer.{extension}", MIME_TYPES[extension], data)


__all__ = ["MAX_SPEECH_CHARS", "MIME_TYPES", "audio_file", "spoken_text"]
