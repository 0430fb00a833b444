"""Chaos: two ``parley run`` workers on PostgreSQL answer 200 Slack questions while one or the
other is killed with SIGKILL and restarted; every question must be answered exactly once.

What runs, all on 127.0.0.1:

- the fake Slack (``tests.fakes.slack_server``), where answers are counted as people see them;
- two workers in Slack's HTTP mode sharing one fresh PostgreSQL database, each asking its own
  stand-in model (``adapters.standin``), slow enough that an answer streams for a second or
  two; each stand-in notes when each question's model call starts and ends, so every kill can
  be described: questions delivered to the worker but not yet asked of the model (before),
  model calls under way (during), answers the model gave but Slack does not show yet (after);
- a load balancer that delivers each event like Slack's Events API: signed (v0 HMAC), to one
  live worker in turn; on a connection error, a 3 s timeout or a non-2xx answer it retries on
  the other worker with ``X-Slack-Retry-Num`` / ``X-Slack-Retry-Reason``, at most 3 times;
- 200 questions ("question 17") in 40 threads of 8 channels, sent at a steady pace, while a
  chaos task kills a worker at planned moments (some right after an event was acknowledged,
  some at random while answers stream) and starts it again on the same port.

Then, once every question shows an answer (or a guard runs out), Slack's side must show each
question answered exactly once in its thread, no "Thinking…" placeholder, no open stream and no
other bot message; and the database must hold, for each thread, complete turns that alternate
question and answer in timestamp order, each answer echoing the question before it.

Worker logs are in the test's tmp directory (one file per worker and incarnation), with a
summary (``chaos-summary.txt``) that is also printed. ``PARLEY_CHAOS_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.slack.render import FEEDBACK_ACTION
from adapters.standin.server import StandinServer
from tests.fakes.slack_server import FakeSlack, Message

_SCRIPT = Path(sys.executable).with_name("parley")
PARLEY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "bots.cli"]

QUESTIONS = 200
THREADS = 40
CHANNELS = 8
SEND_SECONDS = 35.0
KILLS = 7
LEASE_SECONDS = 3
MODEL_LATENCY = 0.35  # per streamed chunk: an answer streams for about 1.5 s
ANSWER_GUARD = 180.0  # after the last question, how long answers may take (a hang guard)
IDLE_GUARD = 30.0  # stop waiting for answers sooner when nothing at all reaches Slack this long
ACK_TIMEOUT = 3.0  # Slack's: an event not acknowledged within 3 s is retried
RETRY_BACKOFF = (0.5, 1.0, 2.0)  # Slack waits ~0 s, 1 min, 5 min; compressed here
QUESTION = re.compile(r"\bquestion (\d+)\b")
ECHO = re.compile(r"You said: .*?\bquestion (\d+)\b")
THINKING = "Thinking…"

pytestmark = [pytest.mark.postgres]


def final(message: Message) -> bool:
    """Whether the bot's last write to ``message`` was an answer's final one: it carries
    the feedback buttons."""
    return any(
        str(element.get("action_id", "")).startswith(FEEDBACK_ACTION)
        for block in message.blocks or []
        for element in block.get("elements") or []
    )


def stray(message: Message) -> str:
    """What a bot message that is no final answer is."""
    if message.streaming:
        return "open stream"
    if THINKING in message.text:
        return "placeholder"
    if ECHO.search(message.text):
        return "answer never finished"
    return "other bot message"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def asked(body: bytes) -> int | None:
    """The question a chat completions request asks: the number in its last user message."""
    try:
        messages = json.loads(body).get("messages") or []
    except ValueError:
        return None
    for message in reversed(messages):
        if message.get("role") == "user":
            found = QUESTION.findall(json.dumps(message.get("content")))
            return int(found[-1]) if found else None
    return None


class WatchedModel(StandinServer):
    """The stand-in model of one worker, noting when each question's calls start and end."""

    def __init__(self) -> None:
        super().__init__(latency=MODEL_LATENCY, record=False)
        self.started: dict[int, list[float]] = defaultdict(list)
        self.ended: dict[int, list[float]] = defaultdict(list)  # answered in full
        self.open: Counter[int] = Counter()
        self.calls: list[list[Any]] = []  # [question, started, ended or None, outcome]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        number = asked(await request.read())  # aiohttp keeps the body for the handler
        if number is None:
            return await super()._chat(request)
        call: list[Any] = [number, now(), None, "open"]
        self.calls.append(call)
        self.started[number].append(time.monotonic())
        self.open[number] += 1
        try:
            response = await super()._chat(request)
        except BaseException as exc:
            call[3] = type(exc).__name__
            raise
        finally:
            self.open[number] -= 1
            call[2] = now()
        call[3] = "done"
        self.ended[number].append(time.monotonic())
        return response


