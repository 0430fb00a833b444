"""Where a platform app's installations into many workspaces are kept (Slack's OAuth install).

The core knows nothing of what an installation holds: the adapter hands it a JSON-able mapping
per workspace (``enterprise_id``, ``team_id``; "" where there is none) and gets it back. The
states of installs under way are kept here too, so whichever worker a browser comes back to
can check them. Each call is one short transaction, tried again while the database is
unreachable (``core.store.retry``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from core.store.models import InstallationRow, OAuthStateRow
from core.store.retry import PATIENCE, retrying


class InstallationRecords:
    """Installations per (platform, enterprise, workspace), and single-use OAuth states."""

    def __init__(self, engine: AsyncEngine, *, patience: float = PATIENCE) -> None:
        self.engine = engine
        self.patience = patience
        self._upsert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def save(
        self, platform: str, enterprise_id: str, team_id: str, data: Mapping[str, Any]
    ) -> None:
        """Keep ``data`` as the installation of that workspace (replacing an older one)."""
        text = json.dumps(dict(data), separators=(",", ":"))
        stmt = self._upsert(InstallationRow).values(
            platform=platform, enterprise_id=enterprise_id, team_id=team_id, data=text
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["platform", "enterprise_id", "team_id"], set_={"data": text}
        )

        async def run() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(stmt)

        await retrying(run, patience=self.patience)

    async def find(self, platform: str, enterprise_id: str, team_id: str) -> dict[str, Any] | None:
        """The installation of that workspace, or None when it has none."""
        stmt = select(InstallationRow.data).where(
            InstallationRow.platform == platform,
            InstallationRow.enterprise_id == enterprise_id,
            InstallationRow.team_id == team_id,
        )

        async def run() -> str | None:
            async with self.engine.connect() as conn:
                return (await conn.execute(stmt)).scalar_one_or_none()

        found = await retrying(run, patience=self.patience)
        if found is None:
            return None
        data = json.loads(found)
        return data if isinstance(data, dict) else None

    async def delete(self, platform: str, enterprise_id: str, team_id: str) -> int:
        """Forget that workspace's installation; how many rows went (0 or 1)."""
        stmt = delete(InstallationRow).where(
            InstallationRow.platform == platform,
            InstallationRow.enterprise_id == enterprise_id,
            InstallationRow.team_id == team_id,
        )

        async def run() -> int:
            async with self.engine.begin() as conn:
                return int((await conn.execute(stmt)).rowcount or 0)

        return await retrying(run, patience=self.patience)

    async def issue_state(self, platform: str, state: str, seconds: float) -> None:
        """Keep ``state`` usable once for ``seconds``; expired states are cleared meanwhile."""
        now = int(time.time())
        row = {"state": state, "platform": platform, "expires": now + int(seconds)}

        async def run() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(delete(OAuthStateRow).where(OAuthStateRow.expires < now))
                await conn.execute(self._upsert(OAuthStateRow).values(**row))

        await retrying(run, patience=self.patience)

    async def consume_state(self, platform: str, state: str) -> bool:
        """Whether ``state`` was issued and has not expired; it cannot be used again."""
        stmt = delete(OAuthStateRow).where(
            OAuthStateRow.state == state,
            OAuthStateRow.platform == platform,
            OAuthStateRow.expires >= int(time.time()),
        )

        async def run() -> bool:
            async with self.engine.begin() as conn:
                return bool((await conn.execute(stmt)).rowcount)

        return await retrying(run, patience=self.patience)


__all__ = ["InstallationRecords"]
