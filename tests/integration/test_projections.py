"""The Redis read models through a real worker: live projection, queries, rebuild and swap, the skip rule."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any, Callable, TypeVar

import pytest
from pydantic import SecretStr

from connectors.redis_store import async_redis_client, redis_client
from schemas import default_registry
from streams import projections as pj
from streams.client import CommandClient
from schemas.messages import CommandAccepted, EventMeta, utcnow
from streams.projection_rebuild import lag, rebuild
from streams.queries import get_agent_summary, get_tenant_overview, list_agents, live_generation
from tests.helpers import run_cli, tenant

pytestmark = pytest.mark.integration

T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float = 20.0) -> T:
    """Poll ``probe`` until it returns something truthy (bounded); fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            assert value, f"condition not met within {timeout:.0f}s: last value {value!r}"
            return value
        time.sleep(0.1)


def snapshot(r, gen: int) -> dict[str, Any]:
    """Every key of generation ``gen``, without the prefix, with its value (sets as sorted lists)."""
    out: dict[str, Any] = {}
    for key in r.scan_iter(match=pj.generation_prefix(gen) + "*", count=1000):
        value = sorted(r.smembers(key)) if r.type(key) == "set" else r.get(key)
        out[key[len(pj.generation_prefix(gen)) :]] = value
    return out


def caught_up(settings) -> bool:
    return all(row.pending == 0 for row in lag(settings)[1])


@pytest.fixture
def r(applied):
    client = redis_client(applied)
    yield client
    client.close()


def test_read_models_follow_events_rebuild_identically_and_stay_per_tenant(worker, applied, r):
    t, other = tenant(), tenant()

    async def scenario() -> dict[str, Any]:
        async with CommandClient(applied) as client:
            out = {}
            for name, command, tenant_id, data in [
                ("tenant", "CreateTenant", t, {"name": "Acme", "region": "eu-west-1", "plan": "pro"}),
                ("configure-tenant", "ConfigureTenant", t, {"settings": {"tier": "gold"}}),
                ("a1", "CreateAgent", t, {"agent_id": "a1", "name": "Scout", "agent_type": "retriever", "capabilities": ["search"], "config": {"k": "v"}}),
                ("a2", "CreateAgent", t, {"agent_id": "a2", "name": "Writer", "agent_type": "llm"}),
                ("configure-a1", "ConfigureAgent", t, {"agent_id": "a1", "config": {"model": "m2"}}),
                ("start-a1", "StartAgent", t, {"agent_id": "a1"}),
                ("start-a2", "StartAgent", t, {"agent_id": "a2"}),
                ("stop-a2", "StopAgent", t, {"agent_id": "a2", "reason": "idle"}),
                ("task-1", "AssignTask", t, {"task_id": "t1", "agent_id": "a1", "task_type": "search"}),
                ("task-2", "AssignTask", t, {"task_id": "t2", "agent_id": "a1", "task_type": "search"}),
                ("task-3", "AssignTask", t, {"task_id": "t3", "agent_id": "a1", "task_type": "search"}),
                ("complete-1", "CompleteTask", t, {"task_id": "t1", "output": {"hits": "3"}, "cost": 0.5}),
                ("fail-2", "FailTask", t, {"task_id": "t2", "error": "timeout", "cost": 0.25}),
                ("other-a1", "CreateAgent", other, {"agent_id": "a1", "name": "Other", "agent_type": "llm"}),
            ]:
                out[name] = await client.send(command, tenant_id, data, timeout=60)
            return out

    outcomes = asyncio.run(scenario())
    rejected = {name: o for name, o in outcomes.items() if not isinstance(o, CommandAccepted)}
    assert not rejected, rejected

    # The live projector catches up (bounded wait, polling the query API).
    a1 = wait_for(lambda: (s := get_agent_summary(r, t, "a1")) and s.tasks_failed == 1 and s)
    assert (a1.status, a1.name, a1.agent_type, a1.region) == ("running", "Scout", "retriever", "eu-west-1")
    assert a1.config == {"k": "v", "model": "m2"} and a1.capabilities == ["search"]
    assert (a1.tasks_assigned, a1.tasks_completed, a1.tasks_failed, a1.open_tasks) == (3, 1, 1, 1)
    assert a1.total_cost == pytest.approx(0.75)
    assert a1.version == 3 and a1.last_activity is not None
    a2 = get_agent_summary(r, t, "a2")
    assert a2 is not None and a2.status == "stopped" and a2.version == 3
    overview = wait_for(lambda: get_tenant_overview(r, t))
    assert (overview.name, overview.region, overview.plan, overview.settings) == ("Acme", "eu-west-1", "pro", {"tier": "gold"})
    assert (overview.agents_total, overview.agents_running, overview.tasks_completed, overview.tasks_failed) == (2, 1, 1, 1)
    assert overview.total_cost == pytest.approx(0.75)
    assert [s.agent_id for s in list_agents(r, t)] == ["a1", "a2"]

    # Tenants are isolated: the other tenant's a1 is its own; it has no a2.
    wait_for(lambda: get_agent_summary(r, other, "a1"))
    assert get_agent_summary(r, other, "a1").name == "Other"
    assert get_agent_summary(r, other, "a2") is None
    assert [s.agent_id for s in list_agents(r, other)] == ["a1"]

    # Rebuild by replay gives the same models, key for key, in a new generation; the old one is gone.
    # The platform is live (the session worker's sagas reassign the task of the stopped agent a2,
    # and other tests' tasks): compare this test's tenants, and rebuild again if one of their
    # events landed between the snapshot and the rebuild.
    def ours(models: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in models.items() if k.endswith((f":{t}", f":{other}")) or f":{t}:" in k or f":{other}:" in k}

    for attempt in range(4):
        wait_for(lambda: caught_up(applied))
        gen = live_generation(r)
        live = snapshot(r, gen)
        assert f"agent:{t}:a1" in live and f"tenant:{t}" in live and f"agents:{t}" in live
        result = run_cli("projections", "rebuild", "read_models")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{gen} -> {gen + 1}" in result.stdout
        assert live_generation(r) == gen + 1
        assert snapshot(r, gen) == {}
        if ours(snapshot(r, gen + 1)) == ours(live):
            break
    assert ours(snapshot(r, gen + 1)) == ours(live)

    # The live projector continues on the new generation.
    asyncio.run(_send(applied, "StopAgent", t, {"agent_id": "a1"}))
    assert wait_for(lambda: (s := get_agent_summary(r, t, "a1")) and s.status == "stopped" and s).version == 4
    assert wait_for(lambda: (o := get_tenant_overview(r, t)) and o.agents_running == 0 and o)

    # The CLI shows an agent of the tenant, and refuses one that the tenant does not have.
    shown = run_cli("agents", "show", "--tenant", t, "a1")
    assert shown.returncode == 0, shown.stderr
    assert "Scout" in shown.stdout and "stopped" in shown.stdout
    listed = run_cli("agents", "list", "--tenant", t)
    assert listed.returncode == 0 and "Writer" in listed.stdout and "Scout" in listed.stdout
    refused = run_cli("agents", "show", "--tenant", other, "a2")
    assert refused.returncode == 1 and "has no agent 'a2'" in refused.stderr
    status = run_cli("projections", "status")
    assert status.returncode == 0 and "generation" in status.stdout


