"""The one settings object of agentstream, read from ``AGENTSTREAM_*`` environment variables."""

from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Repository root (the directory holding ``topology.yaml`` and ``dev/``).
REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Effective configuration of a worker, the CLI and the tests.

    Every field is read from the environment as ``AGENTSTREAM_<FIELD>`` (case-insensitive).
    Defaults describe the local stack that ``agentstream dev up`` starts: one KRaft broker and
    one redis-server on 127.0.0.1, and embedded ClickHouse (chdb) under ``data_dir``.
    """

    model_config = SettingsConfigDict(env_prefix="AGENTSTREAM_", extra="ignore")

    app_id: str = "agentstream"
    data_dir: Path = Field(default=REPO_ROOT / ".agentstream")
    topology_path: Path = Field(default=REPO_ROOT / "topology.yaml")

    # Kafka
    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    #: Short enough that a group (re)join takes seconds, not a minute.
    kafka_session_timeout_s: float = 10.0
    #: Replication factor used when the CLI creates topics (1 on the single local broker).
    kafka_replication_factor: int = 1
    #: How long a worker's open transaction may stay open before the broker aborts it. A worker
    #: that dies is fenced at once when it restarts (same transactional id); one that never comes
    #: back holds ``read_committed`` readers of its partitions back for at most this long.
    kafka_transaction_timeout_s: float = 10.0
    #: The largest record the runtime writes (the broker's default limit is about 1 MB); anything
    #: larger is dead-lettered before the batch is sent, never retried.
    kafka_max_record_bytes: int = 1_000_000

    # Schema registry (any Confluent-compatible one: Confluent, Apicurio's ccompat API, Karapace, Redpanda)
    #: Base URL of the registry's Confluent-compatible API; the local stack's Apicurio serves it
    #: under ``/apis/ccompat/v7``.
    schema_registry_url: str = "http://127.0.0.1:18081/apis/ccompat/v7"
    #: HTTP basic auth (Confluent Cloud: API key and secret); both or neither.
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    #: CA bundle that signs the registry's TLS certificate (an https URL with a private CA).
    schema_registry_ca_file: Path | None = None
    #: Seconds one registry request may take.
    schema_registry_timeout_s: float = 10.0
    #: Seconds a process waits (retrying, with a log line per try) for an unreachable registry
    #: before it gives up on binding or on resolving one schema id; 0 waits forever.
    schema_registry_wait_s: float = 120.0
    #: What writers put on the store's topics: ``confluent`` (magic byte, schema id, Avro body;
    #: any Kafka tool reads it) or ``headers``, the format before it (bare Avro body, schema name
    #: and version in headers). ``headers`` is for a rolling upgrade: writers keep the old format
    #: until every reader runs this release. Readers read both formats whatever this says.
    wire_format: Literal["confluent", "headers"] = "confluent"

    # Stores
    clickhouse_url: str = ""  # empty: embedded chdb under data_dir (filled in below)
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:16379/0")

    # Worker
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: Port of the ClickHouse sink process's query API (cubes, read-only SQL; sinks/query_server.py),
    #: bound to ``web_host``. The sink owns the embedded chdb path, so other processes query through it.
    sink_port: int = 6067
    log_level: Literal["crit", "error", "warn", "info", "debug"] = "info"
    #: This worker's name in transactional ids (``<app>-<agent>-<worker id>``): stable across
    #: restarts of one worker, different between workers. Empty: ``<hostname>-<web_port>``.
    worker_id: str = ""
    #: The most records one runtime batch takes (a batch is whatever has been fetched, up to this).
    runtime_max_batch: int = 5000
    #: Commands larger than this are rejected before they reach a handler.
    max_command_bytes: int = 256 * 1024
    #: Enforce the tenant quotas of ``topology.yaml`` in the command handler (off: no quota row
    #: is read or written; for benchmarks and platforms without limits).
    quotas_enabled: bool = True

    # Sagas (streams/saga_agent.py; the rules are streams/sagas/)
    #: Reassignments of a task nobody started before it is compensated (failed and released).
    saga_max_reassignments: int = 3
    #: First wait before a reassignment and before a compensation is sent again (doubles, up to 300 s).
    saga_backoff_s: float = 5.0
    #: Retries of a failed task (a new task ``<id>.retry<n>``), and the first wait before one.
    saga_max_retries: int = 1
    saga_retry_backoff_s: float = 10.0
    #: Start time of a task whose TaskAssigned says none.
    saga_default_start_within_s: int = 60
    #: How long each onboarding step may take before the onboarding is undone.
    saga_onboarding_step_timeout_s: int = 60
    #: An event older than this (by its time, when the saga shell first reads it) starts no saga:
    #: a shell deployed onto a long history, or replaying synthetic old events, does not chase
    #: work that is long over. 0: every start event starts a saga, however old.
    saga_start_horizon_s: int = 3600

    @model_validator(mode="after")
    def _embedded_clickhouse_by_default(self) -> "Settings":
        if not self.clickhouse_url:
            self.clickhouse_url = f"chdb://{(self.data_dir / 'chdb').resolve()}"
        if not self.worker_id:
            self.worker_id = f"{socket.gethostname()}-{self.web_port}"
        return self

    @property
    def kafka_port(self) -> int:
        """Port of the first bootstrap server (the local stack listens there)."""
        first = self.kafka_bootstrap_servers.split(",")[0]
        return int(first.rsplit(":", 1)[1])

    @property
    def schema_registry_port(self) -> int:
        """Port in the schema registry URL (the local stack's registry listens there)."""
        parts = urlsplit(self.schema_registry_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def redis_port(self) -> int:
        """Port in the Redis URL (the local stack's redis-server listens there)."""
        return urlsplit(self.redis_url.get_secret_value()).port or 6379

    def masked(self) -> dict[str, Any]:
        """The settings as plain values, with passwords and URL credentials masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = _mask_url(value.get_secret_value()) if name.endswith("_url") else "********"
            elif isinstance(value, str) and name.endswith("_url"):
                value = _mask_url(value)
            out[name] = value
        return out


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@")
    return parts._replace(netloc=netloc).geturl()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
