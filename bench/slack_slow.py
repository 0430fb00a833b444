"""Slow Slack: many mentions at once while every Slack write takes seconds.

The worker runs in a process of its own, as `parley run` does (``bots.cli.main(["run"])``: the
real core on SQLite, the Slack adapter in HTTP mode), against the fake Slack (every write
answered after ``--write-delay`` s) and the stand-in model (``--latency`` s per streamed chunk),
both in this process. N signed app_mention events (each its own thread, spread over channels)
are posted at once. Measured: how many threads end with their complete answer at the fake, the
time to the last answer, the worker's peak RSS (VmHWM of its process, and ru_maxrss once it has
exited), and the 429s the fake answered.

``--limits slack``: the fake answers 429 past Slack's tiers (``tests/fakes/slack_tiers.py``) and
the worker keeps its shipped write budgets, so answers come at Slack's pace (chat.update,
Tier 3, about 50 a minute, bounds it). ``--limits none``: the fake enforces nothing and the
worker's write budget admits every write, which isolates the slow writes and the cap on
concurrent answers (SLACK_MAX_CONCURRENT_ANSWERS). Prints a table and writes JSON
(bench/results/slack_slow[-none].json).

    python bench/slack_slow.py --mentions 500 --limits none
    python bench/slack_slow.py --mentions 100 --limits slack
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.standin.server import StandinServer  # noqa: E402
from core.sentences import WARNING_MARK  # noqa: E402
from tests.fakes.slack_server import FakeSlack  # noqa: E402
from tests.fakes.slack_tiers import TieredSlack  # noqa: E402

# The question: long enough that its echo streams in a dozen chunks; ends with its marker.
QUESTION = "please repeat this sentence back to me word for word so the answer streams a while"


class OpenBudget:
    """A write budget that admits every write at once (``--limits none``)."""

    async def take(self, key: str, rate: object, reserve: float) -> float:
        return 0.0


def worker_main(unlimited: bool) -> int:
    """The worker process: `parley run` (with an open write budget for ``--limits none``)."""
    from bots.cli import main as parley

    if unlimited:
        from core import budget

        budget.use(OpenBudget())
    return parley(["run"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_env(
    slack: FakeSlack, model_url: str, port: int, args: argparse.Namespace
) -> dict[str, str]:
    """The worker's environment: this machine's, without any Parley setting, plus the bench's."""
    prefixes = ("SLACK_", "DISCORD_", "OPENAI_", "PARLEY_", "DATABASE_", "REDIS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        SLACK_BOT_TOKEN=slack.bot_token,
        SLACK_SIGNING_SECRET=slack.signing_secret,
        SLACK_MODE="http",
        SLACK_PORT=str(port),
        SLACK_API_URL=slack.base_url,
        SLACK_UPDATE_INTERVAL=str(args.interval),
        SLACK_MAX_CONCURRENT_ANSWERS=str(args.concurrent),
        OPENAI_BASE_URL=model_url,
        OPENAI_API_KEY="sk-bench",
        DATABASE_URL=f"sqlite+aiosqlite:///{args.workdir}/parley.db",
        PARLEY_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    return env


@dataclass
class Worker:
    """The worker process and its resident set size (from /proc), sampled while it runs."""

    process: subprocess.Popen[bytes]
    port: int
    samples: list[tuple[float, int]] = field(default_factory=list)

    def status_kb(self, name: str) -> int:
        """A ``Vm*`` line of /proc/PID/status, in KiB (0 once the process is gone)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        return 0

    async def sample(self, started: float) -> None:
        while True:
            self.samples.append((time.monotonic() - started, self.status_kb("VmRSS")))
            await asyncio.sleep(0.5)

    async def ready(self, session: aiohttp.ClientSession, guard: float = 60.0) -> None:
        """Wait until the worker answers /healthz."""
        deadline = time.monotonic() + guard
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{self.port}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError("the worker did not start listening")

    def stop(self) -> int:
        """SIGTERM, as a supervisor stops it; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_worker(env: dict[str, str], port: int, args: argparse.Namespace) -> Worker:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    if args.limits == "none":
        command.append("--unlimited")
    log = (Path(args.workdir) / "worker.log").open("wb")
    process = subprocess.Popen(
        command, env=env, cwd=args.workdir, stdout=log, stderr=subprocess.STDOUT
    )
    return Worker(process, port)


@dataclass(frozen=True)
class Mention:
    channel: str
    thread: str
    marker: str
    body: dict[str, Any]


def mentions(slack: FakeSlack, args: argparse.Namespace) -> list[Mention]:
    """One app_mention per thread, by a different person each, spread over the channels."""
    found = []
    for n in range(args.mentions):
        channel, user = f"C{n % args.channels:04d}", f"U{n:04d}"
        text = f"<@{slack.bot_user_id}> {QUESTION} q{n}"
        message = slack.add_message(channel, text, user=user)
        event = {
            "type": "app_mention",
            "user": user,
            "text": text,
            "ts": message.ts,
            "channel": channel,
            "team": slack.team_id,
            "event_ts": message.ts,
        }
        found.append(Mention(channel, message.ts, f"q{n}", slack.event_body(event)))
    return found


def outcome(slack: FakeSlack, mention: Mention) -> str | None:
    """ "answered" (the complete answer, final), "failed" (a final ⚠️ sentence) or None yet."""
    replies = [m for m in slack.thread(mention.channel, mention.thread) if m.bot_id]
    if not replies or any(m.streaming for m in replies):
        return None
    shown = "".join(m.text for m in replies)
    if WARNING_MARK in shown:
        return "failed"
    if "You said:" in shown and shown.rstrip().endswith(mention.marker):
        return "answered"
    return None


async def post_all(slack: FakeSlack, url: str, found: list[Mention]) -> list[int]:
    """POST every event at once (no connection limit), signed as Slack signs."""

    async def post(session: aiohttp.ClientSession, body: dict[str, Any]) -> int:
        raw = json.dumps(body)
        headers = {"Content-Type": "application/json", **slack.signed_headers(raw)}
        async with session.post(url, data=raw, headers=headers) as response:
            await response.read()
            return response.status

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(post(session, m.body) for m in found)))


