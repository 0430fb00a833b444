"""`parley` as an operator runs it never writes a secret: not in logs, not on start-up errors."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bots.logs import redact, secrets_of
from bots.shared import RedisSettings
from core.settings import Settings
from core.store.sql import make_engine
from tests.conftest import upgraded
from tests.e2e.test_run_workers import (
    PARLEY,
    answered,
    free_port,
    mention,
    start_worker,
    stop_worker,
)
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.slack_server import FakeSlack

OPENAI_KEY = "sk-SECRETopenaikey0001"
URL_USER, URL_PASSWORD = "proxyuser", "SECRETproxypass0002"
DB_PASSWORD = "SECRETdbpass0003"
SLACK = {
    "bot_token": "xoxb-SECRETbottoken0004",
    "app_token": "xapp-SECRETapptoken0005",
    "signing_secret": "SECRETsigning0006",
}
SECRETS = [OPENAI_KEY, URL_PASSWORD, DB_PASSWORD, *SLACK.values()]
DISCORD_TOKEN = "SECRETdiscordtoken0007"
REDIS_PASSWORD = "SECRETredispass0008"
ALL_SECRETS = [*SECRETS, DISCORD_TOKEN, REDIS_PASSWORD]


def test_redact_masks_url_credentials_and_known_secrets():
    line = f"POST https://{URL_USER}:{URL_PASSWORD}@api.example/v1 key={OPENAI_KEY}"
    assert redact(line, [OPENAI_KEY]) == "POST https://***@api.example/v1 key=***"
    settings = Settings(
        _env_file=None,
        openai_api_key=OPENAI_KEY,
        openai_base_url=f"https://{URL_USER}:{URL_PASSWORD}@api.example/v1",
        database_url=f"postgresql://u:{DB_PASSWORD}@db/parley",
    )
    assert {OPENAI_KEY, URL_PASSWORD, DB_PASSWORD} <= secrets_of([settings])
    redis = RedisSettings(_env_file=None, url=f"redis://:{REDIS_PASSWORD}@cache:6379/0")
    assert REDIS_PASSWORD in secrets_of([redis]), "a secret URL's password is masked alone too"


async def run(*args: str, **env: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *PARLEY,
        *args,
        env={"PATH": "/usr/bin:/bin", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_a_malformed_database_url_is_one_sentence_without_its_password(tmp_path):
    for url in (
        f"postgresql://user:{DB_PASSWORD}@host:notaport/db",
        f"postgresql+asyncpg://user:{DB_PASSWORD}@127.0.0.1:1/db?sslmode=bogus",
        f"postgresql://user:{DB_PASSWORD}@127.0.0.1:1/db",
    ):
        code, out = await run("db", "current", DATABASE_URL=url, HOME=str(tmp_path))
        assert code == 2, out
        assert out.startswith("parley: ") and out.count("\n") == 1, out
        assert "DATABASE_URL" in out and DB_PASSWORD not in out


async def test_secrets_everywhere_reach_no_log_output_or_row(
    tmp_path, postgres_url, standin, unauthorized
):
    """A worker on Slack and Discord, `parley ask`, model errors and bad settings, with a
    recognisable secret in every secret setting and logging at DEBUG: none of them is in any
    output, nor in any row of any table."""
    await upgraded(postgres_url)
    database = make_url(postgres_url).set(password=DB_PASSWORD)
    base = standin.base_url.replace("http://", f"http://{URL_USER}:{URL_PASSWORD}@")
    env = {
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": base,
        "DATABASE_URL": database.render_as_string(hide_password=False),
        "PARLEY_LOG_LEVEL": "DEBUG",
        "HOME": str(tmp_path),
    }
    outputs = []
    async with private_redis(tmp_path) as redis_url:
        env["REDIS_URL"] = redis_url
        outputs.append(await worker_flows(tmp_path, standin, env))
        assert standin.requests, "the model was called through the URL with credentials"
        outputs += await cli_flows(tmp_path, env, unauthorized)
    rows = await all_rows(database.set(password=None).render_as_string(hide_password=False))
    assert "secrets everywhere?" in rows, "the turns were stored"
    for out in outputs:
        assert "Traceback" not in out, out
        leaked = [secret for secret in ALL_SECRETS if secret in out]
        assert not leaked, out
    assert not [secret for secret in ALL_SECRETS if secret in rows]


async def worker_flows(tmp_path, standin, env: dict[str, str]) -> str:
    """`parley run` on Slack (Socket Mode) and Discord: a mention and an /ask answered, after
    a model error and a retry."""
    standin.inject("server_error")  # an error and a retry get logged too
    async with FakeSlack(**SLACK) as slack, FakeDiscord() as discord:
        proc = await start_worker(
            tmp_path,
            slack,
            SLACK_APP_TOKEN=slack.app_token,
            SLACK_SIGNING_SECRET=slack.signing_secret,
            DISCORD_TOKEN=DISCORD_TOKEN,
            DISCORD_API_URL=discord.api_url,
            DISCORD_GATEWAY_URL=discord.gateway_url,
            DISCORD_GUILD_IDS=str(discord.guild_id),
            **env,
        )
        try:
            event = mention(slack, "secrets everywhere?")
            await slack.push(slack.event_body(event))
            assert "secrets everywhere?" in await answered(slack, event)
            await discord.wait_for(lambda: discord.commands and discord.connected.is_set())
            asked = await discord.send_command("ask", {"prompt": "secrets on discord?"})
            await discord.wait_for(
                lambda: any(
                    "secrets on discord?" in m for m in discord.interaction_messages(asked["token"])
                )
            )
        finally:
            out = await stop_worker(proc)
    return out


async def cli_flows(tmp_path, env: dict[str, str], unauthorized: str) -> list[str]:
    """`parley ask` answered, refused with 401 (the server echoes the key), and start-ups with
    bad settings."""
    outputs = []
    code, out = await run("ask", "a turn with secrets?", **env)
    assert code == 0 and "a turn with secrets?" in out, out
    outputs.append(out)
    code, out = await run("ask", "refused?", **{**env, "OPENAI_BASE_URL": unauthorized})
    assert code != 0 and out, out
    outputs.append(out)
    bad = {
        **env,
        "SLACK_BOT_TOKEN": SLACK["bot_token"],
        "SLACK_APP_TOKEN": SLACK["app_token"],
        "SLACK_SIGNING_SECRET": SLACK["signing_secret"],
        "DISCORD_TOKEN": DISCORD_TOKEN,
    }
    for setting, value in [("SLACK_MODE", "carrier-pigeon"), ("OPENAI_MAX_RETRIES", "many")]:
        code, out = await run("run", **{**bad, setting: value})
        said = [line for line in out.splitlines() if line.startswith("parley: ")]
        assert code == 2 and len(said) == 1 and setting in said[0], out
        outputs.append(out)
    return outputs


async def all_rows(url: str) -> str:
    """Every row of every table of the database, as text."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            names = (
                await conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalars()
            dumped = [
                repr((await conn.execute(text(f'SELECT * FROM "{name}"'))).all())
                for name in list(names)
            ]
    finally:
        await engine.dispose()
    return "\n".join(dumped)


