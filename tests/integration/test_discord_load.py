"""Busy Discord channel: many `/ask` at once against a fake Discord that enforces Discord's write
limit (5 writes per 5 s per channel, interaction token and message, rolling windows).

The fake keeps the limit to itself (no X-RateLimit-Remaining that discord.py could wait on),
so only Parley's own pacing keeps the writes inside it: one write too many meets a 429. The
real discord.py client, the real core on SQLite and the real openai client against the stand-in
model. (The same at full scale, with timings: ``bench/platform_load.py``.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.discord.settings import DiscordSettings
from adapters.standin.server import StandinServer, _long_text
from bots import platforms
from bots.bootstrap import build
from core.settings import Settings
from tests.fakes.discord_server import FakeDiscord

ASKS = 6
TOKENS = 700  # about 3,500 characters: each answer outgrows its first message


def whole(messages: list[str]) -> str:
    """An answer shown in several messages, as one text (the cuts drop blank lines)."""
    return " ".join(" ".join(messages).split())


async def test_asks_at_once_in_one_channel_stay_inside_discords_write_limit(tmp_path: Any) -> None:
    expected = whole([_long_text(TOKENS)])
    async with (
        FakeDiscord(enforce_write_limits=True, announce_limits=False) as fake,
        StandinServer(latency=0.01) as model,
    ):
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            openai_base_url=model.base_url,
            openai_api_key="test",
            openai_max_retries=0,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db",
            parley_max_output_tokens=4096,
        )
        section = DiscordSettings(  # type: ignore[call-arg]
            _env_file=None,
            token="x",
            api_url=fake.api_url,
            gateway_url=fake.gateway_url,
            guild_ids=[int(fake.guild_id)],
            edit_interval=0.05,  # as often as the budget lets it
        )
        parley = await build(settings)
        adapter = platforms.discord_adapter(parley, section)
        try:
            await adapter.start()
            await fake.wait_for(lambda: fake.commands and fake.connected.is_set())
            asks = await asyncio.gather(
                *(
                    fake.send_command("ask", {"prompt": f"[[fault:long_answer:{TOKENS}]] q{n}"})
                    for n in range(ASKS)
                )
            )
            shown = [lambda a=a: whole(fake.interaction_messages(a["token"])) for a in asks]
            await fake.wait_for(lambda: all(s() == expected for s in shown))
            await adapter.inflight.wait(10)
        finally:
            await adapter.stop()
            await parley.close()

    assert [s() for s in shown] == [expected] * ASKS
    assert all(len(fake.interaction_messages(a["token"])) >= 2 for a in asks)
    assert fake.channel_messages(fake.channel_id) == []  # every answer stayed on its token
    assert [(c.method, c.path) for c in fake.rate_limited()] == []
    busiest, bucket = fake.most_writes()
    assert 1 < busiest <= 5, bucket
    assert {b.split(":")[0] for b in fake.writes} == {"callback", "token", "message"}
