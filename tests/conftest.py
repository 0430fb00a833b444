"""Shared fixtures: databases (SQLite and the PostgreSQL server) and the stand-in model server."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

PG_HOST = os.environ.get("PARLEY_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PARLEY_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("PARLEY_TEST_PG_USER", "postgres")


def _pg_reachable() -> bool:
    import socket

    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def fresh_write_budget() -> Iterator[None]:
    """Each test starts with the platforms' write budgets full: the in-process budget is
    shared by everything in a process, so one test's writes would spend the next one's."""
    from core import budget

    previous = budget.use(budget.LocalBudget())
    yield
    budget.use(previous)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    if not _pg_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_HOST}:{PG_PORT} is not reachable (required in CI)")
        pytest.skip("PostgreSQL is not reachable")
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"parley_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(postgres_admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(_admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def upgraded(url: str) -> str:
    """The database at ``url`` on the newest schema, as `parley db upgrade` leaves it."""
    from core.store import schema
    from core.store.sql import make_engine

    engine = make_engine(url)
    try:
        await schema.upgrade(engine)
    finally:
        await engine.dispose()
    return url


@pytest.fixture
async def upgraded_postgres_url(postgres_url: str) -> str:
    """A fresh PostgreSQL database on the newest schema (``upgraded``)."""
    return await upgraded(postgres_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """Each storage test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def standin() -> AsyncIterator[object]:
    from adapters.standin.server import StandinServer

    async with StandinServer() as server:
        yield server
