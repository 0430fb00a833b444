"""Busy Slack workspace: many long answers at once against a fake Slack enforcing the tiers.

N mentions arrive at once (spread over several channels); each answer streams ~4,700
characters over ~10 s. The fake Slack answers 429 past Slack's limits (Tier 2 chat.startStream
and chat.stopStream, Tier 4 chat.appendStream, Tier 3 chat.update, chat.postMessage per
channel). Reports, per method, the calls, the 429s and the most calls in any 60 s; and whether
every answer arrived complete. Prints a table and writes JSON (bench/results/slack_busy.json).

    python bench/slack_busy.py --answers 50 --channels 10 [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
import uuid
from bisect import bisect_right
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.slack.render import THINKING  # noqa: E402
from adapters.slack.settings import SlackSettings  # noqa: E402
from bots.bootstrap import build  # noqa: E402
from bots.platforms import slack_adapter  # noqa: E402
from bots.shared import RedisSettings  # noqa: E402
from core.ports import ChatRequest, Completion  # noqa: E402
from core.settings import Settings  # noqa: E402
from tests.fakes.memory import MemoryStore  # noqa: E402
from tests.fakes.slack_tiers import SLACK_LIMITS, TieredSlack  # noqa: E402

WORD = "lorem "


class SlowModel:
    """Streams ``chars`` characters over ``seconds``, in words; the answer ends with a marker
    naming the request, so the bench checks each thread got its own complete answer."""

    def __init__(self, chars: int, seconds: float) -> None:
        self.chars = chars
        self.seconds = seconds
        self.ended: dict[str, float] = {}  # question -> time.monotonic() its stream ended

    def text(self, question: str) -> str:
        """The whole answer to ``question`` (e.g. ``q7``)."""
        return WORD * (self.chars // len(WORD)) + f"end-of-{question}"

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Completion]:
        question = request.messages[-1].text.split()[-1]
        words = self.chars // len(WORD)
        pause = self.seconds / words
        for _ in range(words):
            await asyncio.sleep(pause)
            yield WORD
        tail = f"end-of-{question}"
        yield tail
        self.ended[question] = time.monotonic()
        yield Completion(WORD * words + tail, request.model, 100, words, "stop")


def most_in_window(stamps: list[float], seconds: float = 60.0) -> int:
    stamps = sorted(stamps)
    return max(
        (bisect_right(stamps, t + seconds - 1e-9) - i for i, t in enumerate(stamps)), default=0
    )


def method_table(slack: TieredSlack, elapsed: float) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for call, stamp in zip(slack.calls, slack.stamps, strict=False):
        row = rows.setdefault(call.method, {"calls": 0, "refused_429": 0, "stamps": []})
        row["calls"] += 1
        row["refused_429"] += call.status == 429
        if call.status != 429:
            row["stamps"].append(stamp)
    for method, row in rows.items():
        stamps = row.pop("stamps")
        row["max_per_60s"] = most_in_window(stamps)
        row["per_minute_avg"] = round(len(stamps) / max(elapsed, 1e-9) * 60, 1)
        limit = SLACK_LIMITS.get(method)
        row["limit"] = (
            f"{limit[0]}/{limit[1]:g}s" + (" per channel" if limit[2] else "") if limit else ""
        )
    return rows


def questions(
    slack: TieredSlack, args: argparse.Namespace
) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """The mentions to send: (channel, thread, marker of the answer) and the event bodies."""
    threads: list[tuple[str, str, str]] = []
    bodies: list[dict[str, Any]] = []
    for n in range(args.answers):
        # Each question opens a thread of its own (its own conversation), in a shared channel.
        channel, user = f"C{n % args.channels:04d}", f"U{n:04d}"
        parent = slack.add_message(channel, "a topic", user=user)
        text = f"<@{slack.bot_user_id}> tell me a long story q{n}"
        message = slack.add_message(channel, text, user=user, thread_ts=parent.ts)
        event = {
            "type": "app_mention",
            "user": user,
            "text": text,
            "ts": message.ts,
            "thread_ts": parent.ts,
            "channel": channel,
            "team": slack.team_id,
            "event_ts": message.ts,
        }
        threads.append((channel, parent.ts, f"end-of-q{n}"))
        bodies.append(slack.event_body(event))
    return threads, bodies


def count_complete(
    slack: TieredSlack, threads: list[tuple[str, str, str]], args: argparse.Namespace
) -> tuple[int, int]:
    """How many threads show their whole answer, and how many show exactly the model's text
    (the bot's messages of the thread, joined)."""
    complete = exact = 0
    model = SlowModel(args.chars, args.seconds)
    for channel, ts, marker in threads:
        shown = "".join(m.text for m in slack.thread(channel, ts) if m.bot_id)
        exact += shown == model.text(marker.removeprefix("end-of-"))
        if shown.count("lorem") == args.chars // len(WORD) and shown.rstrip().endswith(marker):
            complete += 1
        elif args.verbose:
            print(
                channel,
                ts,
                shown.count("lorem"),
                repr(shown[-60:]),
                [(m.ts, len(m.text), m.streaming) for m in slack.thread(channel, ts) if m.bot_id],
            )
    return complete, exact


def leftovers(slack: TieredSlack) -> dict[str, int]:
    """Bot messages left half done: streams never stopped, "Thinking…" placeholders."""
    bot = [m for messages in slack.messages.values() for m in messages if m.bot_id]
    return {
        "open_streams": sum(m.streaming for m in bot),
        "placeholders": sum(m.text == THINKING for m in bot),
    }


def lateness(model: SlowModel, finished: dict[str, float]) -> float | None:
    """The most seconds an answer's final write came after its model stream ended."""
    late = [finished[q] - end for q, end in model.ended.items() if q in finished]
    return round(max(late), 1) if late else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    slack = await TieredSlack().start()
    redis = RedisSettings(_env_file=None, url=args.redis, key_prefix=f"bench:{uuid.uuid4().hex}:")
    settings = Settings(_env_file=None, database_url="sqlite+aiosqlite:///:memory:")
    model = SlowModel(args.chars, args.seconds)
    parley = await build(settings, store=MemoryStore(), llm=model, redis=redis)
    section = SlackSettings(
        _env_file=None,
        bot_token=slack.bot_token,
        signing_secret=slack.signing_secret,
        mode="http",
        api_url=slack.base_url,
        update_interval=args.interval,
    )
    adapter = slack_adapter(parley, section, host="127.0.0.1", port=0)
    durations: list[float] = []
    finished: dict[str, float] = {}  # question -> time.monotonic() of its final write
    answer = adapter.answer

    async def timed(*a: Any, **kw: Any) -> Any:  # time from the event to the final write
        begun = time.monotonic()
        try:
            return await answer(*a, **kw)
        finally:
            durations.append(time.monotonic() - begun)
            finished[a[0].text.split()[-1]] = time.monotonic()

    adapter.answer = timed  # type: ignore[method-assign]
    await adapter.start()
    url = f"http://127.0.0.1:{adapter.port}/slack/events"
    threads, bodies = questions(slack, args)
    started = time.monotonic()
    statuses = await asyncio.gather(*(slack.post_event(url, body) for body in bodies))
    await adapter.drain()
    elapsed = time.monotonic() - started
    await adapter.stop()
    await parley.close()
    complete, exact = count_complete(slack, threads, args)
    table = method_table(slack, elapsed)
    left = leftovers(slack)
    await slack.stop()
    return {
        "answers": args.answers,
        "channels": args.channels,
        "chars_per_answer": args.chars,
        "seconds_per_answer": args.seconds,
        "update_interval": args.interval,
        "budget": "redis" if args.redis else "in-process",
        "acked": sum(s == 200 for s in statuses),
        "complete": complete,
        "exact": exact,
        **left,
        "refused_429": sum(row["refused_429"] for row in table.values()),
        "elapsed_s": round(elapsed, 1),
        "answer_s_median": round(statistics.median(durations), 1) if durations else None,
        "answer_s_max": round(max(durations), 1) if durations else None,
        "last_write_after_model_s_max": lateness(model, finished),
        "methods": table,
    }


def show(result: dict[str, Any]) -> None:
    print(
        f"{result['answers']} answers in {result['channels']} channels, budget {result['budget']}: "
        f"{result['complete']} complete, {result['refused_429']} refused (429), "
        f"all done in {result['elapsed_s']} s; an answer took {result['answer_s_median']} s "
        f"(median), {result['answer_s_max']} s at most"
    )
    print(f"{'method':30} {'calls':>6} {'429s':>5} {'max/60s':>8} {'avg/min':>8}  limit")
    for method, row in sorted(result["methods"].items()):
        print(
            f"{method:30} {row['calls']:6} {row['refused_429']:5} {row['max_per_60s']:8} "
            f"{row['per_minute_avg']:8}  {row['limit']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=50)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--chars", type=int, default=4700)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0, help="SLACK_UPDATE_INTERVAL")
    parser.add_argument("--redis", default=None, help="REDIS_URL (default: in-process budget)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "slack_busy.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(run(args))
    show(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
