"""The `parley` command: chat in a terminal, run the platform workers, manage the database."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from bots.logs import Redactor, configure
from core.errors import ConfigError, ParleyError
from core.settings import Settings, load_settings

if TYPE_CHECKING:
    from adapters.console.render import Where
    from bots.bootstrap import Parley
    from core.service import ConversationService

log = logging.getLogger("parley")

OPENAI_URL = "https://api.openai.com/v1"
OFFLINE_BANNER = (
    "No OPENAI_API_KEY or OPENAI_BASE_URL set: talking to Parley's offline stand-in model "
    "(canned answers, not GPT-4o). Set OPENAI_API_KEY to use GPT-4o."
)
NO_MODEL = (
    "No OPENAI_API_KEY or OPENAI_BASE_URL set, so Parley would answer your users with its offline "
    "stand-in model. Set OPENAI_API_KEY (or OPENAI_BASE_URL), or PARLEY_ALLOW_OFFLINE=true to "
    "run against the stand-in on purpose."
)
NOTHING_TO_RUN = (
    "Nothing to run: no platform is configured. Set SLACK_BOT_TOKEN and SLACK_APP_TOKEN "
    "(Socket Mode; or SLACK_SIGNING_SECRET with SLACK_MODE=http) for Slack, or SLACK_CLIENT_ID "
    "and SLACK_CLIENT_SECRET to install into several workspaces, and/or DISCORD_TOKEN for "
    "Discord. `parley chat` works without either."
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
    """The terminal chat; its prompt shows while the core starts (the first message waits)."""
    from adapters.console.chat import ConsoleChat

    opened: list[Parley] = []
    shown = asyncio.Event()

    async def start() -> ConversationService:
        # Imports, database, tokenizer: all after the prompt is drawn, which they would slow.
        await shown.wait()
        bootstrap = await asyncio.to_thread(importlib.import_module, "bots.bootstrap")
        opened.append(await bootstrap.build(settings))
        return opened[0].service

    service = asyncio.ensure_future(start())
    history = Path.home() / ".parley_history"
    try:
        chat = ConsoleChat(
            service, _where(settings), session=session, history_file=history, shown=shown
        )
        return await chat.run()
    finally:
        service.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await service
        for parley in opened:
            await parley.close()


async def _ask(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.console.ask import Ask, ask_once, question
    from bots.bootstrap import build

    text = await asyncio.to_thread(question, args.question, sys.stdin)
    parley = await build(settings)
    try:
        ask = Ask(text, args.conversation, args.json)
        return await ask_once(parley.service, _where(settings), ask)
    finally:
        await parley.close()


def _where(settings: Settings) -> Where:
    """What the terminal talks to: the model, and the server's address without credentials."""
    from adapters.console.render import Where

    if settings.offline:
        return Where(settings.parley_model, "the offline stand-in", offline=True)
    url = urlsplit(settings.openai_base_url or OPENAI_URL)
    server = f"{url.scheme}://{url.hostname}{f':{url.port}' if url.port else ''}{url.path}"
    return Where(settings.parley_model, server, offline=False)


async def _run(settings: Settings, redactor: Redactor) -> int:
    from bots.bootstrap import build
    from bots.ops import OpsSettings, metrics_for, run_worker
    from bots.platforms import load_platforms
    from bots.shared import RedisSettings
    from core.settings import load

    platforms = load_platforms()
    ops = load(OpsSettings)
    redactor.hide([platforms.slack, platforms.discord, load(RedisSettings)])
    if not platforms.configured:
        print(f"parley: {NOTHING_TO_RUN}", file=sys.stderr)
        return 2
    if settings.offline and not settings.parley_allow_offline:
        print(f"parley: {NO_MODEL}", file=sys.stderr)
        return 2
    parley = await build(settings, auto_upgrade=True, metrics=metrics_for(ops))
    try:
        if parley.offline:
            log.warning(OFFLINE_BANNER)
        # Run until a signal, or until an adapter's connection ends for good (then exit non-zero
        # so the process supervisor restarts the worker).
        return await run_worker(parley, platforms, ops)
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
    chat.add_argument(
        "--conversation",
        "--session",
        dest="session",
        default="terminal",
        help="conversation name (default terminal)",
    )
    ask = sub.add_parser("ask", help="ask one question and print the answer (for scripts)")
    ask.add_argument("question", nargs="*", help="the question (stdin, when piped, is added)")
    ask.add_argument("--json", action="store_true", help="answer in JSON mode")
    ask.add_argument("--conversation", help="continue this named conversation")
    sub.add_parser("run", help="run the Slack and Discord workers that are configured")
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade", "current"])
    return p


T = TypeVar("T")


def loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, T]], T]:
    """What runs `parley run`'s event loop: uvloop's when chosen and installed (it spends
    less CPU per turn on the same work), else the standard library's."""
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:  # no build of it for this platform
            return asyncio.run
        return uvloop.run
    return asyncio.run


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
        check_database_url(settings.database_url)
        # In the terminal chat, operator warnings would land in the transcript; the user sees
        # each problem as a sentence anyway.
        redactor = _logging(settings, "ERROR" if args.command in {"chat", "ask"} else None)
        if args.command == "chat":
            return asyncio.run(_chat(settings, args.session))
        if args.command == "ask":
            return asyncio.run(_ask(settings, args))
        if args.command == "run":
            return loop_runner(settings.parley_event_loop)(_run(settings, redactor))
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