@contextlib.asynccontextmanager
async def private_redis(tmp_path) -> AsyncIterator[str]:
    """A Redis server of this test's own that requires a password; its URL, password inside."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--requirepass",
        REDIS_PASSWORD,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.05)
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        await proc.wait()


@pytest.fixture
async def unauthorized() -> AsyncIterator[str]:
    """A model server that refuses every key with 401, quoting the key in full (a proxy
    might), behind a base URL with credentials."""

    async def refuse(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        error = {
            "message": f"Incorrect API key provided: {key}.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
        return web.json_response({"error": error}, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def test_redact_masks_discord_interaction_tokens():
    """discord.py's DEBUG lines (kept when content logging is on) carry interaction tokens:
    in webhook and callback URLs, and in the INTERACTION_CREATE event it received."""
    token = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5OmFiY2RlZg"
    api = "https://discord.com/api/v10"
    lines = [
        f"Webhook ID 1 with PATCH {api}/webhooks/1/{token}/messages/@original has returned 200",
        f"POST {api}/interactions/2/{token}/callback with None has returned 204",
        f"WebSocket Event: {{'t': 'INTERACTION_CREATE', 'd': {{'id': '2', 'token': '{token}'}}}}",
        f'{{"type": 2, "token": "{token}", "id": "2"}}',
    ]
    for line in lines:
        assert token not in redact(line), line
    assert redact(f"{api}/webhooks/1/{token}/messages/3") == f"{api}/webhooks/1/***/messages/3"
