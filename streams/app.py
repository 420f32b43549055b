"""The Faust application, built from the settings: exactly once, RocksDB tables, local web."""

from __future__ import annotations

import socket

import faust

from connectors.kafka_config import faust_credentials
from streams import faust_fixes
from schemas.settings import Settings, get_settings
from schemas.topology import Topology, load_topology


def create_app(settings: Settings) -> faust.App:
    """A Faust app for ``settings``.

    Command handling runs with ``processing_guarantee="exactly_once"``: produced records, table
    changelogs and consumer offsets commit in one Kafka transaction. Tables live in RocksDB under
    ``data_dir/workers/<web_port>`` (one directory per worker process). The web server binds
    ``web_host`` (127.0.0.1 unless told otherwise).
    """
    datadir = settings.data_dir / "workers" / str(settings.web_port)
    advertised = settings.web_host if settings.web_host not in ("0.0.0.0", "::") else socket.gethostname()
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),
        processing_guarantee="exactly_once",
        store="rocksdb://",
        datadir=str(datadir),
        web_bind=settings.web_host,
        web_host=advertised,
        web_port=settings.web_port,
        web_in_thread=False,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.kafka_session_timeout_s / 5),
        topic_replication_factor=settings.kafka_replication_factor,
        table_cleanup_interval=30.0,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
    )
    faust_fixes.apply(app)
    return app


settings = get_settings()
topology: Topology = load_topology(settings.topology_path)
app = create_app(settings)

#: Which tables each agent updates (Faust cannot tell); ``topology validate`` compares it with the file.
agent_tables: dict[str, list[str]] = {}
