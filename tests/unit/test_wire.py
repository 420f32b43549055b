"""``schemas.wire`` without a registry: the wait-and-retry loop, subjects and registered text."""

from __future__ import annotations

import json
import logging

import pytest

from schemas import default_registry
from schemas.errors import SchemaRegistryUnavailable, SchemaRejected, UnknownSchema
from schemas.registry import schema_text, subject_of
from schemas.settings import Settings
from schemas.wire import COMPATIBILITY_DEFAULT, RegistryIds, compatibility_levels


class _Refused(Exception):
    """What the registry client raises for an HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.http_status_code = status
        self.error_message = message


class _FlakyClient:
    """Connection refused ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def register_schema(self, subject: str, schema: object) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        return 42


def _settings(wait_s: float) -> Settings:
    return Settings(schema_registry_url="http://127.0.0.1:1/apis/ccompat/v7", schema_registry_wait_s=wait_s)


def test_an_unreachable_registry_is_waited_for_with_a_log_line_per_try(caplog: pytest.LogCaptureFixture) -> None:
    client = _FlakyClient(failures=2)
    ids = RegistryIds(_settings(30), client=client)
    with caplog.at_level(logging.WARNING, logger="agentstream.schemas"):
        assert ids.id_for(default_registry().get("StartAgent")) == 42
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and client.calls == 3
    assert "schema registry http://127.0.0.1:1/apis/ccompat/v7 unreachable while registering agentstream.commands.StartAgent v1" in lines[0]
    assert "retrying in 0.5s" in lines[0] and "retrying in 1.0s" in lines[1]


def test_the_wait_ends_with_a_typed_error() -> None:
    ids = RegistryIds(_settings(0.8), client=_FlakyClient(failures=100))
    with pytest.raises(SchemaRegistryUnavailable, match="unreachable while registering"):
        ids.id_for(default_registry().get("StartAgent"))


def test_a_refusal_is_final_and_carries_the_registry_reason() -> None:
    class Refusing:
        def register_schema(self, subject: str, schema: object) -> int:
            raise _Refused(409, "Schema being registered is incompatible with an earlier schema")

        def get_schema(self, schema_id: int) -> object:
            raise _Refused(404, "Schema not found")

    ids = RegistryIds(_settings(30), client=Refusing())
    with pytest.raises(SchemaRejected, match="incompatible with an earlier schema"):
        ids.id_for(default_registry().get("StartAgent"))
    with pytest.raises(UnknownSchema, match="schema id 7"):
        ids.schema_for(7)


def test_subjects_follow_the_record_and_one_text_is_registered() -> None:
    sv = default_registry().get("TaskCompleted", 1)
    assert subject_of(sv) == "agentstream.events.TaskCompleted"
    assert json.loads(schema_text(sv)) == sv.raw and " " not in schema_text(sv).split('"doc"')[0]


def test_levels_come_from_the_topic_that_carries_the_schema() -> None:
    levels = compatibility_levels(Settings(), default_registry())
    assert levels["AgentCreated"] == "BACKWARD_TRANSITIVE" and levels["CreateAgent"] == "BACKWARD_TRANSITIVE"
    assert set(levels) == set(default_registry().names()) and COMPATIBILITY_DEFAULT == "BACKWARD_TRANSITIVE"
