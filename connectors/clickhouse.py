"""The one way agentstream reaches ClickHouse: a clickhouse-connect client per process.

``settings.clickhouse_url`` is either ``chdb:///abs/path`` (embedded, in-process ClickHouse,
the default) or an ``http(s)://user:pass@host:port/db`` URL of a server; both give the same
``clickhouse_connect`` client API, so the rest of the code has one code path.

chdb allows only one process to open a given path, and one process to use only one path.
Hence the client is opened once per process and cached; asking for a second, different
chdb path in the same process is an error (it would fail deep inside chdb otherwise).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from schemas.settings import Settings

_lock = threading.Lock()
_clients: dict[str, Client] = {}


class ClickHouseConfigError(RuntimeError):
    """The configured ClickHouse URL cannot be used in this process."""


def clickhouse_client(settings: Settings) -> Client:
    """The process-wide client for ``settings.clickhouse_url`` (opened on the first call).

    Every later call with the same URL returns the same client. For ``chdb://`` the data
    directory is created if missing; a second, different chdb path raises ClickHouseConfigError.
    """
    url = settings.clickhouse_url
    with _lock:
        client = _clients.get(url)
        if client is not None:
            return client
        if url.startswith("chdb:"):
            others = [u for u in _clients if u.startswith("chdb:")]
            if others:
                raise ClickHouseConfigError(
                    f"this process already uses embedded ClickHouse at {others[0]!r}; chdb allows one path per process, not also {url!r}"
                )
            path = url[len("chdb://") :]
            if path and not path.startswith(":memory:") and path != "memory":
                Path(path).mkdir(parents=True, exist_ok=True)
        client = clickhouse_connect.get_client(dsn=url)
        _clients[url] = client
        return client


def run_ddl(client: Client, statements: Iterable[str]) -> list[str]:
    """Run DDL statements in order, stopping at the first failure; return those that ran."""
    done: list[str] = []
    for statement in statements:
        client.command(statement)
        done.append(statement)
    return done
