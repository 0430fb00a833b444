"""Answers in flight on one worker: how many conversations one worker answers at once on a
small PostgreSQL pool, while the model takes its time.

C conversations each get Q questions at once (so Q-1 of them wait their turn); the model
streams every answer over S seconds. Reports whether every answer completed, in order per
conversation, the most answers inside the model at once, the most connections checked out
of the pool at once, wall time and CPU. Prints a table and writes JSON
(bench/results/inflight.json).

With ``--http`` the answers come through the real openai client as ``parley run`` builds it
(``OpenAIChat.from_settings`` with ``adapters.model_http``'s transport and connection limits)
from an OpenAI-compatible server in this process, which counts the answers inside it at once;
CPU then includes that server's.

    python bench/inflight.py --conversations 1000 --questions 2 --stream-seconds 10 [--http]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from sqlalchemy import event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.model_http import model_http_client  # noqa: E402
from bots.bootstrap import build  # noqa: E402
from core.llm import OpenAIChat  # noqa: E402
from core.messages import Author, ConversationKey, FinalText, Inbound  # noqa: E402
from core.ports import ChatRequest, Completion  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.store import schema  # noqa: E402
from core.store.sql import SqlStore, make_engine  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


class SlowModel:
    """Streams "answer to <question>" in ten pieces over ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.inside = 0
        self.peak = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Completion]:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            text = f"answer to {request.messages[-1].text}"
            for _ in range(10):
                await asyncio.sleep(self.seconds / 10)
            yield text
            yield Completion(text, request.model, 10, 5, "stop")
        finally:
            self.inside -= 1

    async def close(self) -> None: ...


class HttpModel:
    """An OpenAI-compatible server streaming "answer to <question>" in ten pieces over
    ``seconds``, as server-sent events; counts the answers inside it at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.inside = 0
        self.peak = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}/v1"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = f"answer to {body['messages'][-1]['content']}"
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            step = -(-len(text) // 10)
            for start in range(0, len(text), step):
                await asyncio.sleep(self.seconds / 10)
                await response.write(_event({"content": text[start : start + step]}))
            await response.write(_event({}, "stop"))
            usage = {"prompt_tokens": 10, "completion_tokens": 5}
            await response.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode())
            await response.write(b"\n\ndata: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            self.inside -= 1


def _event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    chunk = {"id": "c", "model": "gpt-4o", "choices": [choice]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class PoolWatch:
    """The most connections checked out of ``store``'s pool at once."""

    def __init__(self, store: SqlStore) -> None:
        self.out = self.peak = 0
        pool = store.engine.sync_engine.pool
        event.listen(pool, "checkout", self._checkout)
        event.listen(pool, "checkin", self._checkin)

    def _checkout(self, *_: Any) -> None:
        self.out += 1
        self.peak = max(self.peak, self.out)

    def _checkin(self, *_: Any) -> None:
        self.out -= 1


async def _conversation(parley: Any, index: int, questions: int) -> bool:
    """Ask ``questions`` at once in one conversation; True if each was answered, in order."""
    key = ConversationKey("bench", "W1", f"C{index}")
    texts = [f"c{index} q{n}" for n in range(questions)]

    async def ask(n: int) -> str | None:
        sent = Inbound(key, Author("U1"), texts[n], sent_at=None)
        events = [e async for e in parley.service.answer(sent)]
        return next((e.text for e in events if isinstance(e, FinalText)), None)

    answers = await asyncio.gather(*(ask(n) for n in range(questions)))
    if answers != [f"answer to {t}" for t in texts]:
        return False
    state = await parley.store.conversation(key)
    turns = list(reversed(await parley.store.recent_messages(state.id, 0, 10**12, 2 * questions)))
    return [t.role for t in turns] == ["user", "assistant"] * questions and all(
        answer.content == f"answer to {question.content}"
        for question, answer in zip(turns[::2], turns[1::2], strict=True)
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"parley_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        store = SqlStore(make_engine(url, pool_size=args.pool, max_overflow=0))
        await schema.upgrade(store.engine)
        watch, slow = PoolWatch(store), SlowModel(args.stream_seconds)
        server = HttpModel(args.stream_seconds) if args.http else None
        settings = Settings(_env_file=None, database_url=url)
        llm: SlowModel | OpenAIChat = slow
        if server is not None:
            base_url = await server.start()
            llm = OpenAIChat.from_settings(settings, base_url, http_client=model_http_client)
        parley = await build(settings, store=store, llm=llm)
        started, cpu = time.perf_counter(), time.process_time()
        try:
            done = await asyncio.gather(
                *(_conversation(parley, i, args.questions) for i in range(args.conversations))
            )
        finally:
            await parley.close()
            await llm.close()
            if server is not None:
                await server.close()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    answers = args.conversations * args.questions
    return {
        "model": "http (openai client, server in this process)" if args.http else "in process",
        "conversations": args.conversations,
        "answers": answers,
        "in_order": sum(done),
        "model_at_once": (server or slow).peak,
        "pool_size": args.pool,
        "connections_at_once": watch.peak,
        "wall_s": round(wall, 1),
        "cpu_ms_per_answer": round(cpu * 1000 / answers, 2),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--stream-seconds", type=float, default=10.0)
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--http", action="store_true", help="through the openai client")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    out = ROOT / "bench" / "results" / "inflight.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["in_order"] == result["conversations"]
    print("all answered, in order" if ok else "SOME ANSWERS MISSING OR OUT OF ORDER")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
