"""The Faust application of a worker process: lifecycle, logging and the local web server.

The hot agents do not run on Faust's stream machinery: they are loops of the exactly-once
runtime (``streams.runtime``), started by a Faust service that ``streams.worker`` adds to this
app. Faust keeps what it is good at here: the worker's start and stop, signals, logging and the
web server (``/cubes/{name}``, ``/runtime``).
"""

from __future__ import annotations

import socket

import faust

from connectors.kafka_config import faust_credentials
from schemas.settings import Settings, get_settings
from schemas.topology import Topology, load_topology


def create_app(settings: Settings) -> faust.App:
    """A Faust app for ``settings``; its web server binds ``web_host`` (127.0.0.1 unless told otherwise)."""
    datadir = settings.data_dir / "workers" / str(settings.web_port)
    advertised = settings.web_host if settings.web_host not in ("0.0.0.0", "::") else socket.gethostname()
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        web_bind=settings.web_host,
        web_host=advertised,
        web_port=settings.web_port,
        web_in_thread=False,
        topic_replication_factor=settings.kafka_replication_factor,
        # Faust's own consumer still joins a group; its default 60 s session would hold a
        # restarted worker's start (and so its runtime agents) until the dead member expired.
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.kafka_session_timeout_s / 5),
        autodiscover=False,
    )


settings = get_settings()
topology: Topology = load_topology(settings.topology_path)
app = create_app(settings)
