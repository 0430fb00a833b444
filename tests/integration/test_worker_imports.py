"""What a worker imports to start: Alembic only when the schema needs migrating, Redis only with
REDIS_URL, the stand-in only when offline (checked in a fresh interpreter, as `parley run`
starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["alembic", "redis", "adapters.standin.server"]

BUILD = """
import asyncio, json, sys
from bots.bootstrap import build
from core.settings import load_settings

async def main():
    parley = await build(load_settings(), auto_upgrade=True)
    await parley.close()

asyncio.run(main())
print(json.dumps({name: name in sys.modules for name in sys.argv[1:]}))
"""


def worker_imports(tmp_path: Path, database_url: str) -> dict[str, bool]:
    """Which of ``HEAVY`` a worker built from the environment has imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "REDIS_"))}
    env.update(DATABASE_URL=database_url, OPENAI_API_KEY="sk-test", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", BUILD, *HEAVY],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.timeout(120)
def test_a_worker_on_a_current_schema_leaves_migrations_and_the_stand_in_unimported(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    fresh = worker_imports(tmp_path, url)
    assert fresh == {"alembic": True, "redis": False, "adapters.standin.server": False}, (
        "a fresh SQLite database is migrated by the worker"
    )
    assert worker_imports(tmp_path, url) == dict.fromkeys(HEAVY, False)
