"""`parley` as an operator runs it never writes a secret: not in logs, not on start-up errors."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import make_url

from bots.logs import redact, secrets_of
from core.settings import Settings
from core.store import schema
from core.store.sql import make_engine
from tests.e2e.test_run_workers import PARLEY, answered, mention, start_worker, stop_worker
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


async def test_a_worker_with_secrets_everywhere_logs_none_of_them(tmp_path, postgres_url, standin):
    engine = make_engine(postgres_url)
    await schema.upgrade(engine)
    await engine.dispose()
    database = make_url(postgres_url).set(password=DB_PASSWORD)
    base = standin.base_url.replace("http://", f"http://{URL_USER}:{URL_PASSWORD}@")
    standin.inject("server_error")  # an error and a retry get logged too
    async with FakeSlack(**SLACK) as fake:
        proc = await start_worker(
            tmp_path,
            fake,
            SLACK_APP_TOKEN=fake.app_token,
            SLACK_SIGNING_SECRET=fake.signing_secret,
            OPENAI_API_KEY=OPENAI_KEY,
            OPENAI_BASE_URL=base,
            DATABASE_URL=database.render_as_string(hide_password=False),
            PARLEY_LOG_LEVEL="DEBUG",
        )
        try:
            event = mention(fake, "is anything leaking?")
            await fake.push(fake.event_body(event))
            assert "is anything leaking?" in await answered(fake, event)
        finally:
            out = await stop_worker(proc)
    assert standin.requests, "the model was called through the URL with credentials"
    assert "Traceback" not in out
    leaked = [secret for secret in SECRETS if secret in out]
    assert not leaked, out
