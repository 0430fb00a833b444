"""What a turn costs a Parley worker: CPU, database round trips, latency and memory.

Each measurement runs in a worker process of its own, built as ``parley run`` builds one
(``bots.bootstrap.build``), against the stand-in model at zero latency in another process, on
SQLite and on PostgreSQL (a temporary database, dropped afterwards). A worker answers
``--turns`` turns over ``--concurrency`` conversations at once and reports:

- CPU ms per turn: the worker's process CPU over the measured turns / turns (the stand-in's own
  CPU is reported apart);
- statements, transactions and round trips per turn (a counting hook on SQLAlchemy's engines,
  ``tests/fakes/counting.py``; round trips are statements plus BEGIN and COMMIT of the
  transactions that send them);
- turns/s, and p50/p99 overhead (a turn's wall time minus the time spent in the model call);
- RSS once it has answered in ``--known`` conversations (10,000 by default);
- the median time to build a context with 100 and with ``--history`` stored turns.

``--base REV`` measures that revision too, in the same run (checked out into a temporary git
worktree, its tree first on ``sys.path``), and prints both side by side with their ratio.
``--repeat N`` runs everything N times, alternating, and reports medians. Prints a table and
writes JSON (bench/results/core_overhead.json). Temporary files, worktrees and databases are
removed also when a run fails.

    python bench/core_overhead.py --base 1569e46 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432/postgres"
FIGURES = (
    "cpu_ms",
    "standin_cpu_ms",
    "statements",
    "transactions",
    "round_trips",
    "turns_per_s",
    "p50_ms",
    "p99_ms",
    "rss_mb",
    "context_100_ms",
    "context_long_ms",
)


# --- the worker process --------------------------------------------------------------------


def _counting() -> Any:
    """The counting hook of this tree (also when measuring an older one)."""
    spec = importlib.util.spec_from_file_location(
        "parley_bench_counting", ROOT / "tests" / "fakes" / "counting.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Counting()


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class TimedModel:
    """Wraps a ChatModel and adds up the time spent inside each call, per task."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.spent: dict[int, float] = {}

    async def stream(self, request: Any):  # type: ignore[no-untyped-def]
        task = id(asyncio.current_task())
        start = time.perf_counter()
        try:
            async for item in self.inner.stream(request):
                yield item
        finally:
            self.spent[task] = self.spent.get(task, 0.0) + time.perf_counter() - start


async def _turn(service: Any, key: Any, text: str) -> None:
    from core.messages import Author, FinalText, Inbound

    done = False
    async for event in service.answer(Inbound(key, Author("u", "u"), text)):
        done = done or isinstance(event, FinalText)
    if not done:
        raise RuntimeError("a turn did not complete")


