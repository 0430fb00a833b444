"""Schema migrations with Alembic, run programmatically on Parley's own engine.

A worker only checks the schema's revision, with one plain query against ``HEAD``; Alembic is
imported when a migration actually runs (``parley db upgrade``, or a fresh SQLite database).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration in migrations/versions; a test fails when a migration is added and
# this is not moved to it.
HEAD = "0009"
VERSION_TABLE = "alembic_version"


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The revision the code expects the database at."""
    return HEAD


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None before its first migration)."""

    def read(connection: Any) -> str | None:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
        # Parley's migrations are one line: several rows (branches) match no head of ours.
        return ",".join(sorted(row[0] for row in rows)) or None

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def is_up_to_date(engine: AsyncEngine) -> bool:
    return await current_revision(engine) == HEAD


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (default: the newest)."""

    def run(connection: Any) -> None:
        from alembic import command

        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
