"""`agentstream send` and the command path through a real worker, exactly once."""

from __future__ import annotations

import asyncio
import json

import pytest

from streams.client import CommandClient
from schemas.messages import CommandAccepted, CommandRejected
from tests.helpers import end_offsets, headers_of, read_topic, run_cli, tenant

pytestmark = pytest.mark.integration


def _produced_for(settings, before: dict[int, int], *tenants: str) -> list:
    """Records of ``tenants`` on commands.platform since the offsets ``before`` (aborted ones too).

    Only the test's own tenants: the session worker's sagas may send commands for earlier tests'
    tenants at any moment (a deadline falling due), so the topic's end offsets are no measure."""
    keys = {t.encode() for t in tenants}
    return [r for r in read_topic(settings, "commands.platform", committed=False, since=before) if r.key in keys]


def test_unknown_command_type_is_refused_and_nothing_is_produced(applied):
    before, t = end_offsets(applied, "commands.platform"), tenant()
    result = run_cli("send", "LaunchRocket", "--tenant", t, "--data", "{}")
    assert result.returncode == 2
    assert "unknown schema 'LaunchRocket'" in result.stderr and "CreateAgent" in result.stderr
    assert _produced_for(applied, before, t) == []


def test_payload_violating_its_schema_is_refused_and_nothing_is_produced(applied):
    before, t, t2 = end_offsets(applied, "commands.platform"), tenant(), tenant()
    result = run_cli("send", "CreateAgent", "--tenant", t, "--data", json.dumps({"agent_id": 42, "colour": "red"}))
    assert result.returncode == 2
    for words in ("agent_id: expected string, got int", "name: field required", "colour: unknown field"):
        assert words in result.stderr
    not_json = run_cli("send", "CreateAgent", "--tenant", t2, "--data", "{agent_id:")
    assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr
    bad_tenant = run_cli("send", "StartAgent", "--tenant", "no spaces allowed", "--data", '{"agent_id": "a"}')
    assert bad_tenant.returncode == 2 and "tenant_id" in bad_tenant.stderr
    assert _produced_for(applied, before, t, t2, "no spaces allowed") == []


def test_send_wait_prints_the_outcome_and_the_event_lands_in_the_store(worker, applied):
    t = tenant()
    data = json.dumps({"agent_id": "agent-1", "name": "Scout", "agent_type": "retriever", "capabilities": ["search"]})
    before = end_offsets(applied, "commands.platform")
    result = run_cli("send", "CreateAgent", "--tenant", t, "--data", data, "--id", f"{t}-cmd-1", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accepted" in result.stdout and "AgentCreated@v1" in result.stdout
    assert len(_produced_for(applied, before, t)) == 1  # what the refusals above are measured with sees a send

    events = [r for r in read_topic(applied, "events.platform") if r.key == t.encode()]
    assert len(events) == 1
    headers = headers_of(events[0])
    assert headers["agentstream.schema"] == "AgentCreated"
    assert headers["agentstream.stream_id"] == "agent-agent-1"
    assert headers["agentstream.version"] == "1"
    assert headers["agentstream.command_id"] == f"{t}-cmd-1"

    results = [r for r in read_topic(applied, "results.commands") if r.key == f"{t}-cmd-1".encode()]
    assert len(results) == 1 and json.loads(results[0].value)["status"] == "accepted"

    rejected = run_cli("send", "StartAgent", "--tenant", t, "--data", '{"agent_id": "agent-1"}', "--expected-version", "7")
    assert rejected.returncode == 1
    assert "WrongExpectedVersion" in rejected.stdout


def test_poison_message_goes_to_the_dead_letter_topic_and_the_next_command_is_processed(worker, applied):
    t = tenant()

    async def scenario() -> tuple[CommandRejected, object]:
        async with CommandClient(applied) as client:
            poison = await client.send_raw(t, b"\x00\xffnot avro", [("agentstream.schema", b"CreateAgent"), ("agentstream.schema_version", b"1")])
            unknown = await client.send_raw(t, b"", [("agentstream.schema", b"SelfDestruct"), ("agentstream.schema_version", b"1")])
            assert isinstance(unknown, CommandRejected) and unknown.code == "UnknownCommand"
            event_as_command = await client.send_raw(t, *client.registry.encode("AgentStarted", {"agent_id": "x"}))
            assert isinstance(event_as_command, CommandRejected) and event_as_command.code == "UnknownCommand"
            oversize = await client.send_raw(t, b"\x00" * (applied.max_command_bytes + 1), [("agentstream.schema", b"StartAgent"), ("agentstream.schema_version", b"1")])
            assert isinstance(oversize, CommandRejected) and "exceeds the limit" in oversize.message
            valid = await client.send("CreateAgent", t, {"agent_id": "after", "name": "After", "agent_type": "llm"})
            return poison, valid

    poison, valid = asyncio.run(scenario())
    assert isinstance(poison, CommandRejected) and poison.code == "ValidationFailed"
    assert isinstance(valid, CommandAccepted)
    dead = [r for r in read_topic(applied, "deadletter.commands") if r.key == t.encode()]
    reasons = sorted(headers_of(r)["agentstream.dlq_reason"] for r in dead)
    assert reasons == ["oversize", "undecodable", "unknown-command", "unknown-schema"]
    original = next(r for r in dead if headers_of(r)["agentstream.dlq_reason"] == "undecodable")
    assert original.value == b"\x00\xffnot avro"
    assert "CreateAgent" in headers_of(original)["agentstream.dlq_error"]
