"""Unit tests of the schema contracts package (pure: only temp dirs, no Kafka)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from schemas import (
    SCHEMA_HEADER,
    SCHEMA_ROOT,
    VERSION_HEADER,
    SchemaDecodeError,
    SchemaError,
    SchemaLoadError,
    SchemaRegistry,
    SchemaValidationError,
    UnknownSchema,
    default_registry,
)
from schemas.errors import SchemaNotBound
from schemas.wire import MemoryIds
from tests.helpers import encode_old_format

COMMANDS = [
    "CreateAgent", "ConfigureAgent", "StartAgent", "StopAgent", "AssignTask", "CompleteTask",
    "FailTask", "CreateTenant", "ConfigureTenant", "UpdateSecurityPolicy", "GrantAccess", "RevokeAccess",
    "AppendEvents", "SetTenantQuota", "StartTask", "ReassignTask", "PrepareTenant", "TeardownTenant",
    "RecordTenantPreparation", "CompleteTenantOnboarding", "FailTenantOnboarding", "SaveDashboard", "DeleteDashboard",
]
EVENTS = [
    "AgentCreated", "AgentConfigured", "AgentStarted", "AgentStopped", "TaskAssigned", "TaskCompleted",
    "TaskFailed", "TenantCreated", "TenantConfigured", "SecurityPolicyUpdated", "AccessGranted",
    "AccessRevoked", "BillingEvent", "TenantQuotaSet", "TaskStarted", "TaskReassigned", "TenantPrepared",
    "TenantPreparationFailed", "TenantReady", "TenantOnboardingFailed", "DashboardSaved", "DashboardDeleted",
]
METADATA_FIELDS = {"tenant_id", "command_id", "event_id", "expected_version", "stream_id", "event_version"}

_WIDGET = {"id": "n", "title": "Tasks", "type": "metric", "cube": "task_cube", "measures": ["task_count"], "dimensions": [],
           "granularity": "hour", "range": "24h", "refresh_s": 60, "filters": {"region": ["eu"]}, "gauge_max": None}
PAYLOADS: dict[str, dict[str, Any]] = {
    "AppendEvents": {"stream_id": "agent-a-1", "events": [{"type": "AgentStarted", "data_json": '{"agent_id": "a-1"}'}]},
    "CreateAgent": {"agent_id": "a-1", "name": "Summariser", "agent_type": "llm", "region": "us-east-1",
                    "capabilities": ["summarise", "translate"], "config": {"model": "small"}},
    "ConfigureAgent": {"agent_id": "a-1", "config": {"temperature": "0.2"}},
    "StartAgent": {"agent_id": "a-1"},
    "StopAgent": {"agent_id": "a-1", "reason": "maintenance"},
    "AssignTask": {"task_id": "t-1", "agent_id": "a-1", "task_type": "summarise", "input": {"doc": "d-9"},
                   "max_cost": 250_000, "start_within_s": 30, "retry_of": None},
    "CompleteTask": {"task_id": "t-1", "output": {"summary": "ok"}, "cost": 0.25},
    "FailTask": {"task_id": "t-1", "error": "timeout", "cost": 0.01},
    "CreateTenant": {"name": "Acme", "region": "eu-central-1", "plan": "pro"},
    "ConfigureTenant": {"settings": {"max_agents": "10"}},
    "UpdateSecurityPolicy": {"policy_id": "p-1", "rules": {"pii": "deny"}},
    "GrantAccess": {"principal": "user:ann", "role": "admin"},
    "RevokeAccess": {"principal": "user:ann", "role": "admin"},
    "AgentCreated": {"agent_id": "a-1", "name": "Summariser", "agent_type": "llm", "region": "eu-west-1",
                     "config": {"model": "small"}, "capabilities": ["summarise"]},
    "AgentConfigured": {"agent_id": "a-1", "config": {"temperature": "0.2"}},
    "AgentStarted": {"agent_id": "a-1"},
    "AgentStopped": {"agent_id": "a-1", "reason": None},
    "TaskAssigned": {"task_id": "t-1", "agent_id": "a-1", "task_type": "summarise", "input": {}, "assigned_at": None,
                     "max_cost": None, "start_within_s": 60, "retry_of": "t-0"},
    "SetTenantQuota": {"max_agents": 10, "max_concurrent_tasks": None, "api_rate_per_hour": 3600, "storage_limit_bytes": None,
                       "monthly_budget_micros": 5_000_000, "task_max_cost_micros": None, "task_start_within_s": None},
    "TenantQuotaSet": {"max_agents": 10, "max_concurrent_tasks": None, "api_rate_per_hour": 3600, "storage_limit_bytes": None,
                       "monthly_budget_micros": 5_000_000, "task_max_cost_micros": None, "task_start_within_s": 45},
    "StartTask": {"task_id": "t-1", "agent_id": "a-1"},
    "TaskStarted": {"task_id": "t-1", "agent_id": "a-1", "started_at": datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)},
    "ReassignTask": {"task_id": "t-1", "agent_id": "a-2", "attempt": 2},
    "TaskReassigned": {"task_id": "t-1", "from_agent_id": "a-1", "agent_id": "a-2", "attempt": 2, "assigned_at": None},
    "PrepareTenant": {"plan": "pro"},
    "TeardownTenant": {"reason": "prepare timed out"},
    "RecordTenantPreparation": {"succeeded": False, "reason": "clickhouse unreachable"},
    "CompleteTenantOnboarding": {"saga_id": "onboarding"},
    "FailTenantOnboarding": {"reason": "prepare timed out"},
    "TenantPrepared": {"detail": {"read_models": "ok"}},
    "TenantPreparationFailed": {"reason": "clickhouse unreachable"},
    "TenantReady": {"saga_id": "onboarding"},
    "TenantOnboardingFailed": {"reason": "prepare timed out"},
    "TaskCompleted": {"task_id": "t-1", "agent_id": "a-1", "output": {"summary": "ok"}, "cost": 0.25, "duration_s": 1.5},
    "TaskFailed": {"task_id": "t-1", "agent_id": "a-1", "error": "timeout", "cost": 0.0},
    "TenantCreated": {"name": "Acme", "region": "eu-west-1", "plan": "enterprise"},
    "TenantConfigured": {"settings": {"max_agents": "10"}},
    "SecurityPolicyUpdated": {"policy_id": "p-1", "rules": {"pii": "deny"}},
    "AccessGranted": {"principal": "user:ann", "role": "viewer"},
    "AccessRevoked": {"principal": "user:ann", "role": "viewer"},
    "SaveDashboard": {"dashboard_id": "ops", "name": "Ops", "description": "", "roles": ["*"], "widgets": [_WIDGET]},
    "DeleteDashboard": {"dashboard_id": "ops"},
    "DashboardSaved": {"dashboard_id": "ops", "name": "Ops", "description": "", "roles": ["viewer"], "widgets": [_WIDGET]},
    "DashboardDeleted": {"dashboard_id": "ops"},
    "BillingEvent": {"metric": "tokens", "quantity": 1234.0, "unit": "token",
                     "period_start": datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)},
}


@pytest.fixture(scope="module")
def reg() -> SchemaRegistry:
    return default_registry()


def _write(root: Path, kind_dir: str, name: str, version: int, fields: list[dict], **extra: Any) -> Path:
    d = root / kind_dir
    d.mkdir(parents=True, exist_ok=True)
    rec = {"type": "record", "namespace": f"agentstream.{kind_dir}", "name": name, "version": version,
           "doc": "test", "fields": fields}
    rec.update(extra)
    path = d / f"{name}.v{version}.avsc"
    path.write_text(json.dumps(rec))
    return path


# ------------------------------------------------------------------ loading
def test_every_file_loads_and_matches_its_filename(reg: SchemaRegistry) -> None:
    files = sorted(SCHEMA_ROOT.rglob("*.avsc"))
    assert len(files) == sum(len(reg.versions(n)) for n in reg.names())
    for path in files:
        raw = json.loads(path.read_text())
        sv = reg.get(raw["name"], raw["version"])
        assert sv.path == path
        assert path.name == f"{sv.name}.v{sv.version}.avsc"
        assert raw["namespace"] == f"agentstream.{sv.kind}s"
        assert path.parent.name == f"{sv.kind}s"
        assert raw.get("doc")
        for f in raw["fields"]:
            assert f.get("doc"), f"{path.name}: field {f['name']} has no doc"
            if sv.name != "AppendEvents":  # the event store's append names its target stream
                assert f["name"] not in METADATA_FIELDS, f"{path.name}: metadata field {f['name']} in payload"


def test_all_commands_and_events_exist(reg: SchemaRegistry) -> None:
    assert reg.names("command") == sorted(COMMANDS)
    assert reg.names("event") == sorted(EVENTS)
    assert reg.names() == sorted(COMMANDS + EVENTS)
    assert all(reg.kind(n) == "command" for n in COMMANDS)
    assert all(reg.kind(n) == "event" for n in EVENTS)
    assert [v.version for v in reg.versions("AgentCreated")] == [1, 2]
    assert reg.get("AgentCreated").version == 2
    assert [v.version for v in reg.versions("AssignTask")] == [1, 2]
    assert [v.version for v in reg.versions("TaskAssigned")] == [1, 2]


def test_assign_task_v1_data_reads_as_v2_with_nulls(reg: SchemaRegistry) -> None:
    """Commands and events written before quotas decode with no max_cost, start_within_s or retry_of."""
    for name, v1 in (("AssignTask", {"task_id": "t-1", "agent_id": "a-1", "task_type": "x", "input": {}}),
                     ("TaskAssigned", {"task_id": "t-1", "agent_id": "a-1", "task_type": "x", "input": {}, "assigned_at": None})):
        value, headers = reg.encode(name, v1, version=1)
        _, model = reg.decode(value, headers)
        assert model.model_dump() == {**v1, "max_cost": None, "start_within_s": None, "retry_of": None}


def test_default_registry_is_cached() -> None:
    assert default_registry() is default_registry()


def test_unknown_names_and_versions(reg: SchemaRegistry) -> None:
    with pytest.raises(UnknownSchema, match="Nope"):
        reg.versions("Nope")
    with pytest.raises(UnknownSchema, match="AgentCreated.*version 9"):
        reg.get("AgentCreated", 9)
    with pytest.raises(UnknownSchema):
        reg.encode("Nope", {})


def test_model_shape(reg: SchemaRegistry) -> None:
    model = reg.model("CreateTenant")
    assert model is reg.model("CreateTenant")
    inst = model(name="Acme")
    assert (inst.region, inst.plan) == ("eu-west-1", "free")
    agent = reg.validate("CreateAgent", {"agent_id": "a", "name": "n", "agent_type": "llm"})
    assert agent.capabilities == [] and agent.config == {}  # type: ignore[attr-defined]
    assert reg.validate("StopAgent", {"agent_id": "a"}).reason is None  # type: ignore[attr-defined]
    with pytest.raises(SchemaValidationError, match="plan"):
        reg.validate("CreateTenant", {"name": "Acme", "plan": "platinum"})


# ------------------------------------------------------------------ roundtrip
@pytest.mark.parametrize("name", sorted(COMMANDS + EVENTS))
def test_encode_decode_roundtrip(reg: SchemaRegistry, name: str) -> None:
    value, headers = reg.encode(name, PAYLOADS[name])
    assert isinstance(value, bytes)
    assert value[:5] == b"\x00" + reg.schema_id(name).to_bytes(4, "big")  # Confluent wire format
    assert dict(headers) == {SCHEMA_HEADER: name.encode()}
    decoded_name, model = reg.decode(value, headers)
    assert decoded_name == name
    assert isinstance(model, reg.model(name))
    assert model.model_dump() == PAYLOADS[name]
    # mapping headers and model input work too
    assert reg.decode(value, dict(headers))[1] == model
    assert reg.encode(name, model) == (value, headers)


def test_agent_created_v1_is_read_as_v2(reg: SchemaRegistry) -> None:
    v1 = {"agent_id": "a-1", "name": "n", "agent_type": "llm", "region": "eu-west-1", "config": {"k": "v"}}
    value, headers = reg.encode("AgentCreated", v1, version=1)
    assert reg.writer_of(value, headers) == (reg.get("AgentCreated", 1), reg.schema_id("AgentCreated", 1))
    assert reg.schema_id("AgentCreated", 1) != reg.schema_id("AgentCreated", 2)
    name, event = reg.decode(value, headers)
    assert name == "AgentCreated"
    assert isinstance(event, reg.model("AgentCreated"))
    assert event.capabilities == []  # type: ignore[attr-defined]
    assert event.model_dump() == {**v1, "capabilities": []}
    # v1 does not know capabilities
    with pytest.raises(SchemaValidationError, match="capabilities"):
        reg.encode("AgentCreated", {**v1, "capabilities": ["x"]}, version=1)


# ------------------------------------------------------------------ validation
def test_missing_required_field(reg: SchemaRegistry) -> None:
    with pytest.raises(SchemaValidationError) as info:
        reg.validate("AssignTask", {"task_id": "t", "task_type": "x"})
    assert info.value.name == "AssignTask"
    assert info.value.problems == ["agent_id: field required"]
    assert "AssignTask" in str(info.value)


def test_wrong_type(reg: SchemaRegistry) -> None:
    with pytest.raises(SchemaValidationError) as info:
        reg.encode("CreateAgent", {"agent_id": "a", "name": "n", "agent_type": "llm", "region": 5})
    assert info.value.problems == ["region: expected string, got int"]
    with pytest.raises(SchemaValidationError, match="cost"):
        reg.validate("FailTask", {"task_id": "t", "error": "e", "cost": "cheap"})
    with pytest.raises(SchemaValidationError, match=r"config\.k"):
        reg.validate("ConfigureAgent", {"agent_id": "a", "config": {"k": 1}})


def test_unknown_extra_field(reg: SchemaRegistry) -> None:
    with pytest.raises(SchemaValidationError) as info:
        reg.validate("StartAgent", {"agent_id": "a", "tenant_id": "t-1"})
    assert info.value.problems == ["tenant_id: unknown field"]


def test_every_problem_is_listed(reg: SchemaRegistry) -> None:
    with pytest.raises(SchemaValidationError) as info:
        reg.validate("CreateAgent", {"name": 3, "bogus": True})
    fields = {p.split(":")[0] for p in info.value.problems}
    assert fields == {"agent_id", "name", "agent_type", "bogus"}
    with pytest.raises(SchemaValidationError):
        reg.validate("StartAgent", ["not", "a", "mapping"])  # type: ignore[arg-type]


# ------------------------------------------------------------------ decode failures
@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"", b"\x02a\x02"])
def test_decode_garbage(reg: SchemaRegistry, garbage: bytes) -> None:
    with pytest.raises(SchemaDecodeError, match="CreateAgent"):
        reg.decode(garbage, [(SCHEMA_HEADER, b"CreateAgent"), (VERSION_HEADER, b"1")])


def test_decode_trailing_bytes(reg: SchemaRegistry) -> None:
    value, headers = reg.encode("StartAgent", {"agent_id": "a"})
    with pytest.raises(SchemaDecodeError, match="trailing"):
        reg.decode(value + b"\x00junk", headers)


def test_decode_not_bytes(reg: SchemaRegistry) -> None:
    with pytest.raises(SchemaDecodeError):
        reg.decode(None, [(SCHEMA_HEADER, b"StartAgent"), (VERSION_HEADER, b"1")])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "headers",
    [
        [(SCHEMA_HEADER, b"NoSuchThing"), (VERSION_HEADER, b"1")],
        [(SCHEMA_HEADER, b"StartAgent"), (VERSION_HEADER, b"7")],
        [(SCHEMA_HEADER, b"StartAgent"), (VERSION_HEADER, b"one")],
        [(SCHEMA_HEADER, b"StartAgent")],
        [(VERSION_HEADER, b"1")],
        [(SCHEMA_HEADER, b"\xff\xfe"), (VERSION_HEADER, b"1")],
        [],
    ],
)
def test_decode_unknown_schema(reg: SchemaRegistry, headers: list[tuple[str, bytes]]) -> None:
    with pytest.raises(UnknownSchema):
        reg.decode(b"\x02a", headers)


def test_errors_share_a_base() -> None:
    for cls in (UnknownSchema, SchemaValidationError, SchemaDecodeError, SchemaLoadError):
        assert issubclass(cls, SchemaError)


# ------------------------------------------------------------------ compatibility
def test_check_real_files_is_clean(reg: SchemaRegistry) -> None:
    assert reg.check() == []


def test_check_accepts_additive_and_promotions(tmp_path: Path) -> None:
    _write(tmp_path, "events", "Thing", 1, [{"name": "a", "type": "string", "doc": "a"},
                                           {"name": "n", "type": "int", "doc": "n"}])
    _write(tmp_path, "events", "Thing", 2, [{"name": "a", "type": "string", "doc": "a"},
                                           {"name": "n", "type": "long", "doc": "n"},
                                           {"name": "b", "type": ["null", "string"], "default": None, "doc": "b"}])
    assert SchemaRegistry.load(tmp_path).check() == []


def test_check_required_field_without_default(tmp_path: Path) -> None:
    base = [{"name": "a", "type": "string", "doc": "a"}]
    _write(tmp_path, "events", "Thing", 1, base)
    _write(tmp_path, "events", "Thing", 2, base + [{"name": "b", "type": "string", "doc": "b"}])
    problems = SchemaRegistry.load(tmp_path).check()
    assert problems
    assert {(p.name, p.reader_version, p.writer_version) for p in problems} == {("Thing", 2, 1)}
    assert any("b" in p.reason and "default" in p.reason for p in problems)


def test_check_type_change_string_to_int(tmp_path: Path) -> None:
    _write(tmp_path, "commands", "DoIt", 1, [{"name": "x", "type": "string", "doc": "x"}])
    _write(tmp_path, "commands", "DoIt", 2, [{"name": "x", "type": "int", "doc": "x"}])
    _write(tmp_path, "commands", "DoIt", 3, [{"name": "x", "type": "int", "doc": "x"}])
    problems = SchemaRegistry.load(tmp_path).check()
    pairs = {(p.name, p.reader_version, p.writer_version) for p in problems}
    assert pairs == {("DoIt", 2, 1), ("DoIt", 3, 1)}
    assert any("string" in p.reason and "int" in p.reason for p in problems)
    assert "DoIt v2 cannot read v1" in str(next(p for p in problems if p.reader_version == 2))


# ------------------------------------------------------------------ load failures
def test_load_version_attribute_disagrees_with_filename(tmp_path: Path) -> None:
    path = _write(tmp_path, "events", "Thing", 1, [{"name": "a", "type": "string", "doc": "a"}])
    path.rename(path.with_name("Thing.v2.avsc"))
    with pytest.raises(SchemaLoadError, match=r"Thing\.v2\.avsc.*version"):
        SchemaRegistry.load(tmp_path)


def test_load_name_disagrees_with_filename(tmp_path: Path) -> None:
    path = _write(tmp_path, "events", "Thing", 1, [{"name": "a", "type": "string", "doc": "a"}])
    path.rename(path.with_name("Other.v1.avsc"))
    with pytest.raises(SchemaLoadError, match="name"):
        SchemaRegistry.load(tmp_path)


def test_load_bad_json_and_bad_avro(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "Broken.v1.avsc").write_text("{not json")
    with pytest.raises(SchemaLoadError, match="JSON"):
        SchemaRegistry.load(tmp_path)
    (tmp_path / "events" / "Broken.v1.avsc").unlink()
    _write(tmp_path, "events", "Thing", 1, [{"name": "a", "type": "no-such-type", "doc": "a"}])
    with pytest.raises(SchemaLoadError, match="Avro"):
        SchemaRegistry.load(tmp_path)


def test_models_are_pydantic(reg: SchemaRegistry) -> None:
    for name in reg.names():
        assert issubclass(reg.model(name), BaseModel)
        assert reg.model(name).model_config.get("extra") == "forbid"


# ------------------------------------------------------------------ upcasters (semantic versioning)
from schemas.upcasters import UPCASTERS, Upcaster, Upcasters, upcast  # noqa: E402


def test_task_completed_versions(reg: SchemaRegistry) -> None:
    assert [v.version for v in reg.versions("TaskCompleted")] == [1, 2]
    assert "duration_ms" in reg.model("TaskCompleted", 1).model_fields
    assert "duration_ms" not in reg.model("TaskCompleted").model_fields
    assert reg.model("TaskCompleted").model_fields["duration_s"].default == 0.0


def test_task_completed_v1_is_upcast_to_v2(reg: SchemaRegistry) -> None:
    v1 = {"task_id": "t-1", "agent_id": "a-1", "output": {"summary": "ok"}, "cost": 0.25, "duration_ms": 1500}
    value, headers = reg.encode("TaskCompleted", v1, version=1)
    assert reg.writer_of(value, headers)[0].version == 1
    name, event = reg.decode(value, headers)
    assert name == "TaskCompleted"
    assert isinstance(event, reg.model("TaskCompleted"))
    assert event.duration_s == 1.5  # type: ignore[attr-defined]
    assert event.model_dump() == {"task_id": "t-1", "agent_id": "a-1", "output": {"summary": "ok"}, "cost": 0.25, "duration_s": 1.5}
    # v1 written without a duration: the default 0 ms becomes 0.0 s
    value, headers = reg.encode("TaskCompleted", {"task_id": "t-2", "agent_id": "a-1"}, version=1)
    assert reg.decode(value, headers)[1].duration_s == 0.0  # type: ignore[attr-defined]


def test_plain_resolution_alone_would_lose_the_duration(reg: SchemaRegistry) -> None:
    """Why the upcaster exists: Avro resolution v1 -> v2 drops duration_ms and defaults duration_s."""
    import io

    import fastavro

    value, _ = reg.encode("TaskCompleted", {"task_id": "t", "agent_id": "a", "duration_ms": 1500}, version=1)
    resolved = fastavro.schemaless_reader(io.BytesIO(value[5:]), reg.get("TaskCompleted", 1).schema, reg.get("TaskCompleted").schema)
    assert resolved["duration_s"] == 0.0 and "duration_ms" not in resolved


def test_event_without_upcaster_uses_plain_resolution(reg: SchemaRegistry) -> None:
    assert not UPCASTERS.has("AgentCreated", 1)
    v1 = {"agent_id": "a-1", "name": "n", "agent_type": "llm", "region": "eu-west-1", "config": {}}
    value, headers = reg.encode("AgentCreated", v1, version=1)
    assert reg.decode(value, headers)[1].model_dump() == {**v1, "capabilities": []}


def test_latest_version_is_never_upcast(reg: SchemaRegistry) -> None:
    value, headers = reg.encode("TaskCompleted", {"task_id": "t", "agent_id": "a", "duration_s": 2.25})
    assert reg.decode(value, headers)[1].duration_s == 2.25  # type: ignore[attr-defined]


def test_check_still_passes_with_task_completed_v2(reg: SchemaRegistry) -> None:
    assert reg.check() == []


def test_upcast_function_and_chain() -> None:
    assert upcast("TaskCompleted", 1, {"task_id": "t", "duration_ms": 250}) == {"task_id": "t", "duration_s": 0.25}
    data = {"task_id": "t", "duration_ms": 250}
    upcast("TaskCompleted", 1, data)
    assert data == {"task_id": "t", "duration_ms": 250}  # input untouched
    assert upcast("AgentCreated", 1, {"a": 1}) == {"a": 1}  # no chain: unchanged copy
    chain = Upcasters([Upcaster("X", 1, 2, lambda d: {**d, "b": d["a"] * 2}), Upcaster("X", 2, 3, lambda d: {**d, "c": d["b"] + 1})])
    assert chain.apply("X", 1, {"a": 1}) == (3, {"a": 1, "b": 2, "c": 3})
    assert chain.apply("X", 1, {"a": 1}, to_version=2) == (2, {"a": 1, "b": 2})
    assert chain.apply("X", 2, {"b": 5}) == (3, {"b": 5, "c": 6})
    assert [u.to_version for u in chain.chain("X", 1)] == [2, 3]
    with pytest.raises(ValueError):
        chain.register(Upcaster("X", 1, 3, lambda d: d))
    with pytest.raises(ValueError):
        Upcaster("X", 2, 2, lambda d: d)


def test_upcast_chain_then_additive_resolution(tmp_path: Path) -> None:
    """v1 -(upcaster)-> v2 -(Avro resolution, additive)-> v3, all in one decode."""
    _write(tmp_path, "events", "Timed", 1, [{"name": "ms", "type": "long", "doc": "ms", "default": 0}])
    _write(tmp_path, "events", "Timed", 2, [{"name": "s", "type": "double", "doc": "s", "default": 0.0}])
    _write(tmp_path, "events", "Timed", 3, [{"name": "s", "type": "double", "doc": "s", "default": 0.0},
                                           {"name": "note", "type": "string", "doc": "n", "default": "-"}])
    reg = SchemaRegistry.load(tmp_path)
    reg.attach(MemoryIds(), "memory:")
    reg.upcasters = Upcasters([Upcaster("Timed", 1, 2, lambda d: {"s": d["ms"] / 1000})])
    assert reg.check() == []
    value, headers = reg.encode("Timed", {"ms": 3000}, version=1)
    assert reg.decode(value, headers)[1].model_dump() == {"s": 3.0, "note": "-"}
    value, headers = reg.encode("Timed", {"s": 4.0}, version=2)  # no upcaster from v2: resolution only
    assert reg.decode(value, headers)[1].model_dump() == {"s": 4.0, "note": "-"}


def test_broken_upcaster_is_a_decode_error(tmp_path: Path) -> None:
    _write(tmp_path, "events", "Timed", 1, [{"name": "ms", "type": "long", "doc": "ms", "default": 0}])
    _write(tmp_path, "events", "Timed", 2, [{"name": "s", "type": "double", "doc": "s", "default": 0.0}])
    reg = SchemaRegistry.load(tmp_path)
    reg.attach(MemoryIds(), "memory:")
    value, headers = reg.encode("Timed", {"ms": 1}, version=1)
    reg.upcasters = Upcasters([Upcaster("Timed", 1, 2, lambda d: {"s": "not a number"})])
    with pytest.raises(SchemaDecodeError, match="Timed"):
        reg.decode(value, headers)
    reg.upcasters = Upcasters([Upcaster("Timed", 1, 2, lambda d: 1 / 0)])
    with pytest.raises(SchemaDecodeError, match="upcasting failed"):
        reg.decode(value, headers)


# ------------------------------------------------------------------ wire format and the old format
@pytest.mark.parametrize("name", sorted(COMMANDS + EVENTS))
def test_old_format_records_stay_readable(reg: SchemaRegistry, name: str) -> None:
    value, headers = encode_old_format(name, PAYLOADS[name])
    assert reg.decode(value, headers) == (name, reg.validate(name, PAYLOADS[name]))
    assert reg.writer_of(value, headers) == (reg.get(name), None)


def test_old_format_v1_is_still_upcast(reg: SchemaRegistry) -> None:
    value, headers = encode_old_format("TaskCompleted", {"task_id": "t", "agent_id": "a", "duration_ms": 250}, version=1)
    assert reg.decode(value, headers)[1].duration_s == 0.25  # type: ignore[attr-defined]


def test_old_format_record_starting_with_a_zero_byte_is_not_taken_for_a_frame(reg: SchemaRegistry) -> None:
    value, headers = encode_old_format("StartAgent", {"agent_id": ""})
    assert value == b"\x00"
    assert reg.decode(value, headers)[1].agent_id == ""  # type: ignore[attr-defined]


def test_foreign_record_without_headers_is_read_by_its_id(reg: SchemaRegistry) -> None:
    value, _ = reg.encode("StartAgent", {"agent_id": "a"})
    assert reg.decode(value, [])[0] == "StartAgent"
    assert reg.decode(value, None)[0] == "StartAgent"


def test_header_that_contradicts_the_id_is_a_decode_error(reg: SchemaRegistry) -> None:
    value, _ = reg.encode("StartAgent", {"agent_id": "a"})
    with pytest.raises(SchemaDecodeError, match="StopAgent"):
        reg.decode(value, [(SCHEMA_HEADER, b"StopAgent")])


def test_unknown_id_is_an_unknown_schema(reg: SchemaRegistry) -> None:
    with pytest.raises(UnknownSchema, match="schema id 999999"):
        reg.decode(b"\x00" + (999999).to_bytes(4, "big") + b"\x02a", [])


def test_unbound_registry_refuses_to_encode_and_names_the_fix() -> None:
    reg = SchemaRegistry.load()
    with pytest.raises(SchemaNotBound, match="schemas.wire.bind"):
        reg.encode("StartAgent", {"agent_id": "a"})
    with pytest.raises(UnknownSchema, match="no schema registry is bound"):
        reg.decode(b"\x00\x00\x00\x00\x01\x02a", [])


def test_reader_resolves_a_newer_writer_it_has_no_file_for(tmp_path: Path) -> None:
    """A v2 written by a newer producer (only in the registry) is read as this reader's latest, v1."""
    _write(tmp_path, "events", "Timed", 1, [{"name": "s", "type": "double", "doc": "s", "default": 0.0}])
    newer_root = tmp_path / "newer"
    _write(newer_root, "events", "Timed", 1, [{"name": "s", "type": "double", "doc": "s", "default": 0.0}])
    _write(newer_root, "events", "Timed", 2, [{"name": "s", "type": "double", "doc": "s", "default": 0.0},
                                             {"name": "note", "type": "string", "doc": "n", "default": "-"}])
    ids = MemoryIds()
    newer, older = SchemaRegistry.load(newer_root), SchemaRegistry.load(tmp_path / "events")
    newer.attach(ids, "memory:")
    older.attach(ids, "memory:")
    value, headers = newer.encode("Timed", {"s": 2.0, "note": "new"})
    assert older.decode(value, headers)[1].model_dump() == {"s": 2.0}
    assert older.writer_of(value, headers)[0].version == 2