@dataclass
class Worker:
    """One ``parley run`` slot: a port, its model and settings; incarnations come and go."""

    slot: int
    port: int
    model: WatchedModel
    env: dict[str, str]
    cwd: Path
    proc: asyncio.subprocess.Process | None = None
    incarnation: int = 0
    started_at: float = 0.0
    up: bool = False
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.incarnation += 1
        path = self.cwd / f"worker{self.slot}-{self.incarnation}.log"
        self.logs.append(path)
        with path.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *PARLEY, "run", cwd=self.cwd, env=self.env, stdout=out, stderr=out
            )
        self.started_at = time.monotonic()

    async def ready(self, session: aiohttp.ClientSession, guard: float = 60.0) -> None:
        """Wait until /healthz answers 200, then count the worker as up."""
        deadline = time.monotonic() + guard
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"worker {self.slot} exited: {self.tail()}")
            try:
                async with session.get(f"{self.url}/healthz", timeout=_timeout(1.0)) as r:
                    if r.status == 200:
                        self.up = True
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"worker {self.slot} not ready in {guard:.0f} s: {self.tail()}")

    async def kill(self) -> None:
        """SIGKILL: no goodbye, no cleanup."""
        self.up = False
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers (also the cleanup after a failure)."""
        self.up = False
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            await self.kill()

    def tail(self, lines: int = 30) -> str:
        if not self.logs:
            return "(no log)"
        text = self.logs[-1].read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


@dataclass
class Attempt:
    number: int  # the question
    attempt: int  # 0 first delivery, then retries
    slot: int
    incarnation: int
    at: float
    outcome: str  # "ok" or the retry reason it causes


class Balancer:
    """Delivers Events API bodies to the workers like Slack and a load balancer do."""

    def __init__(self, fake: FakeSlack, workers: list[Worker], session: aiohttp.ClientSession):
        self.fake = fake
        self.workers = workers
        self.session = session
        self.attempts: list[Attempt] = []
        self.undelivered: list[int] = []
        self.delivered: dict[int, Attempt] = {}  # the acknowledged attempt of each question
        self.watch: tuple[int, asyncio.Future[int]] | None = None
        self._turn = 0

    def _first(self) -> Worker:
        live = [w for w in self.workers if w.up] or self.workers
        self._turn += 1
        return live[self._turn % len(live)]

    async def deliver(self, number: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body)
        worker, reason = self._first(), ""
        for attempt in range(1 + len(RETRY_BACKOFF)):
            if attempt:
                await asyncio.sleep(RETRY_BACKOFF[attempt - 1])
                worker = self.workers[1 - worker.slot]
            headers = {"Content-Type": "application/json", **self.fake.signed_headers(raw)}
            if attempt:
                headers["X-Slack-Retry-Num"] = str(attempt)
                headers["X-Slack-Retry-Reason"] = reason
            incarnation = worker.incarnation
            reason = await self._post(worker, raw, headers)
            record = Attempt(number, attempt, worker.slot, incarnation, now(), reason)
            self.attempts.append(record)
            if reason == "ok":
                self.delivered[number] = record
                if self.watch is not None and self.watch[0] == worker.slot:
                    if not self.watch[1].done():
                        self.watch[1].set_result(number)
                return
        self.undelivered.append(number)

    async def _post(self, worker: Worker, raw: str, headers: dict[str, str]) -> str:
        try:
            async with self.session.post(
                f"{worker.url}/slack/events",
                data=raw,
                headers=headers,
                timeout=_timeout(ACK_TIMEOUT),
            ) as response:
                await response.read()
                return "ok" if 200 <= response.status < 300 else "http_error"
        except TimeoutError:
            return "http_timeout"
        except aiohttp.ClientError:
            return "connection_failed"


_T0 = time.monotonic()


def now() -> float:
    """Seconds since the run started."""
    return time.monotonic() - _T0


@dataclass
class Thread:
    channel: str
    user: str
    root: str = ""  # ts of its first question


@dataclass
class Kill:
    at: float
    slot: int
    incarnation: int
    kind: str  # "acked" (right after an event was acknowledged) or "random"
    question: int | None  # the event just acknowledged, for "acked"
    before: list[int]
    during: list[int]
    after: list[int]
    open_streams: int
    back_at: float = 0.0
    wall: str = field(default_factory=lambda: time.strftime("%H:%M:%S"))


class Chaos:
    """Two workers, the balancer, the questions and the kills of one run."""

    def __init__(self, fake: FakeSlack, workers: list[Worker], seed: int) -> None:
        self.fake = fake
        self.workers = workers
        self.seed = seed
        self.rng = random.Random(seed)
        self.threads = [
            Thread(f"C0CHAOS{t % CHANNELS}", f"U0PERSON{t:02d}") for t in range(THREADS)
        ]
        self.kills: list[Kill] = []
        self.balancer: Balancer | None = None
        self.sent_at: dict[int, float] = {}
        self.events: dict[int, dict[str, Any]] = {}

    # --- questions --------------------------------------------------------------------------

    def question(self, number: int) -> dict[str, Any]:
        thread = self.threads[number % THREADS]
        text = f"<@{self.fake.bot_user_id}> question {number}"
        if not thread.root:
            message = self.fake.add_message(thread.channel, text, user=thread.user)
            thread.root = message.ts
        else:
            message = self.fake.add_message(
                thread.channel, text, user=thread.user, thread_ts=thread.root
            )
        event = {
            "type": "app_mention",
            "user": thread.user,
            "text": text,
            "ts": message.ts,
            "channel": thread.channel,
            "team": self.fake.team_id,
            "event_ts": message.ts,
        }
        if message.thread_ts:
            event["thread_ts"] = message.thread_ts
        return event

    async def send_all(self, balancer: Balancer) -> None:
        start = time.monotonic()
        deliveries = []
        for number in range(QUESTIONS):
            pause = start + number * SEND_SECONDS / QUESTIONS - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            body = self.fake.event_body(self.question(number))
            self.events[number] = body
            self.sent_at[number] = now()
            deliveries.append(asyncio.create_task(balancer.deliver(number, body)))
        await asyncio.gather(*deliveries)

    # --- what Slack shows -------------------------------------------------------------------

    def shown(self) -> dict[int, list[Message]]:
        """Each question's final answers in any thread: messages echoing it whose last write
        is done (stream stopped, placeholder replaced: the feedback buttons come with the
        final write). Under -1: every other message of the bot."""
        found: dict[int, list[Message]] = defaultdict(list)
        for channel in {t.channel for t in self.threads}:
            for message in self.fake.messages.get(channel, []):
                if message.bot_id != self.fake.bot_id:
                    continue
                echoed = ECHO.findall(message.text)
                if message.streaming or not final(message) or len(echoed) != 1:
                    found[-1].append(message)
                else:
                    found[int(echoed[0])].append(message)
        return found

    def answered(self) -> set[int]:
        shown = self.shown()
        return {n for n in range(QUESTIONS) if shown.get(n)}

    # --- kills ------------------------------------------------------------------------------

    def plan(self) -> list[tuple[float, str]]:
        """When to kill and how: spread over the sending and a little after it."""
        span = SEND_SECONDS + 8.0
        moments = []
        for k in range(KILLS):
            at = 2.0 + span * (k + self.rng.uniform(0.1, 0.9)) / KILLS
            moments.append((at, "acked" if k % 2 == 0 else "random"))
        return moments

    async def monkey(self, session: aiohttp.ClientSession, start: float) -> None:
        """Kill a worker at each planned moment: a random one first, then each in turn (the
        survivor has taken the load meanwhile); start it again on its port 0.5-1 s later."""
        victim = self.rng.choice(self.workers)
        for at, kind in self.plan():
            pause = start + at - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            # One at a time (the last victim is up again): Slack always has a worker.
            assert all(w.up for w in self.workers)
            question = None
            if kind == "acked" and now() < SEND_SECONDS:
                assert self.balancer is not None
                future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                self.balancer.watch = (victim.slot, future)
                try:
                    question = await asyncio.wait_for(future, 5)
                except TimeoutError:
                    pass
                self.balancer.watch = None
            kill = self.describe(victim, kind if question is not None else "random", question)
            await victim.kill()
            self.kills.append(kill)
            await asyncio.sleep(self.rng.uniform(0.5, 1.0))
            await victim.start()
            await victim.ready(session)
            kill.back_at = now()
            victim = self.workers[1 - victim.slot]

    def describe(self, victim: Worker, kind: str, question: int | None) -> Kill:
        """What the victim has in hand at the moment it dies."""
        assert self.balancer is not None
        answered = self.answered()
        model, born = victim.model, victim.started_at
        during = sorted(n for n, calls in model.open.items() if calls > 0)
        after = sorted(
            n
            for n, ends in model.ended.items()
            if n not in answered and n not in during and ends[-1] >= born
        )
        mine = [
            n
            for n, a in self.balancer.delivered.items()
            if (a.slot, a.incarnation) == (victim.slot, victim.incarnation) and n not in answered
        ]
        before = sorted(n for n in mine if all(t < born for t in model.started.get(n, [])))
        return Kill(
            now(),
            victim.slot,
            victim.incarnation,
            kind,
            question,
            before,
            during,
            after,
            len(self.fake.open_streams()),
        )

    # --- verdicts ---------------------------------------------------------------------------

    def slack_problems(self) -> list[str]:
        """Each question answered exactly once, in its thread; nothing else left by the bot."""
        problems = []
        shown = self.shown()
        for number in range(QUESTIONS):
            thread = self.threads[number % THREADS]
            answers = shown.get(number, [])
            if not answers:
                problems.append(f"question {number}: no answer shown")
            elif len(answers) > 1:
                where = "; ".join(f"ts {m.ts} {self.how(m)}" for m in answers)
                problems.append(f"question {number}: answered {len(answers)} times: {where}")
            for m in answers:
                if (m.channel, m.thread_ts) != (thread.channel, thread.root):
                    problems.append(
                        f"question {number}: answer {m.ts} in {m.channel}/{m.thread_ts}"
                    )
        for m in shown.get(-1, []):
            what = stray(m)
            problems.append(
                f"{what} {m.channel}/{m.thread_ts} ts {m.ts} {self.how(m)}: {m.text[:100]!r}"
            )
        for stream in self.fake.open_streams():
            problems.append(
                f"stream never stopped: {stream.channel}/{stream.thread_ts} ts {stream.ts}"
            )
        return problems

    def how(self, message: Message) -> str:
        """How the bot wrote ``message``: which calls touched it, in order."""
        touched = [
            c.method.removeprefix("chat.")
            for c in self.fake.calls
            if c.params.get("ts") == message.ts and c.method.startswith("chat.")
        ]
        opened = "startStream" if message.ts in self.fake.streams else "postMessage"
        return "(" + " ".join([opened, *touched]) + ")"

    async def database_problems(self, url: str) -> tuple[list[str], str]:
        """Each thread's complete turns, by (sent_at, id): U17 A17 U57 A57 ... as asked."""
        rows, states = await read_database(url)
        turns: dict[tuple[str, str], list[str]] = defaultdict(list)
        others: Counter[str] = Counter()
        for channel, thread, role, content, status in rows:
            if status != "complete":
                others[f"{role} {status}"] += 1
                continue
            pattern = ECHO if role == "assistant" else QUESTION
            found = pattern.findall(content)
            turns[(channel, thread)].append(f"{role[0].upper()}{found[-1] if found else '?'}")
        problems = []
        for t, thread in enumerate(self.threads):
            got = " ".join(turns.pop((thread.channel, thread.root), []))
            want = " ".join(f"U{n} A{n}" for n in range(t, QUESTIONS, THREADS))
            if got != want:
                problems.append(f"history of thread {t} ({thread.channel}/{thread.root}): {got}")
        problems += [f"conversation nobody asked in: {key}" for key in turns]
        facts = f"processed_events by state {dict(states)}; turns not complete {dict(others)}"
        return problems, facts

    def summary(self, started: float, timeline: dict[str, float], facts: str) -> str:
        assert self.balancer is not None
        attempts = self.balancer.attempts
        failed = Counter(a.outcome for a in attempts if a.outcome != "ok")
        per_worker = Counter(f"worker {a.slot}" for a in attempts if a.outcome == "ok")
        retried = sorted({a.number for a in attempts if a.attempt})
        lines = [
            f"chaos run, seed {self.seed} (PARLEY_CHAOS_SEED={self.seed} replays the plan): "
            f"{QUESTIONS} questions in {THREADS} threads, 2 workers, lease {LEASE_SECONDS} s, "
            f"{time.monotonic() - started:.1f} s",
            "timeline: " + ", ".join(f"{k} {v:.1f}s" for k, v in timeline.items()),
            f"deliveries: {len(attempts)} attempts, acknowledged {dict(per_worker)}, "
            f"failed attempts {dict(failed)}, questions retried {len(retried)} {retried[:30]}, "
            f"undelivered (Slack gave up) {self.balancer.undelivered}",
            f"kills ({len(self.kills)}):",
        ]
        for k in self.kills:
            acked = f" after acking q{k.question}" if k.question is not None else ""
            lines.append(
                f"  {k.at:5.1f}s ({k.wall}) worker {k.slot} #{k.incarnation} {k.kind}{acked}: "
                f"before model {k.before}, during {k.during}, after {k.after}; "
                f"open streams at Slack {k.open_streams}; back up {k.back_at:.1f}s"
            )
        shown = self.shown()
        left = Counter(stray(m) for m in shown.get(-1, []))
        lines.append(
            f"answers shown: {len(self.answered())}/{QUESTIONS}, "
            f"duplicated {sorted(n for n, m in shown.items() if n >= 0 and len(m) > 1)}, "
            f"missing {sorted(set(range(QUESTIONS)) - self.answered())}, "
            f"bot messages that are no answer {dict(left)}, "
            f"streams never stopped {len(self.fake.open_streams())}"
        )
        for worker in self.workers:
            calls = worker.model.calls
            outcomes = Counter(c[3] for c in calls)
            still = [(c[0], round(c[1], 1)) for c in calls if c[3] == "open"]
            lines.append(
                f"model of worker {worker.slot}: {len(calls)} calls {dict(outcomes)}, "
                f"still open (question, since) {still}"
            )
        lines.append(f"database: {facts}")
        calls = Counter(c.method for c in self.fake.calls)
        lines.append(f"Slack calls: {dict(calls)}")
        for worker in self.workers:
            for path in worker.logs:
                text = path.read_text(errors="replace")
                lines.append(
                    f"log {path}: {text.count('Traceback')} tracebacks, "
                    f"{text.count(' ERROR ')} ERROR, {text.count(' WARNING ')} WARNING lines"
                )
        return "\n".join(lines)


