"""Redis clients for the read models, built from the settings (text in, text out)."""

from __future__ import annotations

import redis
import redis.asyncio

from schemas.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    """A synchronous client for ``settings.redis_url`` that returns ``str`` (decode_responses=True)."""
    return redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)


def async_redis_client(settings: Settings) -> redis.asyncio.Redis:
    """An asyncio client for ``settings.redis_url`` that returns ``str`` (decode_responses=True)."""
    return redis.asyncio.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