@pytest.mark.parametrize("prefer_null", [False, True])
def test_the_fast_forms_write_and_read_what_the_model_forms_do(prefer_null):
    """encode_record/decode_record (the hot paths, no model round trip) equal encode/decode, for
    every schema version's sample record (old versions read as the latest, upcasters included)."""
    from schemas.registry import _named_types, _namespace, _sample

    registry = default_registry()
    for name in registry.names():
        for sv in registry.versions(name):
            sample = _sample(sv.raw, _named_types(sv.raw, _namespace(sv.raw)), _namespace(sv.raw), prefer_null, set())
            value, headers = registry.encode(name, sample, sv.version)
            if sv.version == registry.latest_version(name):
                assert registry.encode_record(name, registry.validate(name, sample).model_dump()) == (value, headers), name
            fast_name, record = registry.decode_record(value, headers)
            model_name, model = registry.decode(value, headers)
            assert (fast_name, record) == (model_name, model.model_dump()), f"{name} v{sv.version}"


def test_encode_record_refuses_a_value_of_the_wrong_type():
    with pytest.raises(SchemaValidationError):
        default_registry().encode_record("AgentStarted", {"agent_id": 5})


@pytest.mark.parametrize("name", sorted(COMMANDS + EVENTS))
def test_headers_write_format_writes_the_old_format(name: str) -> None:
    """``write_format = "headers"`` (a rolling upgrade) writes the bytes and headers of the format
    before the wire format, in both encode paths, and every reader reads them."""
    reg = SchemaRegistry.load()  # not the shared one: its write format changes here
    reg.write_format = "headers"
    old = encode_old_format(name, PAYLOADS[name])
    assert reg.encode(name, PAYLOADS[name]) == old
    assert reg.encode_record(name, reg.validate(name, PAYLOADS[name]).model_dump()) == old
    assert reg.decode(*old) == (name, reg.validate(name, PAYLOADS[name]))


def test_bind_sets_the_write_format(monkeypatch: pytest.MonkeyPatch) -> None:
    from schemas.settings import Settings
    from schemas.wire import bind

    reg = SchemaRegistry.load()
    reg.attach(MemoryIds(), "memory:")
    reg.bound_eagerly = True
    settings = Settings(schema_registry_url="memory:", wire_format="headers")
    assert bind(reg, settings) == []  # already bound to that URL: no registry call
    assert reg.write_format == "headers"
    with pytest.raises(ValueError):
        Settings(wire_format="protobuf")