def test_rebuild_without_a_live_projector_builds_the_same_models(worker, applied, r):
    """Into another Redis database where no projector runs: the rebuild swaps once caught up to the end.

    The platform is live (the session worker's sagas keep reassigning earlier tests' tasks), so
    an event may land between the live snapshot and the rebuild: then the rebuild is done again.
    """
    url = applied.redis_url.get_secret_value().rsplit("/", 1)[0] + "/5"
    other_db = applied.model_copy(update={"redis_url": SecretStr(url)})
    r5 = redis_client(other_db)
    try:
        for attempt in range(4):
            wait_for(lambda: caught_up(applied))
            live = snapshot(r, live_generation(r))
            r5.flushdb()
            calls: list[tuple[int, int]] = []
            report = rebuild(other_db, None, lambda done, total: calls.append((done, total)))
            if snapshot(r5, 2) == live:
                break
        assert report.new_generation == live_generation(r5) == 2
        assert calls and calls[-1][0] == report.events_replayed > 0
        assert snapshot(r5, 2) == live

        # From a timestamp after every event: no models, checkpoints at the ends (nothing re-applied later).
        later = rebuild(other_db, utcnow() + timedelta(hours=1), lambda done, total: None)
        assert later.new_generation == live_generation(r5) == 3 and later.events_replayed == 0
        built = snapshot(r5, 3)
        assert built and all(key.startswith("checkpoint:") for key in built)
        assert all(int(built[k]) >= int(v) for k, v in live.items() if k.startswith("checkpoint:"))
    finally:
        r5.flushdb()
        r5.close()


def test_a_record_applied_twice_changes_the_models_once(applied):
    """The skip rule against real Redis (database 6, away from the worker's live models)."""
    from connectors.redis_store import redis_client
    from streams.projection_agent import BatchProjector

    registry = default_registry()

    def record(event_type: str, data: dict, version: int) -> tuple[bytes, list]:
        value, headers = registry.encode(event_type, data)
        meta = EventMeta(event_id=f"e{version}", tenant_id="skip-t", stream_id="agent-a1", version=version, occurred_at=utcnow(), command_id="c")
        return value, headers + meta.to_headers()

    url = applied.redis_url.get_secret_value().rsplit("/", 1)[0] + "/6"
    r = redis_client(applied.model_copy(update={"redis_url": SecretStr(url)}))
    r.flushdb()
    try:
        live = BatchProjector(r)
        created = record("AgentCreated", {"agent_id": "a1", "name": "A", "agent_type": "llm", "region": "eu", "config": {}}, 1)
        started = record("AgentStarted", {"agent_id": "a1"}, 2)
        assert live.apply(3, [(10, *created)]) == "applied"
        assert live.apply(3, [(10, *created)]) == "skipped"
        assert live.apply(3, [(10, *created), (11, *started)]) == "applied"  # a redone batch: only the new record
        before = r.get(pj.agent_key(1, "skip-t", "a1"))
        assert live.apply(3, [(11, *started)]) == "skipped"
        assert live.apply(3, [(9, *created)]) == "skipped"
        assert r.get(pj.agent_key(1, "skip-t", "a1")) == before
        tenant_view = pj.loads(r.get(pj.tenant_key(1, "skip-t")))
        assert (tenant_view["agents_total"], tenant_view["agents_running"]) == (1, 1)
        # a bad record is logged and passed over: the checkpoint advances, the models do not change
        assert live.apply(3, [(12, b"\xff", created[1])]) == "applied" and live.rejected == 1
        assert r.get(pj.checkpoint_key(1, 3)) == "12"
        assert r.get(pj.agent_key(1, "skip-t", "a1")) == before
        assert r.smembers(pj.agents_set_key(1, "skip-t")) == {"a1"}
    finally:
        r.flushdb()
        r.close()


async def _send(settings, command: str, tenant_id: str, data: dict) -> None:
    async with CommandClient(settings) as client:
        outcome = await client.send(command, tenant_id, data, timeout=60)
    assert isinstance(outcome, CommandAccepted), outcome