async def watch(
    slack: FakeSlack, found: list[Mention], started: float, give_up: float
) -> dict[str, tuple[str, float]]:
    """Poll the fake until every thread has its final write (or ``give_up`` s): outcome and
    seconds from the first post, per thread."""
    done: dict[str, tuple[str, float]] = {}
    while len(done) < len(found) and time.monotonic() - started < give_up:
        for mention in found:
            if mention.marker not in done and (result := outcome(slack, mention)):
                done[mention.marker] = (result, time.monotonic() - started)
        await asyncio.sleep(0.5)
    return done


async def measure(slack: FakeSlack, worker: Worker, args: argparse.Namespace) -> dict[str, Any]:
    """Post the mentions, wait for the answers; what the worker and the fake show."""
    async with aiohttp.ClientSession() as session:
        await worker.ready(session)
    idle_kb = worker.status_kb("VmRSS")
    found = mentions(slack, args)
    started = time.monotonic()
    sampler = asyncio.create_task(worker.sample(started))
    statuses = await post_all(slack, f"http://127.0.0.1:{worker.port}/slack/events", found)
    acked_s = time.monotonic() - started
    done = await watch(slack, found, started, args.timeout)
    peak_kb = worker.status_kb("VmHWM")
    sampler.cancel()
    times = sorted(t for _, t in done.values())
    return {
        "acked": sum(s == 200 for s in statuses),
        "acked_s": round(acked_s, 1),
        "answered": sum(o == "answered" for o, _ in done.values()),
        "failed": sum(o == "failed" for o, _ in done.values()),
        "unfinished": len(found) - len(done),
        "first_answer_s": round(times[0], 1) if times else None,
        "median_answer_s": round(times[len(times) // 2], 1) if times else None,
        "last_answer_s": round(times[-1], 1) if times else None,
        "idle_rss_mib": round(idle_kb / 1024, 1),
        "peak_rss_mib": round(peak_kb / 1024, 1),
        "rss_samples_mib": [(round(t, 1), round(kb / 1024, 1)) for t, kb in worker.samples[::4]],
    }


def calls_table(slack: FakeSlack) -> dict[str, dict[str, int]]:
    rows: dict[str, dict[str, int]] = {}
    for call in slack.calls:
        row = rows.setdefault(call.method, {"calls": 0, "refused_429": 0, "errors": 0})
        row["calls"] += 1
        row["refused_429"] += call.status == 429
        row["errors"] += call.status == 200 and call.error is not None
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fake = TieredSlack if args.limits == "slack" else FakeSlack
    slack = await fake(write_delay=args.write_delay).start()
    standin = StandinServer(latency=args.latency, record=False)
    port = free_port()
    try:
        model_url = await standin.start()
        worker = start_worker(worker_env(slack, model_url, port, args), port, args)
        try:
            result = await measure(slack, worker, args)
        finally:
            exit_code = await asyncio.to_thread(worker.stop)
    finally:
        await standin.stop()
        await slack.stop()
    table = calls_table(slack)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {
        "mentions": args.mentions,
        "channels": args.channels,
        "limits": args.limits,
        "write_delay_s": args.write_delay,
        "model_latency_s": args.latency,
        "max_concurrent_answers": args.concurrent,
        "update_interval_s": args.interval,
        **result,
        "worker_maxrss_mib": round(children / 1024, 1),
        "worker_exit": exit_code,
        "refused_429": sum(row["refused_429"] for row in table.values()),
        "methods": table,
    }


def show(r: dict[str, Any]) -> None:
    print(
        f"{r['mentions']} mentions in {r['channels']} channels, writes take {r['write_delay_s']} s, "
        f"limits: {r['limits']}, at most {r['max_concurrent_answers']} answers at once"
    )
    rows = [
        ("acked (HTTP 200)", f"{r['acked']} in {r['acked_s']} s"),
        ("answered (complete, final)", r["answered"]),
        ("failed (⚠️ sentence)", r["failed"]),
        ("unfinished at the end", r["unfinished"]),
        (
            "first / median / last answer",
            (f"{r['first_answer_s']} / {r['median_answer_s']} / {r['last_answer_s']} s"),
        ),
        ("worker RSS idle", f"{r['idle_rss_mib']} MiB"),
        ("worker peak RSS (VmHWM)", f"{r['peak_rss_mib']} MiB"),
        ("worker ru_maxrss after exit", f"{r['worker_maxrss_mib']} MiB"),
        ("429s answered by the fake", r["refused_429"]),
        ("worker exit code (SIGTERM)", r["worker_exit"]),
    ]
    for name, value in rows:
        print(f"  {name:30} {value}")
    print(f"  {'method':30} {'calls':>6} {'429s':>5} {'errors':>6}")
    for method, row in sorted(r["methods"].items()):
        print(f"  {method:30} {row['calls']:6} {row['refused_429']:5} {row['errors']:6}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mentions", type=int, default=500)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--limits", choices=["slack", "none"], default="slack")
    parser.add_argument("--write-delay", type=float, default=2.0, help="seconds per Slack write")
    parser.add_argument("--latency", type=float, default=0.05, help="model seconds per chunk")
    parser.add_argument("--concurrent", type=int, default=32, help="SLACK_MAX_CONCURRENT_ANSWERS")
    parser.add_argument("--interval", type=float, default=1.0, help="SLACK_UPDATE_INTERVAL")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after (s)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--unlimited", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.worker:
        sys.exit(worker_main(args.unlimited))
    suffix = "" if args.limits == "slack" else "-none"
    out = Path(args.out or ROOT / "bench" / "results" / f"slack_slow{suffix}.json")
    with tempfile.TemporaryDirectory(prefix="parley-slow-") as workdir:
        args.workdir = workdir
        result = asyncio.run(run(args))
        if result["worker_exit"] != 0:
            print((Path(workdir) / "worker.log").read_text()[-3000:], file=sys.stderr)
    show(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
