"""Raw SQL, read-only: the check that ``/sql`` and ``agentstream sql`` run nothing but one SELECT.

The text must be one SELECT (``WITH``/``UNION`` allowed; no ``FORMAT`` clause, no
``;``-separated statements). It is never run as given: ``readonly_sql`` wraps it as
``SELECT * FROM (<sql>) SETTINGS readonly=1``, so a second statement or a ``FORMAT`` clause is a
syntax error and anything that writes is refused by ClickHouse itself. The first-word check only
gives a clear error before ClickHouse sees the text.

Why the setting is in the query and not a client setting: clickhouse-connect's chdb backend
applies client settings with ``SET`` and cannot restore ``readonly`` afterwards (a read-only
session refuses ``SET readonly = 0``), which would leave the sink's own session read-only
(checked on chdb 26.9).
"""

from __future__ import annotations

import re

from sinks.query_errors import QueryError

_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*([A-Za-z]+)", re.S)


def select_sql(sql: str) -> str:
    """``sql`` as the subquery of ``SELECT * FROM (...)`` (QueryError if empty or not a SELECT)."""
    if not isinstance(sql, str):
        raise QueryError("sql must be text")
    body = sql.strip()
    while body.endswith(";"):
        body = body[:-1].rstrip()
    if not body:
        raise QueryError("sql is empty")
    first = _FIRST_WORD.match(body)
    if first and first.group(1).upper() not in ("SELECT", "WITH", "FROM"):
        raise QueryError(f"only a SELECT query may run here (read-only), not {first.group(1).upper()}")
    return f"SELECT * FROM (\n{body}\n)"


def readonly_sql(sql: str) -> str:
    """``sql`` wrapped so that ClickHouse runs it as one read-only SELECT (QueryError if empty)."""
    return f"{select_sql(sql)} SETTINGS readonly=1"