async def read_database(url: str) -> tuple[list[Any], list[Any]]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.channel, c.thread, m.role, m.content, m.status FROM messages m "
                    "JOIN conversations c ON c.id = m.conversation_id "
                    "ORDER BY c.id, m.sent_at, m.id"
                )
            )
            states = await conn.execute(
                text("SELECT state, count(*) FROM processed_events GROUP BY state")
            )
            return list(rows.all()), list(states.all())
    finally:
        await engine.dispose()


def worker_env(fake: FakeSlack, model: StandinServer, port: int, database_url: str) -> dict:
    mine = ("OPENAI_", "DISCORD_", "SLACK_", "PARLEY_", "DATABASE_", "REDIS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(mine)}
    env.update(
        SLACK_BOT_TOKEN=fake.bot_token,
        SLACK_API_URL=fake.base_url,
        SLACK_SIGNING_SECRET=fake.signing_secret,
        SLACK_MODE="http",
        SLACK_PORT=str(port),
        SLACK_FEEDBACK_BUTTONS="true",  # how the test tells a final write (see ``final``)
        DATABASE_URL=database_url,
        DATABASE_LEASE_SECONDS=str(LEASE_SECONDS),
        OPENAI_BASE_URL=model.base_url,
        OPENAI_API_KEY="sk-test",
        PARLEY_ALLOW_OFFLINE="true",
        PARLEY_LOG_LEVEL="INFO",
    )
    return env


async def upgrade(database_url: str, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    proc = await asyncio.create_subprocess_exec(
        *PARLEY,
        "db",
        "upgrade",
        cwd=cwd,
        env={**env, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()


async def wait_for_answers(fake: FakeSlack, chaos: Chaos) -> bool:
    """Wait until every question shows an answer: False when the guard runs out first, or
    when the workers have written nothing to Slack for ``IDLE_GUARD`` seconds."""
    deadline = time.monotonic() + ANSWER_GUARD
    calls, since = len(fake.calls), time.monotonic()
    while len(chaos.answered()) < QUESTIONS:
        if time.monotonic() > deadline or time.monotonic() - since > IDLE_GUARD:
            return False
        await asyncio.sleep(0.5)
        if len(fake.calls) != calls:
            calls, since = len(fake.calls), time.monotonic()
    return True


async def settle(fake: FakeSlack, *, quiet: float, guard: float) -> None:
    """Wait until the workers have written nothing to Slack for ``quiet`` seconds."""
    deadline = time.monotonic() + guard
    calls, since = len(fake.calls), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        if len(fake.calls) != calls:
            calls, since = len(fake.calls), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


@pytest.mark.timeout(480)
async def test_workers_killed_at_random_answer_every_question_exactly_once(
    tmp_path: Path, postgres_url: str
) -> None:
    seed = int(os.environ.get("PARLEY_CHAOS_SEED") or random.randrange(1 << 32))
    started = time.monotonic()
    if os.environ.get("PARLEY_CHAOS_LOGS"):  # keep the logs somewhere else
        tmp_path = Path(os.environ["PARLEY_CHAOS_LOGS"]) / f"{seed}"
        tmp_path.mkdir(parents=True)
    await upgrade(postgres_url, tmp_path)
    timeline: dict[str, float] = {}
    async with (
        FakeSlack() as fake,
        WatchedModel() as model0,
        WatchedModel() as model1,
        aiohttp.ClientSession() as session,
    ):
        workers = [
            Worker(slot, port, model, worker_env(fake, model, port, postgres_url), tmp_path)
            for slot, (model, port) in enumerate(((model0, free_port()), (model1, free_port())))
        ]
        chaos = Chaos(fake, workers, seed)
        chaos.balancer = Balancer(fake, workers, session)
        monkey: asyncio.Task[None] | None = None
        try:
            for worker in workers:
                await worker.start()
            for worker in workers:
                await worker.ready(session)
            global _T0
            _T0 = time.monotonic()
            monkey = asyncio.create_task(chaos.monkey(session, _T0))
            await chaos.send_all(chaos.balancer)
            timeline["all sent"] = now()
            await monkey
            timeline["last kill"] = chaos.kills[-1].at if chaos.kills else 0.0
            done = await wait_for_answers(fake, chaos)
            timeline["all answered" if done else "gave up waiting"] = now()
            await settle(fake, quiet=2 * LEASE_SECONDS, guard=30)
            timeline["quiet"] = now()
            slack = chaos.slack_problems()
        finally:
            if monkey is not None and not monkey.done():
                monkey.cancel()
            await asyncio.gather(*(w.stop() for w in workers))
        database, facts = await chaos.database_problems(postgres_url)
        summary = chaos.summary(started, timeline, facts)
    problems = slack + database
    # The missing answers are in the summary: the problems shown first are the others.
    problems.sort(key=lambda p: p.endswith("no answer shown"))
    report = f"{summary}\n{len(problems)} problems:\n" + "\n".join(problems[:60])
    (tmp_path / "chaos-summary.txt").write_text(f"{summary}\n" + "\n".join(problems))
    print(summary)

    # The run did what it claims: kills at every stage of an answer, Slack never gave up.
    assert len(chaos.kills) >= 5, report
    assert any(k.before for k in chaos.kills), report
    assert any(k.during for k in chaos.kills), report
    assert any(k.after for k in chaos.kills), report
    assert not chaos.balancer.undelivered, report
    # What people see, and what the model will be shown next time.
    assert not problems, report
