"""The `parley` command: chat in a terminal, run the platform workers, manage the database."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from bots.logs import Redactor, configure
from core.errors import ConfigError, ParleyError
from core.settings import Settings, load_settings

log = logging.getLogger("parley")

OFFLINE_BANNER = (
    "No OPENAI_API_KEY or OPENAI_BASE_URL set: talking to Parley's offline stand-in model "
    "(canned answers, not GPT-4o). Set OPENAI_API_KEY to use GPT-4o."
)
CHAT_HINT = "/help for commands, /quit to leave."
NO_MODEL = (
    "No OPENAI_API_KEY or OPENAI_BASE_URL set, so Parley would answer your users with its offline "
    "stand-in model. Set OPENAI_API_KEY (or OPENAI_BASE_URL), or PARLEY_ALLOW_OFFLINE=true to "
    "run against the stand-in on purpose."
)
NOTHING_TO_RUN = (
    "Nothing to run: no platform is configured. Set SLACK_BOT_TOKEN and SLACK_APP_TOKEN "
    "(Socket Mode; or SLACK_SIGNING_SECRET with SLACK_MODE=http) for Slack, and/or DISCORD_TOKEN "
    "for Discord. `parley chat` works without either."
)


def _logging(settings: Settings, level: str | None = None) -> Redactor:
    """Log at the configured level, secrets masked; chatty libraries only from WARNING."""
    redactor = configure(level or settings.parley_log_level, [settings])
    # Request logs of HTTP clients can carry tokens in URLs, and database drivers log query
    # parameters (message text) at DEBUG: keep them quiet unless content logging is on.
    quiet = ["httpx", "httpx2", "httpcore", "httpcore2", "openai", "aiohttp.access", "alembic"]
    if not settings.parley_log_content:
        quiet += ["aiosqlite", "asyncpg", "sqlalchemy.engine", "slack_bolt", "slack_sdk"]
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    return redactor


async def _chat(settings: Settings, session: str) -> int:
    from adapters.console.chat import ConsoleChat
    from bots.bootstrap import build

    parley = await build(settings)
    try:
        if parley.offline:
            print(f"{OFFLINE_BANNER} {CHAT_HINT}", flush=True)
        else:
            print(f"Parley on {settings.parley_model}. {CHAT_HINT}", flush=True)
        await ConsoleChat(parley.service, session=session).run()
    finally:
        await parley.close()
    return 0


async def _run(settings: Settings, redactor: Redactor) -> int:
    from bots.bootstrap import build
    from bots.platforms import load_platforms, platform_adapters
    from bots.runtime import run_adapters

    platforms = load_platforms()
    redactor.hide([platforms.slack, platforms.discord])
    if not platforms.configured:
        print(f"parley: {NOTHING_TO_RUN}", file=sys.stderr)
        return 2
    if settings.offline and not settings.parley_allow_offline:
        print(f"parley: {NO_MODEL}", file=sys.stderr)
        return 2
    parley = await build(settings, auto_upgrade=True)
    try:
        if parley.offline:
            log.warning(OFFLINE_BANNER)
        # Run until a signal, or until an adapter's connection ends for good (then exit non-zero
        # so the process supervisor restarts the worker).
        return await run_adapters(platform_adapters(parley, platforms))
    finally:
        await parley.close()


async def _db(settings: Settings, action: str) -> int:
    from sqlalchemy.exc import DBAPIError

    from bots.bootstrap import database_error
    from core.store import schema
    from core.store.sql import make_engine

    engine = make_engine(settings.database_url)
    try:
        if action == "upgrade":
            await schema.upgrade(engine)
            print(f"database at revision {schema.head_revision()}")
        else:
            current = await schema.current_revision(engine)
            head = schema.head_revision()
            state = "up to date" if current == head else "out of date: run `parley db upgrade`"
            print(f"database at revision {current or 'none'} (newest {head}): {state}")
    except (OSError, DBAPIError, TypeError) as exc:
        raise database_error(settings.database_url, exc) from None
    finally:
        await engine.dispose()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parley", description="Parley, a GPT-4o chat bot.")
    sub = p.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="chat with Parley in this terminal")
    chat.add_argument("--session", default="terminal", help="conversation name (default terminal)")
    sub.add_parser("run", help="run the Slack and Discord workers that are configured")
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade", "current"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
        check_database_url(settings.database_url)
        # In the terminal chat, operator warnings would land in the transcript; the user sees
        # each problem as a sentence anyway.
        redactor = _logging(settings, "ERROR" if args.command == "chat" else None)
        if args.command == "chat":
            return asyncio.run(_chat(settings, args.session))
        if args.command == "run":
            return asyncio.run(_run(settings, redactor))
        return asyncio.run(_db(settings, args.action))
    except (ConfigError, ParleyError) as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        # a bug: its traceback goes through the log, where secrets are masked
        log.exception("parley stopped on an unexpected error")
        return 1


def check_database_url(url: str) -> None:
    """Refuse a DATABASE_URL that cannot be parsed, in one sentence without its password."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            "DATABASE_URL cannot be read as a database URL: check the port, and percent-encode "
            "'@', ':' and '/' in the user name and password (postgresql+asyncpg://user:password"
            "@host:5432/db, or sqlite+aiosqlite:///parley.db)"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
