"""Write budgets and per-user message limits shared by every worker, through Redis.

``RedisBudget`` is ``core.budget.WriteBudget`` and ``RedisMessageRate`` is
``core.throttle.UserRate``, each one small Lua script, so a check and its count are one atomic
step on the server, with the server's clock (workers' clocks may disagree). Keys expire once
idle, so Redis holds only the places and people active in the last minutes.

When Redis cannot be reached a write or a message is let through (and logged, at most once a
minute): Parley then runs on the platforms' 429 retries, as it would without a budget.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.budget import Rate

log = logging.getLogger("parley.redis")

# KEYS[1] = bucket; ARGV = per second, burst, reserve. Returns "0" (a token was taken) or the
# seconds until reserve + 1 tokens will be there (nothing taken).
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local reserve = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= reserve + 1 then
  tokens = tokens - 1
else
  wait = (reserve + 1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""

# KEYS[1] = the user's sorted set of message times; ARGV = limit, window, a unique member.
# Returns "0" (the message counts) or the seconds until the user may send again.
HIT = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
return '0'
"""


class _Quiet:
    """Logs that Redis failed at most once a minute, so an outage doesn't flood the log."""

    def __init__(self) -> None:
        self._last = float("-inf")

    def failed(self, doing: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last >= 60:
            self._last = now
            log.warning("redis: %s failed (%s); letting it through", doing, type(exc).__name__)


class RedisBudget:
    """``core.budget.WriteBudget`` shared by every worker of a deployment through Redis."""

    def __init__(self, redis: Redis, prefix: str = "parley:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._take: Any = redis.register_script(TAKE)
        self._quiet = _Quiet()

    async def take(self, key: str, rate: Rate, reserve: float) -> float:
        try:
            wait = await self._take(
                keys=[f"{self.prefix}budget:{key}"],
                args=[repr(rate.per_second), repr(rate.burst), repr(reserve)],
            )
        except (RedisError, OSError) as exc:
            self._quiet.failed("taking a write from the budget", exc)
            return 0.0
        return float(wait)


class RedisMessageRate:
    """``core.throttle.UserRate`` counted in Redis: at most ``limit`` messages per ``window``
    seconds per user, across every worker."""

    def __init__(
        self, redis: Redis, limit: int, window: float = 60.0, prefix: str = "parley:"
    ) -> None:
        self.redis = redis
        self.limit = limit
        self.window = window
        self.prefix = prefix
        self._hit: Any = redis.register_script(HIT)
        self._quiet = _Quiet()
        self._count = 0

    async def check(self, platform: str, user_id: str) -> float:
        self._count += 1
        member = f"{time.time_ns()}:{id(self)}:{self._count}"
        try:
            wait = await self._hit(
                keys=[f"{self.prefix}rate:{platform}:{user_id}"],
                args=[self.limit, repr(self.window), member],
            )
        except (RedisError, OSError) as exc:
            self._quiet.failed("counting a message", exc)
            return 0.0
        return float(wait)


__all__ = ["RedisBudget", "RedisMessageRate"]