async def _measured_turns(service: Any, model: TimedModel, args: Any) -> dict[str, Any]:
    """``args.turns`` turns over ``args.concurrency`` conversations, closed loop."""
    from core.messages import ConversationKey

    counting = _counting()
    keys = [ConversationKey("bench", "w", f"c{i}") for i in range(args.concurrency)]
    per_conversation = max(1, args.turns // args.concurrency)
    overheads: list[float] = []
    started: list[tuple[float, float, float]] = []

    async def conversation(key: Any) -> None:
        await _turn(service, key, "warm-up")  # opens connections, warms caches
        if await warmed.wait() == 0:  # measure only once every conversation is warm
            counting.reset()
            started.append((time.perf_counter(), time.process_time(), _proc_cpu(args.standin)))
        for i in range(per_conversation):
            task = id(asyncio.current_task())
            model.spent[task] = 0.0
            start = time.perf_counter()
            await _turn(service, key, f"turn {i} question")
            overheads.append((time.perf_counter() - start - model.spent[task]) * 1000)

    warmed = asyncio.Barrier(args.concurrency)
    with counting:
        await asyncio.gather(*(conversation(k) for k in keys))
        wall = time.perf_counter() - started[0][0]
        cpu = time.process_time() - started[0][1]
        standin = _proc_cpu(args.standin) - started[0][2]
        counted = counting.snapshot()
    n = len(overheads)
    return {
        "turns": n,
        "cpu_ms": round(cpu * 1000 / n, 3),
        "standin_cpu_ms": round(standin * 1000 / n, 3),
        "statements": round(counted["statements"] / n, 2),
        "transactions": round(counted["transactions"] / n, 2),
        # the base revision's counting has no round trips: counted here the same way
        "round_trips": round(
            (counted["statements"] + 2 * (counted["transactions"] - counted["autocommit"])) / n,
            2,
        ),
        "turns_per_s": round(n / wall, 1),
        "p50_ms": round(statistics.median(overheads), 3),
        "p99_ms": round(pct(overheads, 0.99), 3),
    }


async def _known(service: Any, args: Any) -> float:
    """RSS once the worker has answered in ``args.known`` conversations."""
    import gc

    from core.messages import ConversationKey

    queue = iter(range(args.known))

    async def answerer() -> None:
        for i in queue:
            await _turn(service, ConversationKey("bench", "w", f"known{i}"), "hello")

    await asyncio.gather(*(answerer() for _ in range(args.concurrency)))
    gc.collect()
    return _rss_mb()


async def _context(store: Any, history: int, repeats: int = 30) -> float:
    """Median ms to build the context of a conversation with ``history`` stored turns."""
    from core.context import build_context
    from core.messages import ConversationKey
    from core.ports import PromptMessage
    from core.store.models import MessageRow

    state = await store.conversation(ConversationKey("bench", "w", f"history-{history}"))
    now = time.time_ns() // 1000 - history
    rows = [
        {
            "conversation_id": state.id,
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"stored turn number {i} " + "with some text " * 50,
            "token_count": 160,
            "author_id": "u",
            "author_name": "u",
            "status": "complete",
            "sent_at": now + i,
        }
        for i in range(history)
    ]
    async with store.engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            await conn.execute(MessageRow.__table__.insert(), rows[start : start + 5000])
    if store.engine.dialect.name == "postgresql":
        # what autovacuum does within a minute of a bulk insert like this one; the planner
        # of a table never analyzed guesses a handful of rows per conversation
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE messages")
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
    return round(statistics.median(times), 3)


async def worker(args: Any) -> dict[str, Any]:
    from bots.bootstrap import build
    from core.service import ConversationService
    from core.settings import Settings

    settings = Settings(
        _env_file=None,
        database_url=args.url,
        openai_base_url=args.base_url,
        openai_api_key="bench",
    )
    parley = await build(settings)
    try:
        model = TimedModel(parley.llm)
        service = ConversationService(parley.store, model, settings)
        result = await _measured_turns(service, model, args)
        result["rss_mb"] = await _known(service, args) if args.known else None
        result["context_100_ms"] = await _context(parley.store, 100)
        result["context_long_ms"] = await _context(parley.store, args.history)
    finally:
        await parley.close()
    return result


def _loop_runner() -> Any:
    """The event loop the measured tree's `parley run` runs on by default."""
    try:
        from bots.cli import loop_runner
    except ImportError:  # a revision from before the choice: the standard library's
        return asyncio.run
    return loop_runner("uvloop")


async def migrate(url: str) -> None:
    from core.store import schema
    from core.store.sql import make_engine

    engine = make_engine(url)
    try:
        await schema.upgrade(engine)
    finally:
        await engine.dispose()


# --- the bench process ----------------------------------------------------------------------


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


def _admin(admin_url: str, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(admin_url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _pg_reachable(admin_url: str) -> bool:
    try:
        _admin(admin_url, "SELECT 1")
    except Exception:  # noqa: BLE001 (no PostgreSQL: measure SQLite alone)
        return False
    return True


def _child(tree: Path, *argv: str) -> dict[str, Any]:
    """Run this file's ``argv`` step in a process of its own with ``tree`` first on sys.path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--tree", str(tree), *argv],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench step {argv[:2]} in {tree} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


class Run:
    """One bench run: its temporary directory, databases and worktree, removed at the end."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="parley-bench-"))
        self.databases: list[str] = []
        self.worktree: Path | None = None

    def base_tree(self, rev: str) -> Path:
        self.worktree = self.tmp / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(self.worktree), rev],
            check=True,
            capture_output=True,
        )
        return self.worktree

    def database(self, backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite+aiosqlite:///{self.tmp}/bench-{uuid.uuid4().hex[:8]}.db"
        name = f"parley_bench_{uuid.uuid4().hex[:8]}"
        _admin(self.args.pg, f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.args.pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + (
            f"/{name}"
        )

    def cleanup(self) -> None:
        for name in self.databases:
            try:
                _admin(self.args.pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:  # noqa: BLE001 (say so, and go on cleaning)
                print(f"could not drop database {name}: {exc}", file=sys.stderr)
        if self.worktree is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(self.worktree)],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(self.tmp, ignore_errors=True)

    def measure(self, tree: Path, backend: str, standin: tuple[int, str]) -> dict[str, Any]:
        url = self.database(backend)
        _child(tree, "--migrate", "--url", url)
        a = self.args
        return _child(
            tree,
            "--worker",
            "--url",
            url,
            "--base-url",
            standin[1],
            "--standin",
            str(standin[0]),
            "--turns",
            str(a.turns),
            "--concurrency",
            str(a.concurrency),
            "--known",
            str(a.known),
            "--history",
            str(a.history),
        )


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        name: round(statistics.median(r[name] for r in runs), 3)
        if runs[0].get(name) is not None
        else None
        for name in FIGURES
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    backends = ["sqlite"]
    if "postgresql" in args.backends and _pg_reachable(args.pg):
        backends.append("postgresql")
    backends = [b for b in backends if b in args.backends]
    run = Run(args)
    proc, base_url = start_standin()
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        trees = {"this": ROOT}
        if args.base:
            trees[args.base] = run.base_tree(args.base)
        for _ in range(args.repeat):
            for label, tree in trees.items():
                for backend in backends:
                    figures = run.measure(tree, backend, (proc.pid, base_url))
                    samples.setdefault(label, {}).setdefault(backend, []).append(figures)
    finally:
        proc.terminate()
        proc.wait(10)
        run.cleanup()
    results = {
        label: {backend: _medians(runs) for backend, runs in by_backend.items()}
        for label, by_backend in samples.items()
    }
    return {
        "turns": args.turns,
        "concurrency": args.concurrency,
        "known_conversations": args.known,
        "history": args.history,
        "repeat": args.repeat,
        "base": args.base,
        "results": results,
        "samples": samples,
    }


COLUMNS = (
    ("cpu_ms", "CPU ms", 8, 2),
    ("standin_cpu_ms", "model ms", 9, 2),
    ("statements", "stmts", 7, 1),
    ("transactions", "txns", 6, 1),
    ("round_trips", "trips", 7, 1),
    ("turns_per_s", "turns/s", 9, 0),
    ("p50_ms", "p50 ms", 8, 1),
    ("p99_ms", "p99 ms", 8, 1),
    ("rss_mb", "RSS MB", 8, 1),
    ("context_100_ms", "ctx100", 8, 2),
    ("context_long_ms", "ctxlong", 8, 2),
)


def _row(backend: str, label: str, figures: dict[str, Any], ratio: bool = False) -> str:
    cells = [f"{backend:<11}{label:<10}"]
    for name, _title, width, digits in COLUMNS:
        value = figures.get(name)
        if value is None:
            cells.append(f"{'-':>{width}}")
        elif ratio:
            cells.append(f"{value:>{width - 1}.2f}x")
        else:
            cells.append(f"{value:>{width}.{digits}f}")
    return "".join(cells)


def report(results: dict[str, Any]) -> None:
    print(
        f"per turn: {results['turns']} turns over {results['concurrency']} conversations, "
        f"stand-in model at zero latency in its own process; median of {results['repeat']} "
        f"run(s); RSS after {results['known_conversations']} conversations; context build "
        f"with 100 and {results['history']} stored turns"
    )
    header = f"{'backend':<11}{'tree':<10}" + "".join(
        f"{title:>{width}}" for _n, title, width, _d in COLUMNS
    )
    print(header)
    print("-" * len(header))
    this = results["results"]["this"]
    base = results["results"].get(results["base"] or "", {})
    for backend, figures in this.items():
        print(_row(backend, "this", figures))
        if backend in base:
            print(_row(backend, results["base"][:9], base[backend]))
            ratios = {
                n: (figures[n] / base[backend][n]) if figures[n] and base[backend][n] else None
                for n in FIGURES
            }
            results.setdefault("ratio", {})[backend] = {
                n: round(v, 3) if v is not None else None for n, v in ratios.items()
            }
            print(_row(backend, "ratio", ratios, ratio=True))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--known", type=int, default=10_000, help="conversations before RSS")
    parser.add_argument("--history", type=int, default=10_000, help="turns of the long context")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--base", help="a revision to measure side by side (e.g. 1569e46)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg", default=PG, help="PostgreSQL admin URL (temporary databases)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "core_overhead.json"))
    # one step in a process of its own (used by the bench itself)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--migrate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--standin", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    sys.path.insert(0, str(Path(args.tree) if args.tree else ROOT))
    if args.migrate:
        asyncio.run(migrate(args.url))
        return
    if args.worker:
        print(json.dumps(_loop_runner()(worker(args))))
        return
    # a run stopped with SIGTERM cleans up too (``Run.cleanup`` in a ``finally``)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    results = bench(args)
    report(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
