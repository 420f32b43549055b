"""Settings from AGENTSTREAM_* variables, with secrets masked (pure)."""

from __future__ import annotations

from pathlib import Path

from schemas.settings import Settings


def test_environment_overrides_and_embedded_clickhouse_default(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("AGENTSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AGENTSTREAM_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:40000,127.0.0.1:40001")
    monkeypatch.delenv("AGENTSTREAM_CLICKHOUSE_URL", raising=False)
    settings = Settings()
    assert settings.kafka_port == 40000
    assert settings.clickhouse_url == f"chdb://{tmp_path / 'chdb'}"


def test_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("AGENTSTREAM_REDIS_URL", "redis://user:hunter2@cache:6380/1")
    monkeypatch.setenv("AGENTSTREAM_CLICKHOUSE_URL", "https://default:s3cret@ch.example:8443/db")
    monkeypatch.setenv("AGENTSTREAM_KAFKA_SASL_PASSWORD", "kafka-pass")
    masked = Settings().masked()
    assert "hunter2" not in str(masked) and "s3cret" not in str(masked) and "kafka-pass" not in str(masked)
    assert masked["redis_url"] == "redis://user:********@cache:6380/1"
    assert masked["kafka_sasl_password"] == "********"
    assert Settings().redis_port == 6380
