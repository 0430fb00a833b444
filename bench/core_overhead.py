"""Core overhead per turn and context build time, on SQLite and PostgreSQL.

Runs N turns through the real core (openai client, store, context assembly) against the
stand-in model server with zero latency, running in its own process. The overhead of a turn is
its wall time minus the time spent inside the model call, so it measures what Parley adds.
Prints a table and writes JSON (bench/results/core_overhead.json).

    python bench/core_overhead.py --turns 2000 --concurrency 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.context import build_context  # noqa: E402
from core.messages import Author, ConversationKey, FinalText, Inbound  # noqa: E402
from core.ports import ChatModel, ChatRequest, PromptMessage  # noqa: E402
from core.service import ConversationService  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.store import schema  # noqa: E402
from core.store.models import MessageRow  # noqa: E402
from core.store.sql import SqlStore, make_engine  # noqa: E402


class TimedModel:
    """Wraps a ChatModel and adds up the time spent inside each call, per task."""

    def __init__(self, inner: ChatModel) -> None:
        self.inner = inner
        self.spent: dict[int, float] = {}

    async def stream(self, request: ChatRequest):  # type: ignore[no-untyped-def]
        task = id(asyncio.current_task())
        start = time.perf_counter()
        try:
            async for item in self.inner.stream(request):
                yield item
        finally:
            self.spent[task] = self.spent.get(task, 0.0) + time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_standin() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "adapters.standin", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the stand-in server did not start")


async def pg_database(admin_url: str) -> tuple[str, str] | None:
    import asyncpg

    name = f"parley_bench_{uuid.uuid4().hex[:8]}"
    try:
        conn = await asyncpg.connect(admin_url, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")


async def drop_pg(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def turns(
    url: str, base_url: str, n: int, concurrency: int, rate: float = 0.0
) -> dict[str, Any]:
    """Run ``n`` turns over ``concurrency`` conversations.

    With ``rate`` 0 every conversation sends its next turn as soon as the last is answered
    (closed loop: the figure is throughput, and overhead includes queueing for the CPU). With a
    rate, turns arrive on a schedule of ``rate`` turns/s in all, as chat traffic does.
    """
    from core.llm import OpenAIChat

    settings = Settings(
        _env_file=None, database_url=url, openai_base_url=base_url, openai_api_key="bench"
    )
    store = SqlStore(make_engine(url))
    await schema.upgrade(store.engine)
    model = TimedModel(OpenAIChat.from_settings(settings, base_url=base_url))
    # as bots/bootstrap.py wires it: the store decides how conversations are locked
    service = ConversationService(store, model, settings)
    overheads: list[float] = []
    keys = [ConversationKey("bench", "w", f"c{i}") for i in range(concurrency)]
    per_worker = max(1, n // concurrency)

    async def worker(key: ConversationKey) -> None:
        # one unmeasured turn opens connections and warms caches
        async for _ in service.answer(Inbound(key, Author("u"), "warm-up")):
            pass
        await warmed.wait()  # measure only once every conversation is warm
        measured_from.append(time.perf_counter())
        period = concurrency / rate if rate else 0.0
        offset = period * keys.index(key) / concurrency
        began = time.perf_counter() + offset
        for i in range(per_worker):
            if period:
                await asyncio.sleep(max(0.0, began + i * period - time.perf_counter()))
            start = time.perf_counter()
            task = id(asyncio.current_task())
            model.spent[task] = 0.0
            done = False
            async for event in service.answer(Inbound(key, Author("u"), f"turn {i} question")):
                done = done or isinstance(event, FinalText)
            if not done:
                raise RuntimeError("a turn did not complete")
            overheads.append((time.perf_counter() - start - model.spent[task]) * 1000)

    warmed = asyncio.Barrier(concurrency)
    measured_from: list[float] = []
    await asyncio.gather(*(worker(k) for k in keys))
    elapsed = time.perf_counter() - min(measured_from)
    await model.inner.close()  # type: ignore[attr-defined]
    await store.close()
    return {
        "mode": f"{rate:g}/s" if rate else "closed",
        "turns": len(overheads),
        "concurrency": concurrency,
        "p50_ms": round(statistics.median(overheads), 3),
        "p99_ms": round(pct(overheads, 0.99), 3),
        "turns_per_s": round(len(overheads) / elapsed, 1),
    }


async def context_build(url: str, history: int, repeats: int = 30) -> float:
    """Median ms to build the context of a conversation with ``history`` stored turns."""
    store = SqlStore(make_engine(url))
    await schema.upgrade(store.engine)
    key = ConversationKey("bench", "w", f"history-{history}")
    state = await store.conversation(key)
    rows = [
        {
            "conversation_id": state.id,
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"stored turn number {i} " + "with some text " * 50,
            "token_count": 160,
            "author_id": "u",
            "author_name": "u",
            "status": "complete",
        }
        for i in range(history)
    ]
    async with store.engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            await conn.execute(MessageRow.__table__.insert(), rows[start : start + 5000])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await build_context(
            store,
            state,
            system_prompt="You are Parley.",
            user=PromptMessage("user", "new question"),
            user_tokens=5,
            user_turn_id=2**62,
            budget=16000,
        )
        times.append((time.perf_counter() - t0) * 1000)
    await store.close()
    return statistics.median(times)


async def main() -> tuple[dict[str, Any], Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument(
        "--rate", type=float, default=50.0, help="turns/s of the paced run (0: skip it)"
    )
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "core_overhead.json"))
    args = parser.parse_args()

    proc, base_url = start_standin()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"parley-bench-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    backends: list[tuple[str, str, str | None]] = [
        ("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db", None)
    ]
    created = await pg_database(args.pg)
    if created:
        backends.append(("postgresql", f"{created[1]}/{created[0]}", created[0]))
    results: dict[str, Any] = {"runs": [], "context": {}}
    try:
        for name, url, _ in backends:
            rates = [0.0] + ([args.rate] if args.rate else [])
            for rate in rates:
                row = await turns(url, base_url, args.turns, args.concurrency, rate)
                results["runs"].append({"backend": name, **row})
            small = await context_build(url, 100)
            large = await context_build(url, 100_000)
            results["context"][name] = {
                "history_100_ms": round(small, 3),
                "history_100k_ms": round(large, 3),
                "ratio": round(large / small, 2),
            }
    finally:
        proc.terminate()
        for _, _, db in backends:
            if db:
                await drop_pg(args.pg, db)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    header = (
        f"{'backend':<11}{'mode':>8}{'turns':>7}{'conc':>6}{'p50 ms':>9}{'p99 ms':>9}{'turns/s':>9}"
    )
    print("core overhead per turn (wall time minus time inside the model call)")
    print(header)
    print("-" * len(header))
    for r in results["runs"]:
        print(
            f"{r['backend']:<11}{r['mode']:>8}{r['turns']:>7}{r['concurrency']:>6}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['turns_per_s']:>9.1f}"
        )
    print("\ncontext build, median ms (budget 16,000 tokens)")
    print(f"{'backend':<11}{'100 msgs':>10}{'100k msgs':>11}{'ratio':>7}")
    for name, c in results["context"].items():
        print(
            f"{name:<11}{c['history_100_ms']:>10.2f}{c['history_100k_ms']:>11.2f}{c['ratio']:>7.2f}"
        )
    print(f"peak RSS: {results['peak_rss_mb']} MB")
    return results, Path(args.out)


def write_report(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    write_report(*asyncio.run(main()))
