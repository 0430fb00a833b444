"""How fast a Slack mention is answered when the model is instant: Parley's own delay.

A worker started as an operator starts it (``parley run``, Slack in HTTP mode, a temporary
SQLite database) answers mentions sent by the fake Slack (``tests/fakes/slack_server.py``,
Events API POSTs signed as Slack signs them), with the stand-in model at zero latency in a
process of its own. Each mention opens a thread of its own, in one of ``--channels`` channels.
Measured per mention: from the start of the Events API POST to the write at the fake that
leaves the thread showing the finished answer (p50/p99), first one at a time (the next mention
once the previous answer is shown), then ``--burst`` at once; and the worker's CPU per
mention (its process CPU over the sequential mentions / mentions). Also counts the Web API
calls per mention, by method.

Prints a table and writes JSON (bench/results/mention_latency.json). The temporary directory
(database, logs) is removed and the processes stopped also when a run fails.

    python bench/mention_latency.py [--mentions 200] [--burst 10]
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.standin.server import PREFIX  # noqa: E402
from tests.fakes.slack_server import FakeSlack  # noqa: E402

_SCRIPT = Path(sys.executable).with_name("parley")
PARLEY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "bots.cli"]
WARM_UP = 5
GIVE_UP_S = 30.0


class TimedSlack(FakeSlack):
    """The fake Slack, noting when each awaited thread first shows its finished answer: a
    bot message in the thread, not streaming, the stand-in's answer ending with the marker."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.awaited: dict[tuple[str, str], tuple[str, asyncio.Future[float]]] = {}

    def expect(self, channel: str, ts: str, marker: str) -> asyncio.Future[float]:
        shown: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.awaited[(channel, ts)] = (marker, shown)
        return shown

    async def _notify(self) -> None:
        now = time.perf_counter()
        for (channel, ts), (marker, shown) in list(self.awaited.items()):
            if any(
                not m.streaming and m.text.startswith(PREFIX) and m.text.rstrip().endswith(marker)
                for m in self.bot_messages(channel, ts)
            ):
                del self.awaited[(channel, ts)]
                shown.set_result(now)
        await super()._notify()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until ``port`` accepts connections (the fake Slack in this loop keeps answering)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the {what} exited with status {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise SystemExit(f"the {what} did not start listening")


class Processes:
    """The stand-in and the worker, in a temporary directory; ``close`` stops and removes."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self.tmp = Path(tempfile.mkdtemp(prefix="parley-mention-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.worker_port = free_port()

    def standin(self) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "adapters.standin", "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc, port

    def worker(
        self, slack: FakeSlack, model_url: str, extra: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SLACK_"))}
        env.update(
            PYTHONPATH=str(self.tree),
            DATABASE_URL=f"sqlite+aiosqlite:///{self.tmp}/parley.db",
            OPENAI_BASE_URL=model_url,
            OPENAI_API_KEY="bench",
            SLACK_BOT_TOKEN=slack.bot_token,
            SLACK_SIGNING_SECRET=slack.signing_secret,
            SLACK_API_URL=slack.base_url,
            SLACK_MODE="http",
            SLACK_PORT=str(self.worker_port),
            PARLEY_LOG_LEVEL="WARNING",
            **extra,
        )
        with (self.tmp / "worker.log").open("wb") as log:
            proc = subprocess.Popen(
                [*PARLEY, "run"], cwd=self.tmp, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def log_tail(self) -> str:
        path = self.tmp / "worker.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Mentions:
    """Sends mentions to the worker and times each until its answer shows."""

    def __init__(self, slack: TimedSlack, url: str, channels: int) -> None:
        self.slack, self.url, self.channels = slack, url, channels
        self.sent = 0

    async def one(self) -> float:
        """One mention, in a channel of its own turn: ms until its answer shows."""
        n = self.sent
        self.sent += 1
        slack, channel, user = self.slack, f"C{n % self.channels:04d}", f"U{n % 7:04d}"
        marker = f"q{n}"
        text = f"<@{slack.bot_user_id}> how fast is this {marker}"
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
        body = slack.event_body(event)
        shown = slack.expect(channel, message.ts, marker)
        began = time.perf_counter()
        status = await slack.post_event(self.url, body)
        if status != 200:
            raise RuntimeError(f"the worker answered the event with HTTP {status}")
        return (await asyncio.wait_for(shown, GIVE_UP_S) - began) * 1000

    async def burst(self, size: int) -> list[float]:
        return list(await asyncio.gather(*(self.one() for _ in range(size))))


def summary(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "mentions": len(times),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "max_ms": round(ordered[-1], 2),
    }


def calls_per_mention(slack: FakeSlack, since: int, mentions: int) -> dict[str, float]:
    counted = Counter(call.method for call in slack.calls[since:])
    return {method: round(n / mentions, 2) for method, n in sorted(counted.items())}


async def measure(args: argparse.Namespace, procs: Processes) -> dict[str, Any]:
    standin, port = procs.standin()
    await wait_listening(port, standin, "stand-in model")
    async with TimedSlack() as slack:
        extra = {"SLACK_UPDATE_INTERVAL": str(args.interval)} if args.interval is not None else {}
        worker = procs.worker(slack, f"http://127.0.0.1:{port}/v1", extra)
        await wait_listening(procs.worker_port, worker, "worker")
        pid = worker.pid
        sender = Mentions(
            slack, f"http://127.0.0.1:{procs.worker_port}/slack/events", args.channels
        )
        for _ in range(WARM_UP):
            await sender.one()
        first_call, cpu = len(slack.calls), proc_cpu(pid)
        sequential = [await sender.one() for _ in range(args.mentions)]
        cpu = proc_cpu(pid) - cpu
        calls = calls_per_mention(slack, first_call, args.mentions)
        bursts: list[float] = []
        for _ in range(args.bursts):
            bursts += await sender.burst(args.burst)
            await asyncio.sleep(args.pause)
    return {
        "sequential": {
            **summary(sequential),
            "worker_cpu_ms": round(cpu * 1000 / args.mentions, 2),
            "calls": calls,
        },
        "burst": {**summary(bursts), "at_once": args.burst} if bursts else None,
    }


def show(result: dict[str, Any]) -> None:
    print(
        f"Slack mentions answered by `parley run` (HTTP mode, SQLite), stand-in model at zero "
        f"latency; {result['channels']} channels, update interval "
        f"{result['update_interval'] if result['update_interval'] is not None else 'default'}"
    )
    print(f"{'mentions':22} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU ms':>8}")
    seq, burst = result["sequential"], result["burst"]
    print(
        f"{'one at a time':22} {seq['mentions']:6} {seq['p50_ms']:8.1f} {seq['p99_ms']:8.1f} "
        f"{seq['max_ms']:8.1f} {seq['worker_cpu_ms']:8.2f}"
    )
    if burst:
        label = f"{burst['at_once']} at once"
        print(
            f"{label:22} {burst['mentions']:6} {burst['p50_ms']:8.1f} {burst['p99_ms']:8.1f} "
            f"{burst['max_ms']:8.1f} {'-':>8}"
        )
    print("Web API calls per mention: " + ", ".join(f"{m} {n:g}" for m, n in seq["calls"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mentions", type=int, default=200, help="sent one at a time")
    parser.add_argument("--channels", type=int, default=200, help="channels they are spread over")
    parser.add_argument("--burst", type=int, default=10, help="mentions sent at once")
    parser.add_argument("--bursts", type=int, default=5, help="bursts (0: none)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between bursts")
    parser.add_argument("--interval", type=float, default=None, help="SLACK_UPDATE_INTERVAL")
    parser.add_argument("--tree", default=str(ROOT), help="the Parley source tree the worker runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mention_latency.json"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    procs = Processes(Path(args.tree).resolve())
    try:
        figures = asyncio.run(measure(args, procs))
    except BaseException:
        print(procs.log_tail(), file=sys.stderr)
        raise
    finally:
        procs.close()
    result = {
        "tree": args.tree,
        "channels": args.channels,
        "update_interval": args.interval,
        **figures,
    }
    show(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
