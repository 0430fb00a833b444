"""The stand-in's speech endpoint (``POST /v1/audio/speech``): a short, silent, valid MP3.

Whatever format is asked for, the answer is MP3 (``Content-Type: audio/mpeg``), so a client
that names files by the Content-Type gives it the ``.mp3`` extension. Models billed by tokens
may ask for server-sent events (``stream_format: "sse"``): the audio comes in
``speech.audio.delta`` events (base64) and a ``speech.audio.done`` event reports the tokens, as
OpenAI's endpoint does; ``tts-1`` and ``tts-1-hd`` refuse them, as OpenAI's do.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from core.tokens import count_text

MAX_INPUT_CHARS = 4096
# One MPEG-1 Layer III frame: 128 kbit/s, 44.1 kHz, mono, no CRC; 1,152 samples (26 ms).
MP3_FRAME_HEADER = bytes([0xFF, 0xFB, 0x90, 0xC4])
MP3_FRAME_BYTES = 417  # 144 * 128,000 / 44,100, rounded down (no padding)
MP3_FRAMES = 20  # about half a second
# About how many audio tokens one token of text becomes when read aloud.
AUDIO_TOKENS_PER_TEXT_TOKEN = 6
VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer"}
    | {"verse", "marin", "cedar"}
)


def silent_mp3(frames: int = MP3_FRAMES) -> bytes:
    """``frames`` silent MP3 frames: a header each and all-zero side information and data
    (no bits for any granule), which every decoder plays as silence."""
    frame = MP3_FRAME_HEADER + bytes(MP3_FRAME_BYTES - len(MP3_FRAME_HEADER))
    return frame * frames


def speech_problem(body: Any) -> str | None:
    """What the real endpoint would refuse in ``body`` (a 400's message), or None."""
    if not isinstance(body, Mapping):
        return "The request body must be a JSON object."
    text = body.get("input")
    if not isinstance(text, str) or not text:
        return "input must be a non-empty string"
    if len(text) > MAX_INPUT_CHARS:
        return f"input is too long: at most {MAX_INPUT_CHARS} characters"
    if not isinstance(body.get("model"), str) or not body.get("model"):
        return "you must provide a model parameter"
    if body.get("voice") not in VOICES:
        return f"voice must be one of {', '.join(sorted(VOICES))}"
    if body.get("stream_format") == "sse" and str(body.get("model")).startswith("tts-1"):
        return "stream_format 'sse' is not supported for tts-1 or tts-1-hd"
    return None


async def speech_response(
    request: web.Request, body: Mapping[str, Any], request_id: str
) -> web.StreamResponse:
    """The answer to a valid speech request: the MP3 itself, or events carrying it."""
    audio = silent_mp3()
    headers = {"x-request-id": request_id}
    if body.get("stream_format") != "sse":
        return web.Response(body=audio, content_type="audio/mpeg", headers=headers)
    tokens = count_text(str(body["input"]))
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
    await response.prepare(request)
    half = len(audio) // 2
    for piece in (audio[:half], audio[half:]):
        delta = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
        await response.write(f"data: {json.dumps(delta)}\n\n".encode())
    output = tokens * AUDIO_TOKENS_PER_TEXT_TOKEN
    usage = {"input_tokens": tokens, "output_tokens": output, "total_tokens": tokens + output}
    done = {"type": "speech.audio.done", "usage": usage}
    await response.write(f"data: {json.dumps(done)}\n\n".encode())
    await response.write_eof()
    return response


__all__ = ["MP3_FRAME_BYTES", "MP3_FRAME_HEADER", "silent_mp3", "speech_problem", "speech_response"]
