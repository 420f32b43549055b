"""Query results as JSON, CSV and Parquet: encoding for answers and files, decoding Parquet answers.

Every way a query travels yields a ``pyarrow.Table``; this module is the only place that turns
one into bytes (``encode``, ``write_table``) or back (``read_parquet``). JSON is
``{"columns": [...], "rows": [[...], ...]}`` with times in ISO-8601 and NaN as null; CSV has a
header row and nested values as JSON text; Parquet keeps the types, so it is how tables travel
between processes.

Why ``read_parquet`` copies the bytes first. Arrow's readers release part of what a read used on
Arrow's own threads, some time after the call returned: measured on pyarrow 26, right after
``pq.read_table(io.BytesIO(data))`` returns Arrow still holds the Python file in about 1 read of
4, and after ``pq.ParquetFile(pa.BufferReader(data)).read()`` it still holds ``data`` in about
2 of 5 (``use_threads=False`` on ``read_table`` leaves 1 in 15). Releasing a Python object takes
the GIL; when that happens while the interpreter is exiting, CPython ends the Arrow thread with
``pthread_exit`` inside a C++ destructor and the process aborts ("terminate called without an
active exception", status 134) after the command printed its result (apache/arrow#33975, #34314).
So Arrow is handed only memory it allocated itself (releasing it needs no GIL), and only its own
streams (``pa.BufferOutputStream``), never a Python file object.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from sinks.query_errors import QueryError

FORMATS: tuple[str, ...] = ("json", "csv", "parquet")
CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


def check_format(fmt: str) -> str:
    """``fmt`` if it is one of ``FORMATS``, else QueryError naming them."""
    if fmt not in FORMATS:
        raise QueryError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")
    return fmt


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def table_json(table: pa.Table, **extra: Any) -> dict[str, Any]:
    """``{"columns": [...], "rows": [[...], ...], **extra}``: times in ISO-8601, NaN as null."""
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    rows = [[_jsonable(col[r]) for col in columns] for r in range(table.num_rows)]
    return {"columns": table.column_names, "rows": rows, **extra}


def table_csv(table: pa.Table, header: bool = True) -> bytes:
    """The table as CSV text (UTF-8), with a header row when ``header``; arrays, maps and
    tuples as JSON text."""
    frame = table.to_pandas()
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            frame[field.name] = [json.dumps(_jsonable(v)) for v in table.column(i).to_pylist()]
    return frame.to_csv(index=False, header=header).encode()


def table_parquet(table: pa.Table) -> bytes:
    """The table as a Parquet file."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_parquet(data: bytes) -> pa.Table:
    """The table in the Parquet file ``data`` (the inverse of ``table_parquet``).

    Reads a copy of ``data`` in Arrow's own memory, so nothing Arrow keeps after the call is a
    Python object (see the module docstring: it would abort the process at exit).
    """
    copy = pa.allocate_buffer(len(data))
    pa.FixedSizeBufferWriter(copy).write(data)
    with pq.ParquetFile(pa.BufferReader(copy)) as parquet:
        return parquet.read()


def encode(table: pa.Table, fmt: str, **extra: Any) -> bytes:
    """The table as ``fmt`` (json, csv, parquet); ``extra`` keys go into the JSON object."""
    if check_format(fmt) == "json":
        return json.dumps(table_json(table, **extra), allow_nan=False).encode()
    return table_csv(table) if fmt == "csv" else table_parquet(table)


def write_table(table: pa.Table, path: Path, fmt: str, on_rows: Callable[[int], None] | None = None, chunk_rows: int = 65_536) -> int:
    """Write ``table`` to ``path`` as csv or parquet in chunks of ``chunk_rows`` (one Parquet row
    group each), calling ``on_rows(n)`` after each; atomic (temporary file, then rename). Returns bytes written."""
    if fmt not in ("csv", "parquet"):
        raise QueryError(f"cannot write format {fmt!r} to a file here (use csv or parquet)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "parquet":
            with pq.ParquetWriter(tmp, table.schema) as writer:
                for offset in range(0, table.num_rows, chunk_rows):
                    chunk = table.slice(offset, chunk_rows)
                    writer.write_table(chunk)
                    if on_rows:
                        on_rows(chunk.num_rows)
        else:
            with open(tmp, "wb") as out:
                out.write(table_csv(table.slice(0, 0)))
                for offset in range(0, table.num_rows, chunk_rows):
                    chunk = table.slice(offset, chunk_rows)
                    out.write(table_csv(chunk, header=False))
                    if on_rows:
                        on_rows(chunk.num_rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size
