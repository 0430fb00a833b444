"""What the workers of one deployment share through Redis: the write budgets of the platforms
and the per-user message limit (``REDIS_URL``; without it each worker counts on its own)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from core import budget
from core.errors import ConfigError
from core.settings import ENV_CONFIG, Settings
from core.throttle import UserRate


class RedisSettings(BaseSettings):
    """``REDIS_URL`` (may hold a password) and the prefix of Parley's keys there."""

    model_config = SettingsConfigDict(**ENV_CONFIG, env_prefix="REDIS_")

    url: SecretStr | None = None
    key_prefix: str = "parley:"


async def open_shared(
    settings: Settings, redis: RedisSettings, opened: AsyncExitStack
) -> UserRate | None:
    """With ``REDIS_URL``: make the Redis write budget the deployment's (until ``opened``
    closes) and return the per-user message limit counted there. Without it: None (the
    service counts per process, the budget stays in process)."""
    if redis.url is None:
        return None
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from adapters.budget_redis import RedisBudget, RedisMessageRate

    client = Redis.from_url(redis.url.get_secret_value())
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        where = client.connection_pool.connection_kwargs.get("host", "?")
        raise ConfigError(
            f"cannot reach Redis at REDIS_URL (host {where}): {type(exc).__name__}"
        ) from None
    opened.push_async_callback(client.aclose)
    previous = budget.use(RedisBudget(client, redis.key_prefix))
    opened.callback(budget.use, previous)
    per_minute = settings.parley_user_messages_per_minute
    return RedisMessageRate(client, per_minute, prefix=redis.key_prefix) if per_minute else None
