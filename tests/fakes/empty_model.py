"""A model server that always answers nothing: an OpenAI-compatible chat completions endpoint
on 127.0.0.1 whose every answer is empty (streamed as SSE chunks, or as one JSON body).

The stand-in model always says something; this fake is for what people are shown when a model
returns an empty answer.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

USAGE = {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}


class EmptyModel:
    """``async with EmptyModel() as model:``; ``model.base_url`` goes to ``OPENAI_BASE_URL``.

    ``requests`` holds the JSON body of every chat completions request, in order.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> EmptyModel:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        head = {
            "id": f"chatcmpl-empty{len(self.requests)}",
            "created": int(time.time()),
            "model": body.get("model", "gpt-4o"),
            "system_fingerprint": "fp_empty",
        }
        if not body.get("stream"):
            message = {"role": "assistant", "content": "", "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            return web.json_response(
                {**head, "object": "chat.completion", "choices": [choice], "usage": USAGE}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {**head, "object": "chat.completion.chunk"}
        deltas = [({"role": "assistant", "content": ""}, None), ({}, "stop")]
        for delta, finish in deltas:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            await _send(response, {**chunk, "choices": [choice]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await _send(response, {**chunk, "choices": [], "usage": USAGE})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
