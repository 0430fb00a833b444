"""Busy teams on Slack and Discord, against fakes that enforce the platforms' write limits.

Slack (``bench/slack_busy.py``'s run): 50 long answers at once in 10 channels of one workspace,
each streamed over ~10 s (~4,700 characters), against a fake Slack refusing calls over Slack's
tiers (rolling 60 s windows, 429 with Retry-After). Discord: 30 ``/ask`` at once in 30
channels, then 10 at once in one channel, the same answers, against the fake Discord enforcing
5 writes per 5 s per channel, interaction token and message (rolling windows, 429 with
Retry-After and the X-RateLimit headers discord.py follows), driven by the real discord.py
client. Checks that every answer completes with exactly the model's text, no write is refused,
nothing is left half done, and (Discord) no bucket took more than 5 writes in any 5 s.
Prints tables and writes JSON (bench/results/platform_load.json).

    python bench/platform_load.py [--redis redis://127.0.0.1:6379/0] [--only slack|discord]
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.discord.settings import DiscordSettings  # noqa: E402
from bench import slack_busy  # noqa: E402
from bench.slack_busy import SlowModel  # noqa: E402
from bots.bootstrap import build  # noqa: E402
from bots.platforms import discord_adapter  # noqa: E402
from bots.shared import RedisSettings  # noqa: E402
from core.settings import Settings  # noqa: E402
from tests.fakes.discord_server import FakeDiscord  # noqa: E402
from tests.fakes.memory import MemoryStore  # noqa: E402

# After its model stream ended, an answer's last write may come this much later at most.
LATE_LIMIT_S = 60.0
GIVE_UP_S = 300.0


async def slack_half(args: argparse.Namespace) -> dict[str, Any]:
    """``slack_busy``'s run at the issue's scale, and whether it met the bar."""
    busy = argparse.Namespace(
        answers=50,
        channels=10,
        chars=args.chars,
        seconds=args.seconds,
        interval=1.0,
        redis=args.redis,
        verbose=False,
    )
    result = await slack_busy.run(busy)
    late = result["last_write_after_model_s_max"]
    result["ok"] = (
        result["complete"] == result["exact"] == busy.answers
        and result["refused_429"] == 0
        and result["open_streams"] == result["placeholders"] == 0
        and late is not None
        and late <= LATE_LIMIT_S
    )
    return result


async def _until_shown(
    fake: FakeDiscord, asks: list[tuple[dict[str, Any], str]], seconds: float
) -> dict[str, float]:
    """Wait until every interaction shows its whole answer (or ``seconds`` pass); for each
    token that does, the time of its last accepted write."""
    deadline = time.monotonic() + seconds
    done: dict[str, float] = {}
    while len(done) < len(asks) and time.monotonic() < deadline:
        for payload, text in asks:
            token = payload["token"]
            if token not in done and "".join(fake.interaction_messages(token)) == text:
                done[token] = fake.writes[f"token:{token}"][-1]
        await asyncio.sleep(0.05)
    return done


async def discord_scenario(
    args: argparse.Namespace, name: str, answers: int, channels: int
) -> dict[str, Any]:
    """``answers`` ``/ask`` at once, spread over ``channels`` channels of one guild."""
    model = SlowModel(args.chars, args.seconds)
    redis = RedisSettings(_env_file=None, url=args.redis, key_prefix=f"bench:{uuid.uuid4().hex}:")
    settings = Settings(_env_file=None, database_url="sqlite+aiosqlite:///:memory:")
    async with FakeDiscord(enforce_write_limits=True) as fake:
        rooms = [fake.channel_id] + [fake.add_channel(f"room-{n}") for n in range(1, channels)]
        parley = await build(settings, store=MemoryStore(), llm=model, redis=redis)
        section = DiscordSettings(
            _env_file=None,
            token="x",
            api_url=fake.api_url,
            gateway_url=fake.gateway_url,
            guild_ids=[int(fake.guild_id)],
            edit_interval=args.interval,
        )
        adapter = discord_adapter(parley, section)
        await adapter.start()
        await fake.wait_for(lambda: fake.commands and fake.connected.is_set())
        started = time.monotonic()
        payloads = await asyncio.gather(
            *(
                fake.send_command(
                    "ask", {"prompt": f"tell me a long story q{n}"}, channel_id=rooms[n % channels]
                )
                for n in range(answers)
            )
        )
        asks = [(p, model.text(f"q{n}")) for n, p in enumerate(payloads)]
        finished = await _until_shown(fake, asks, GIVE_UP_S)
        await adapter.inflight.wait(30)
        await adapter.stop()
        await parley.close()
    return discord_row(fake, model, name, asks, finished, started, channels)


def discord_row(
    fake: FakeDiscord,
    model: SlowModel,
    name: str,
    asks: list[tuple[dict[str, Any], str]],
    finished: dict[str, float],
    started: float,
    channels: int,
) -> dict[str, Any]:
    """What one Discord scenario showed, and whether it met the bar."""
    busiest, bucket = fake.most_writes()
    late = [
        finished[p["token"]] - model.ended[f"q{n}"]
        for n, (p, _) in enumerate(asks)
        if p["token"] in finished and f"q{n}" in model.ended
    ]
    took = [finished[p["token"]] - started for p, _ in asks if p["token"] in finished]
    writes = sum(len(stamps) for b, stamps in fake.writes.items() if not b.startswith("message:"))
    limit, window = fake.write_limit
    row = {
        "scenario": name,
        "asks": len(asks),
        "channels": channels,
        "exact": len(finished),
        "refused_429": len(fake.rate_limited()),
        "writes": writes,
        "max_writes_per_5s": busiest,
        "busiest_bucket": bucket.split(":", 1)[0],
        "answer_s_median": round(statistics.median(took), 1) if took else None,
        "answer_s_max": round(max(took), 1) if took else None,
        "last_write_after_model_s_max": round(max(late), 1) if late else None,
    }
    row["ok"] = (
        row["exact"] == len(asks) and row["refused_429"] == 0 and busiest <= limit and window == 5.0
    )
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"chars_per_answer": args.chars, "seconds_per_answer": args.seconds}
    if args.only in (None, "slack"):
        result["slack"] = await slack_half(args)
    if args.only in (None, "discord"):
        result["discord"] = [
            await discord_scenario(args, "30 channels", answers=30, channels=30),
            await discord_scenario(args, "one channel", answers=10, channels=1),
        ]
    parts = [result["slack"]] if "slack" in result else []
    parts += result.get("discord", [])
    result["ok"] = all(part["ok"] for part in parts)
    return result


def show_slack(result: dict[str, Any]) -> None:
    print("== Slack: 50 answers at once in 10 channels of one workspace ==")
    slack_busy.show(result)
    print(
        f"exact {result['exact']}/{result['answers']}, open streams {result['open_streams']}, "
        f"placeholders {result['placeholders']}, last write at most "
        f"{result['last_write_after_model_s_max']} s after its model stream ended "
        f"(bar: {LATE_LIMIT_S:g} s): {'OK' if result['ok'] else 'FAILED'}"
    )


def show_discord(rows: list[dict[str, Any]]) -> None:
    print("== Discord: /ask at once, 5 writes per 5 s per channel, token and message ==")
    print(
        f"{'scenario':12} {'asks':>5} {'exact':>6} {'429s':>5} {'writes':>7} {'max/5s':>7} "
        f"{'median s':>9} {'max s':>6} {'late s':>7}  result"
    )
    for row in rows:
        print(
            f"{row['scenario']:12} {row['asks']:5} {row['exact']:6} {row['refused_429']:5} "
            f"{row['writes']:7} {row['max_writes_per_5s']:7} {row['answer_s_median']!s:>9} "
            f"{row['answer_s_max']!s:>6} {row['last_write_after_model_s_max']!s:>7}  "
            f"{'OK' if row['ok'] else 'FAILED'}"
        )
    print("(max/5s: most writes one channel, token or message took in any 5 s; late s: most")
    print(" seconds an answer's last write came after its model stream ended)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=4700)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0, help="DISCORD_EDIT_INTERVAL")
    parser.add_argument("--redis", default=None, help="REDIS_URL (default: in-process budget)")
    parser.add_argument("--only", choices=("slack", "discord"), default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "platform_load.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(run(args))
    if "slack" in result:
        show_slack(result["slack"])
    if "discord" in result:
        show_discord(result["discord"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{'all met' if result['ok'] else 'NOT MET'}; wrote {args.out}")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
