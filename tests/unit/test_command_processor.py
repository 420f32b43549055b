"""CommandProcessor: one raw message in, one outcome out (pure, no Kafka)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas import default_registry
from streams.command_processor import CommandProcessor, Outcome
from schemas.messages import CommandAccepted, CommandMeta, CommandRejected, EventMeta

REG = default_registry()


class Store(dict):
    """The aggregates table, as a dict."""

    def apply(self, outcome: Outcome) -> Outcome:
        if outcome.state_key:
            self[outcome.state_key] = outcome.new_state
        self.update(outcome.extra_rows)
        return outcome


@pytest.fixture
def proc() -> CommandProcessor:
    ids = iter(range(10_000))
    return CommandProcessor(REG, max_bytes=2048, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC), ids=lambda: f"e{next(ids)}")


def message(kind: str, data: dict, tenant: str = "acme", cid: str = "c1", expected: int | None = None):
    value, headers = REG.encode(kind, data)
    meta = CommandMeta(command_id=cid, tenant_id=tenant, expected_version=expected)
    return tenant.encode(), value, headers + meta.to_headers()


CREATE = {"agent_id": "a1", "name": "Alpha", "agent_type": "llm"}


def test_accepts_and_appends_versioned_events(proc):
    store = Store()
    out = store.apply(proc.process(*message("CreateAgent", CREATE), store.get))
    assert isinstance(out.result, CommandAccepted)
    assert out.result.stream_id == "agent-a1" and out.result.new_version == 1
    assert out.dead_letter is None and len(out.events) == 1
    name, payload = REG.decode(out.events[0].value, out.events[0].headers)
    assert name == "AgentCreated" and payload.agent_id == "a1" and payload.region == "eu-west-1"
    meta = EventMeta.from_headers(out.events[0].headers)
    assert (meta.tenant_id, meta.stream_id, meta.version, meta.command_id) == ("acme", "agent-a1", 1, "c1")
    started = store.apply(proc.process(*message("StartAgent", {"agent_id": "a1"}, cid="c2", expected=1), store.get))
    assert started.result.new_version == 2
    assert store["acme/agent-a1"]["state"]["status"] == "running"


def test_invariants_and_versions_are_rejections_without_dead_letters(proc):
    store = Store()
    store.apply(proc.process(*message("CreateAgent", CREATE), store.get))
    again = proc.process(*message("CreateAgent", CREATE, cid="c2"), store.get)
    assert isinstance(again.result, CommandRejected) and again.result.code == "InvariantViolated"
    stale = proc.process(*message("StartAgent", {"agent_id": "a1"}, cid="c3", expected=0), store.get)
    assert stale.result.code == "WrongExpectedVersion" and stale.result.current_version == 1
    missing = proc.process(*message("StopAgent", {"agent_id": "zz"}, cid="c4"), store.get)
    assert missing.result.code == "NotFound"
    assert all(o.dead_letter is None and not o.events for o in (again, stale, missing))
    # a rejection changes no state; it is only remembered, to answer a retry the same way
    assert all(o.new_state["version"] == store.get(o.state_key, {"version": 0})["version"] for o in (again, stale, missing))
    assert again.new_state["state"] == store["acme/agent-a1"]["state"]


def test_tenants_do_not_share_state(proc):
    store = Store()
    store.apply(proc.process(*message("CreateAgent", CREATE, tenant="acme"), store.get))
    other = store.apply(proc.process(*message("CreateAgent", CREATE, tenant="globex", cid="c2"), store.get))
    assert isinstance(other.result, CommandAccepted) and other.state_key == "globex/agent-a1"


@pytest.mark.parametrize(
    "value, headers, code, reason",
    [
        (b"\xff\x00garbage", [("agentstream.schema", b"CreateAgent"), ("agentstream.schema_version", b"1")], "ValidationFailed", "undecodable"),
        (b"", [("agentstream.schema", b"Teleport"), ("agentstream.schema_version", b"1")], "UnknownCommand", "unknown-schema"),
        (b"", [], "UnknownCommand", "unknown-schema"),
        (b"x" * 4096, [("agentstream.schema", b"StartAgent"), ("agentstream.schema_version", b"1")], "ValidationFailed", "oversize"),
    ],
)
def test_malformed_input_is_rejected_and_dead_lettered(proc, value, headers, code, reason):
    meta = CommandMeta(command_id="bad", tenant_id="acme")
    out = proc.process(b"acme", value, headers + meta.to_headers(), {}.get)
    assert out.result.code == code and out.dead_letter == reason and out.error
    assert not out.events and out.state_key is None


def test_an_event_sent_as_a_command_is_unknown(proc):
    key, value, headers = message("CreateAgent", CREATE)
    value, schema_headers = REG.encode("AgentStarted", {"agent_id": "a1"})
    out = proc.process(key, value, schema_headers + CommandMeta(command_id="c", tenant_id="acme").to_headers(), {}.get)
    assert out.result.code == "UnknownCommand" and out.dead_letter == "unknown-command"


def test_key_must_be_the_tenant(proc):
    _, value, headers = message("CreateAgent", CREATE)
    out = proc.process(b"globex", value, headers, {}.get)
    assert out.result.code == "ValidationFailed" and out.dead_letter == "key-mismatch"


def test_missing_envelope_is_dead_lettered_without_a_result(proc):
    value, headers = REG.encode("StartAgent", {"agent_id": "a1"})
    out = proc.process(b"acme", value, headers, {}.get)
    assert out.result is None and out.dead_letter == "bad-envelope" and "command_id" in out.error


def test_a_failing_decider_is_a_handler_error_not_a_crash(proc):
    def broken_store(key):
        return {"version": 1, "state": {"status": "bogus-status"}}

    out = proc.process(*message("StartAgent", {"agent_id": "a1"}), broken_store)
    assert out.result.code == "HandlerFailed" and out.dead_letter == "handler-error"


def test_a_repeated_command_id_is_answered_with_its_first_outcome_and_appends_nothing(proc):
    store = Store()
    first = store.apply(proc.process(*message("CreateAgent", CREATE, cid="same"), store.get))
    retry = store.apply(proc.process(*message("CreateAgent", CREATE, cid="same"), store.get))
    assert retry.replayed and retry.result == first.result and not retry.events and retry.state_key is None
    refused = store.apply(proc.process(*message("StopAgent", {"agent_id": "a1"}, cid="stop"), store.get))
    store.apply(proc.process(*message("StartAgent", {"agent_id": "a1"}, cid="start"), store.get))
    again = proc.process(*message("StopAgent", {"agent_id": "a1"}, cid="stop"), store.get)
    assert again.replayed and again.result == refused.result  # still the first answer, though it would now succeed


def test_append_events_is_version_checked_and_validated(proc):
    import json

    store = Store()
    store.apply(proc.process(*message("CreateAgent", CREATE), store.get))
    append = {"stream_id": "agent-a1", "events": [{"type": "AgentConfigured", "data_json": json.dumps({"agent_id": "a1", "config": {"k": "v"}})}]}
    ok = store.apply(proc.process(*message("AppendEvents", append, cid="ap1", expected=1), store.get))
    assert isinstance(ok.result, CommandAccepted) and ok.result.new_version == 2
    assert store["acme/agent-a1"]["state"]["config"] == {"k": "v"}
    stale = proc.process(*message("AppendEvents", append, cid="ap2", expected=1), store.get)
    assert stale.result.code == "WrongExpectedVersion"
    unversioned = proc.process(*message("AppendEvents", append, cid="ap3"), store.get)
    assert unversioned.result.code == "ValidationFailed" and "expected_version" in unversioned.result.message
    foreign = {"stream_id": "agent-a1", "events": [{"type": "TenantCreated", "data_json": "{}"}]}
    assert proc.process(*message("AppendEvents", foreign, cid="ap4", expected=2), store.get).result.code == "ValidationFailed"
    bad = {"stream_id": "agent-a1", "events": [{"type": "AgentConfigured", "data_json": '{"agent_id": 1}'}]}
    assert proc.process(*message("AppendEvents", bad, cid="ap5", expected=2), store.get).result.code == "ValidationFailed"
    nowhere = {"stream_id": "rocket-1", "events": []}
    assert proc.process(*message("AppendEvents", nowhere, cid="ap6", expected=0), store.get).dead_letter == "unknown-stream"


def test_a_snapshot_is_taken_when_the_version_crosses_the_interval(proc):
    from streams.command_processor import SNAPSHOT_EVERY

    store = Store()
    store.apply(proc.process(*message("CreateAgent", CREATE), store.get))
    snapshots = []
    for i in range(SNAPSHOT_EVERY + 1):
        out = store.apply(proc.process(*message("ConfigureAgent", {"agent_id": "a1", "config": {"n": str(i)}}, cid=f"cfg{i}"), store.get))
        if out.snapshot:
            snapshots.append(out.snapshot)
    assert [s.version for s in snapshots] == [SNAPSHOT_EVERY]
    assert snapshots[0].stream_id == "agent-a1" and snapshots[0].state["config"] == {"n": str(SNAPSHOT_EVERY - 2)}


def test_a_message_delivered_again_after_its_outcome_was_stored_writes_nothing(proc):
    store = Store()
    first = store.apply(proc.process(*message("CreateAgent", CREATE), store.get, position=(2, 7)))
    assert isinstance(first.result, CommandAccepted) and store["acme/agent-a1"]["position"] == [2, 7]
    again = proc.process(*message("CreateAgent", CREATE), store.get, position=(2, 7))
    assert again.redelivered and again.result is None and not again.events and again.state_key is None
    rejected = store.apply(proc.process(*message("CreateAgent", CREATE, cid="c2"), store.get, position=(2, 9)))
    assert isinstance(rejected.result, CommandRejected) and store["acme/agent-a1"]["position"] == [2, 9]  # rejections move it too
    assert proc.process(*message("CreateAgent", CREATE, cid="c2"), store.get, position=(2, 8)).redelivered
    later = proc.process(*message("StartAgent", {"agent_id": "a1"}, cid="c3"), store.get, position=(2, 10))
    assert isinstance(later.result, CommandAccepted)
    # after a repartition the stream's commands come from another partition, with lower offsets
    moved = proc.process(*message("StartAgent", {"agent_id": "a1"}, cid="c4"), store.get, position=(5, 0))
    assert not moved.redelivered and moved.result is not None


# ====================================================================== quotas in the command path
from schemas.topology import QuotaLimits, QuotaPlans  # noqa: E402
from streams.domain import quotas  # noqa: E402

LOW = QuotaPlans(plans={"free": QuotaLimits(max_agents=2, max_concurrent_tasks=1, api_rate_per_hour=100, storage_limit_bytes=100_000,
                                             monthly_budget_micros=250_000, task_max_cost_micros=100_000, task_start_within_s=60)})


@pytest.fixture
def qproc() -> CommandProcessor:
    ids = iter(range(10_000))
    return CommandProcessor(REG, max_bytes=2048, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC), ids=lambda: f"e{next(ids)}", plans=LOW)


def agent(n: int) -> dict:
    return {"agent_id": f"a{n}", "name": f"A{n}", "agent_type": "llm"}


def test_max_agents_is_a_quota_rejection_with_its_fields_and_changes_nothing(qproc):
    store = Store()
    for n in range(2):
        out = store.apply(qproc.process(*message("CreateAgent", agent(n), cid=f"c{n}"), store.get))
        assert isinstance(out.result, CommandAccepted) and set(out.extra_rows) == {"acme/quota"}
    row_before = store["acme/quota"]
    refused = store.apply(qproc.process(*message("CreateAgent", agent(2), cid="c2"), store.get, position=("p", 3)))
    r = refused.result
    assert isinstance(r, CommandRejected) and (r.code, r.quota, r.limit, r.usage) == ("QuotaExceeded", "max_agents", 2, 2)
    assert not refused.events and not refused.extra_rows and store["acme/quota"] is row_before
    assert store["acme/agent-a2"]["state"] is None and store["acme/agent-a2"]["position"] == ["p", 3]
    # a retry of the refused id gets the same answer, fields included, from the stream's memory
    again = qproc.process(*message("CreateAgent", agent(2), cid="c2"), store.get)
    assert again.replayed and (again.result.quota, again.result.limit, again.result.usage) == ("max_agents", 2, 2)
    # another tenant has its own row
    other = store.apply(qproc.process(*message("CreateAgent", agent(0), tenant="globex", cid="g0"), store.get))
    assert isinstance(other.result, CommandAccepted) and set(other.extra_rows) == {"globex/quota"}


def test_slots_and_budget_follow_the_task_lifecycle(qproc):
    store = Store()
    store.apply(qproc.process(*message("CreateAgent", agent(0)), store.get))
    store.apply(qproc.process(*message("StartAgent", {"agent_id": "a0"}, cid="s"), store.get))
    first = store.apply(qproc.process(*message("AssignTask", {"task_id": "t1", "agent_id": "a0", "task_type": "x"}, cid="t1"), store.get))
    assert isinstance(first.result, CommandAccepted)
    _, assigned = REG.decode(first.events[0].value, first.events[0].headers)
    assert assigned.max_cost == 100_000  # the plan's default reservation, recorded in the event
    busy = qproc.process(*message("AssignTask", {"task_id": "t2", "agent_id": "a0", "task_type": "x"}, cid="t2"), store.get)
    assert (busy.result.code, busy.result.quota, busy.result.usage) == ("QuotaExceeded", "max_concurrent_tasks", 1)
    store.apply(qproc.process(*message("CompleteTask", {"task_id": "t1", "cost": 5.0}, cid="d1"), store.get))
    row = quotas.load(store["acme/quota"]["state"])
    assert (row.slots, row.reserved_micros, row.spent_micros) == (0, 0, 100_000)  # capped at the reservation
    store.apply(qproc.process(*message("AssignTask", {"task_id": "t2", "agent_id": "a0", "task_type": "x"}, cid="t2b"), store.get))
    store.apply(qproc.process(*message("CompleteTask", {"task_id": "t2", "cost": 0.1}, cid="d2"), store.get))
    broke = qproc.process(*message("AssignTask", {"task_id": "t3", "agent_id": "a0", "task_type": "x"}, cid="t3"), store.get)
    assert (broke.result.quota, broke.result.limit, broke.result.usage) == ("monthly_budget_micros", 250_000, 200_000)


def test_decider_rejections_and_replays_leave_the_quota_row_alone(qproc):
    store = Store()
    store.apply(qproc.process(*message("CreateAgent", agent(0)), store.get))
    row = store["acme/quota"]
    dup = store.apply(qproc.process(*message("CreateAgent", agent(0), cid="c2"), store.get))
    assert dup.result.code == "InvariantViolated" and not dup.extra_rows
    replay = store.apply(qproc.process(*message("CreateAgent", agent(0)), store.get))
    assert replay.replayed and not replay.extra_rows and store["acme/quota"] is row
    assert quotas.load(row["state"]).rate_count(quotas.to_ms(datetime(2026, 1, 1, tzinfo=UTC))) == 1


def test_set_tenant_quota_lifts_a_limit_and_appends_count_storage(qproc):
    store = Store()
    store.apply(qproc.process(*message("CreateTenant", {"name": "Acme"}, cid="ct"), store.get))
    for n in range(2):
        store.apply(qproc.process(*message("CreateAgent", agent(n), cid=f"c{n}"), store.get))
    assert qproc.process(*message("CreateAgent", agent(2), cid="c2"), store.get).result.quota == "max_agents"
    lifted = store.apply(qproc.process(*message("SetTenantQuota", {"max_agents": 3}, cid="q"), store.get))
    assert isinstance(lifted.result, CommandAccepted)
    assert isinstance(store.apply(qproc.process(*message("CreateAgent", agent(2), cid="c2b"), store.get)).result, CommandAccepted)
    before = quotas.load(store["acme/quota"]["state"]).stored_bytes
    events = [{"type": "AgentConfigured", "data_json": json.dumps({"agent_id": "a0", "config": {"k": "v"}})}]
    appended = store.apply(qproc.process(*message("AppendEvents", {"stream_id": "agent-a0", "events": events}, cid="ap", expected=1), store.get))
    assert isinstance(appended.result, CommandAccepted)
    assert quotas.load(store["acme/quota"]["state"]).stored_bytes == before + len(appended.events[0].value)


def test_quotas_off_reads_and_writes_no_quota_row(proc):
    store = Store()
    for n in range(5):
        assert not store.apply(proc.process(*message("CreateAgent", agent(n), cid=f"c{n}"), store.get)).extra_rows
    assert "acme/quota" not in store


def test_the_quota_row_written_per_command_is_the_full_dump_through_json(qproc):
    import orjson

    store = Store()
    steps = [("CreateAgent", agent(0)), ("StartAgent", {"agent_id": "a0"}), ("AssignTask", {"task_id": "t1", "agent_id": "a0", "task_type": "x"}),
             ("ConfigureAgent", {"agent_id": "a0", "config": {"k": "v"}}), ("CompleteTask", {"task_id": "t1", "cost": 0.01}),
             ("AssignTask", {"task_id": "t2", "agent_id": "a0", "task_type": "x"}), ("StopAgent", {"agent_id": "a0"})]
    for n, (kind, data) in enumerate(steps):
        out = store.apply(qproc.process(*message(kind, data, cid=f"s{n}"), store.get))
        assert isinstance(out.result, CommandAccepted), out.result
        row = store["acme/quota"]
        through_json = orjson.loads(orjson.dumps(row))  # what the changelog holds
        assert through_json == {"state": quotas.dump(quotas.load(row["state"]))}
        assert quotas.load(through_json["state"]) == quotas.load(row["state"])
    assert quotas.load(store["acme/quota"]["state"]).tasks["t2"].slot is False  # the stop freed its slot


def test_the_fast_event_headers_are_the_envelope_headers():
    from datetime import UTC, datetime

    from schemas.messages import EventMeta

    for moment in (datetime(2026, 11, 30, 7, 1, 2, 345678, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)):
        model = EventMeta(event_id="e1", tenant_id="acme", stream_id="agent-a1", version=7, occurred_at=moment, command_id="c9")
        fast = EventMeta.headers_for("e1", "acme", "agent-a1", 7, EventMeta.time_text(moment), "c9")
        assert fast == model.to_headers()
        assert EventMeta.from_headers(fast) == model


def test_a_row_that_remembers_ids_as_a_list_of_pairs_still_answers_retries():
    """Rows written before ``recent`` became a JSON object keep working."""
    from streams.command_processor import _recent

    assert _recent({"recent": [["c1", ["a"]], ["c2", ["b"]]]}) == {"c1": ["a"], "c2": ["b"]}
    assert _recent({}) == {}


def _quota_script() -> list[tuple]:
    """Commands over two tenants that hit max_agents, max_concurrent_tasks and the budget."""
    per_tenant = []
    for tenant in ("acme", "globex"):
        script = [(tenant, "CreateAgent", agent(n), f"{tenant}-c{n}") for n in range(3)]
        script.append((tenant, "StartAgent", {"agent_id": "a0"}, f"{tenant}-s"))
        for k in range(4):
            script.append((tenant, "AssignTask", {"task_id": f"t{k}", "agent_id": "a0", "task_type": "x"}, f"{tenant}-t{k}"))
            script.append((tenant, "AssignTask", {"task_id": f"u{k}", "agent_id": "a0", "task_type": "x"}, f"{tenant}-u{k}"))
            script.append((tenant, "CompleteTask", {"task_id": f"t{k}", "cost": 0.09}, f"{tenant}-d{k}"))
        per_tenant.append(script)
    return [step for pair in zip(*per_tenant) for step in pair]  # tenants interleaved, each in order


def _answers(proc: CommandProcessor, store: Store, script: list[tuple], batches: list[int] | None) -> list:
    answers, at = [], 0
    for size in batches or [len(script)]:
        if batches is not None:
            proc.begin_batch()
        for tenant, kind, data, cid in script[at : at + size]:
            out = store.apply(proc.process(*message(kind, data, tenant=tenant, cid=cid), store.get))
            answers.append((out.result.status, getattr(out.result, "quota", None), getattr(out.result, "usage", None)))
        if batches is not None:
            store.update(proc.finish_batch())
        at += size
    return answers


def test_batches_decide_and_write_what_command_by_command_does(qproc):
    """One ledger per tenant and batch (the worker's way) gives the same answers and, at each
    batch's end, the same quota rows as a row per command."""
    script = _quota_script()
    one_by_one = Store()
    expected = _answers(qproc, one_by_one, script, None)
    assert ("rejected", "max_agents", 2) in expected and ("rejected", "max_concurrent_tasks", 1) in expected
    assert ("rejected", "monthly_budget_micros", 180_000) in expected
    ids = iter(range(10_000))
    batched_proc = CommandProcessor(REG, max_bytes=2048, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC), ids=lambda: f"e{next(ids)}", plans=LOW)
    batched = Store()
    assert _answers(batched_proc, batched, script, [1, 7, 3, 11, 100]) == expected
    for tenant in ("acme", "globex"):
        assert quotas.load(batched[f"{tenant}/quota"]["state"]) == quotas.load(one_by_one[f"{tenant}/quota"]["state"])


def test_an_unfinished_batch_counts_nothing_once_the_next_begins(qproc):
    """A batch whose transaction aborted is redone from the table: begin_batch drops its ledgers."""
    store = Store()
    _answers(qproc, store, [("acme", "CreateAgent", agent(0), "c0")], [1])
    committed = dict(store)
    qproc.begin_batch()
    assert isinstance(qproc.process(*message("CreateAgent", agent(1), cid="c1"), store.get).result, CommandAccepted)
    # aborted: nothing of it reached the table; the redo decides from the committed rows again
    redo = Store(committed)
    assert _answers(qproc, redo, [("acme", "CreateAgent", agent(1), "c1"), ("acme", "CreateAgent", agent(2), "c2")], [2]) == [
        ("accepted", None, None), ("rejected", "max_agents", 2)]
    assert quotas.load(redo["acme/quota"]["state"]).agents == 2


def test_finish_batch_writes_only_rows_that_accepted_commands_changed(qproc):
    store = Store()
    _answers(qproc, store, [("acme", "CreateAgent", agent(0), "c0")], [1])
    qproc.begin_batch()
    store.apply(qproc.process(*message("CreateAgent", agent(0), cid="dup"), store.get))  # refused by the decider
    assert qproc.finish_batch() == {}
