"""Running the scheduled exports of ``topology.yaml``: each due export's query, written to its file.

What an export is and when it is due is decided in ``schemas.exports`` (pure). This module runs
the due ones through a ``QueryClient`` (the sink passes its own ClickHouse client under its lock,
``run_due_exports``; ``agentstream export run-due`` uses whatever way the CLI finds), writes each
file atomically (``sinks.table_formats.write_table``) and records the fire time of each export
that succeeded in a small JSON state file, so a failed export is retried at the next call and a
written one is not written again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from schemas.exports import DueExport, ExportSpec, due_exports
from schemas.settings import Settings
from schemas.topology import check_exports
from sinks.query_client import QueryClient
from sinks.query_errors import QueryError, QueryFailed, UnknownCube
from sinks.table_formats import write_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """The outcome of one scheduled export run: the file and its size, or the error."""

    name: str
    at: dt.datetime
    path: Path | None
    rows: int = 0
    bytes: int = 0
    error: str | None = None


def default_state_path(settings: Settings) -> Path:
    """Where the last run of each scheduled export is recorded (the sink and the CLI share it)."""
    return settings.data_dir / "exports" / "state.json"


def _load_state(state_path: Path) -> dict[str, dt.datetime]:
    try:
        raw = json.loads(Path(state_path).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise QueryError(f"{state_path}: not a JSON export state: {exc}") from exc
    return {name: dt.datetime.fromisoformat(at) for name, at in raw.items()}


def _save_state(state_path: Path, state: Mapping[str, dt.datetime]) -> None:
    state_path = Path(state_path)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps({name: at.isoformat() for name, at in sorted(state.items())}, indent=2))
    os.replace(tmp, state_path)


def export_table(queries: QueryClient, spec: ExportSpec, at: dt.datetime) -> pa.Table:
    """The rows of one run of ``spec`` scheduled at ``at``."""
    if spec.sql is not None:
        return queries.sql_table(spec.sql)
    cube = next((c for c in queries.topology().cubes if c.name == spec.cube), None)
    if cube is None:
        raise UnknownCube(f"export '{spec.name}': no cube named {spec.cube!r}")
    time_range = spec.time_range(at)
    table, _ = queries.cube_table(
        cube.name,
        spec.measures or cube.measures,
        spec.dimensions or cube.dimensions,
        spec.granularity,
        time_range[0] if time_range else None,
        time_range[1] if time_range else None,
        spec.tenant,
        spec.filters,
    )
    return table


def run_exports(queries: QueryClient, state_path: Path, now: dt.datetime | None = None, on_result: Callable[[ExportResult], None] | None = None) -> list[ExportResult]:
    """Run the exports of ``queries.topology()`` that are due at ``now`` (default: the current time).

    Writes each file (relative paths under ``settings.data_dir``), then records its fire time in
    the JSON ``state_path``; a failed export is reported and retried at the next call. Raises
    QueryError when the exports disagree with the cubes (unknown cube, measure, duplicate name).
    """
    topology = queries.topology()
    problems = check_exports(topology.exports, topology.cubes)
    if problems:
        raise QueryError("; ".join(problems))
    now = now or dt.datetime.now(dt.timezone.utc)
    state = _load_state(state_path)
    results: list[ExportResult] = []
    due: list[DueExport] = due_exports(topology.exports, state, now)
    for item in due:
        target = Path(item.spec.target(item.at))
        if not target.is_absolute():
            target = queries.settings.data_dir / target
        try:
            table = export_table(queries, item.spec, item.at)
            size = write_table(table, target, item.spec.format)
        except (QueryError, QueryFailed, OSError) as exc:
            result = ExportResult(item.spec.name, item.at, target, error=str(exc))
            if on_result is None:
                log.warning("export %s failed: %s", item.spec.name, exc)
        else:
            result = ExportResult(item.spec.name, item.at, target, table.num_rows, size)
            state[item.spec.name] = item.at
            _save_state(state_path, state)
        results.append(result)
        if on_result:
            on_result(result)
    return results


def run_due_exports(settings: Settings, client: Client, lock: threading.Lock, state_path: Path, now: dt.datetime | None = None) -> list[ExportResult]:
    """For the sink process (on a timer): run the due scheduled exports through ``client`` under ``lock``.

    Blocking (run it with ``asyncio.to_thread``); see ``run_exports``.
    """
    return run_exports(QueryClient.local(settings, client, lock), state_path, now)
