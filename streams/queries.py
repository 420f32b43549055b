"""Queries on the Redis read models, always scoped to one tenant.

Every query resolves the live generation (``rm:current``) first, so a reader never sees a
generation that a rebuild is still building. No function here reads across tenants: every key
read is built from the tenant id given.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import redis

from streams import projections as pj
from streams.projections import AgentSummary, TenantOverview

__all__ = ["AgentSummary", "TenantOverview", "get_agent_summary", "list_agents", "get_tenant_overview", "live_generation"]

T = TypeVar("T")


def live_generation(r: redis.Redis) -> int | None:
    """The live generation of the read models, or None when no projector has run yet."""
    raw = r.get(pj.CURRENT_KEY)
    return None if raw is None else int(raw)


def _read(r: redis.Redis, read: Callable[[int], T | None]) -> T | None:
    # A rebuild may swap generations and delete the old one between resolving rm:current and
    # reading: if nothing was found and the generation moved, read again from the new one.
    for _ in range(3):
        gen = live_generation(r)
        if gen is None:
            return None
        found = read(gen)
        if found or live_generation(r) == gen:
            return found
    return None


def get_agent_summary(r: redis.Redis, tenant: str, agent_id: str) -> AgentSummary | None:
    """The summary of agent ``agent_id`` of ``tenant``, or None if that tenant has no such agent."""
    raw = _read(r, lambda gen: r.get(pj.agent_key(gen, tenant, agent_id)))
    return None if raw is None else AgentSummary.model_validate_json(raw)


def list_agents(r: redis.Redis, tenant: str) -> list[AgentSummary]:
    """The summaries of every agent of ``tenant``, ordered by agent id."""

    def read(gen: int) -> list[str]:
        ids = sorted(r.smembers(pj.agents_set_key(gen, tenant)))
        if not ids:
            return []
        return [raw for raw in r.mget([pj.agent_key(gen, tenant, agent_id) for agent_id in ids]) if raw is not None]

    return [AgentSummary.model_validate_json(raw) for raw in _read(r, read) or []]


def get_tenant_overview(r: redis.Redis, tenant: str) -> TenantOverview | None:
    """The overview of ``tenant``, or None if no event of that tenant was projected yet."""
    raw = _read(r, lambda gen: r.get(pj.tenant_key(gen, tenant)))
    return None if raw is None else TenantOverview.model_validate_json(raw)
