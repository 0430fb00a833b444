"""The composition root: reads settings once and wires storage, the model client and the core."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from core.errors import ConfigError, SchemaOutOfDate
from core.llm import OpenAIChat
from core.service import ConversationService
from core.settings import Settings
from core.store import schema
from core.store.sql import SqlStore, make_engine
from core.tokens import encoding

log = logging.getLogger("parley")


@dataclass
class Parley:
    """Everything an adapter needs, built from one Settings."""

    settings: Settings
    store: SqlStore
    llm: OpenAIChat
    service: ConversationService
    offline_server: Any = None

    @property
    def offline(self) -> bool:
        return self.offline_server is not None

    async def close(self) -> None:
        await self.llm.close()
        await self.store.close()
        if self.offline_server is not None:
            await self.offline_server.stop()


def database_error(url: str, exc: BaseException) -> ConfigError:
    """One line saying which database could not be opened and why (password hidden)."""
    where = make_url(url).render_as_string(hide_password=True)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
    return ConfigError(f"cannot open the database at DATABASE_URL={where}: {reason}")


async def prepare_schema(store: SqlStore, settings: Settings, *, auto_upgrade: bool) -> None:
    """Refuse to run on an out-of-date schema; SQLite databases are upgraded automatically."""
    if await schema.is_up_to_date(store.engine):
        return
    if auto_upgrade and store.engine.dialect.name == "sqlite":
        log.info("upgrading the SQLite schema to %s", schema.head_revision())
        await schema.upgrade(store.engine)
        return
    raise SchemaOutOfDate(
        "The database schema is out of date. Run `parley db upgrade` (with the same DATABASE_URL)."
    )


async def build(settings: Settings, *, auto_upgrade: bool = True) -> Parley:
    """Build Parley's core from ``settings``; start the offline stand-in model if no key is set."""
    store = SqlStore(
        make_engine(settings.database_url, log_parameters=settings.parley_log_content),
        lock_connections=settings.database_lock_connections,
    )
    try:
        await prepare_schema(store, settings, auto_upgrade=auto_upgrade)
    except (OSError, DBAPIError) as exc:
        await store.close()
        raise database_error(settings.database_url, exc) from None
    except BaseException:
        await store.close()
        raise
    offline_server = None
    base_url = settings.openai_base_url
    if settings.offline:
        from adapters.standin.server import StandinServer

        offline_server = StandinServer(record=False)
        base_url = await offline_server.start()
    # Load the tokenizer now, off the event loop, rather than on the first message.
    await asyncio.to_thread(encoding)
    llm = OpenAIChat.from_settings(settings, base_url=base_url)
    service = ConversationService(store, llm, settings)
    return Parley(settings, store, llm, service, offline_server)
