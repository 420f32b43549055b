"""What can go wrong with a query, and the one mapping from those errors to HTTP statuses.

Every query path (the sink's query API, the worker's dashboard view, ``QueryClient`` in any
process) raises these classes. A server answers them with ``http_status(exc)`` and a JSON
``{"error": ...}`` body (the sink's ``sinks.query_server`` does; the worker's
``streams/web_views.py`` still spells out the same statuses itself), and the HTTP client turns
a status back into the class with ``error_for_status``, so a caller sees the same error
whichever way its query travelled.

=================  ======  ==========================================================
class              status  meaning
=================  ======  ==========================================================
UnknownCube        404     no cube of that name is declared
NoArchive          404     the topology declares no events archive
QueryError         400     bad input (name, time, format, SQL ClickHouse refuses)
QueryFailed        500     ClickHouse failed on a well-formed query
QueryUnavailable   503     no way to ClickHouse from this process
=================  ======  ==========================================================
"""

from __future__ import annotations


class QueryError(ValueError):
    """Bad input: an unknown measure/dimension, a malformed time or format, SQL ClickHouse refuses."""


class UnknownCube(QueryError):
    """No cube of that name is declared."""


class NoArchive(QueryError):
    """The topology declares no events archive (no ClickHouse sink of ``events.platform``)."""


class QueryFailed(RuntimeError):
    """ClickHouse (or the query service) failed on a well-formed query."""


class QueryUnavailable(RuntimeError):
    """No query service is reachable: the sink does not answer and the chdb path is held elsewhere."""


#: The query errors a server answers, most specific first (``http_status`` takes the first match).
QUERY_ERRORS: tuple[type[Exception], ...] = (UnknownCube, NoArchive, QueryError, QueryFailed, QueryUnavailable)
_STATUS: dict[type[Exception], int] = {UnknownCube: 404, NoArchive: 404, QueryError: 400, QueryFailed: 500, QueryUnavailable: 503}


def http_status(exc: BaseException) -> int:
    """The HTTP status a server answers ``exc`` with (see the table above; 500 for anything else)."""
    for cls in QUERY_ERRORS:
        if isinstance(exc, cls):
            return _STATUS[cls]
    return 500


def error_for_status(status: int, message: str, *, service: str, archive: bool = False) -> Exception:
    """The query error a client raises when the query service at ``service`` answers ``status``.

    404 is ``NoArchive`` for an archive read (``archive``), else ``UnknownCube``; 400 is
    ``QueryError``; any other status means the service failed: ``QueryFailed`` naming it.
    """
    if status == 404:
        return NoArchive(message) if archive else UnknownCube(message)
    if status == 400:
        return QueryError(message)
    return QueryFailed(f"query service {service}: HTTP {status}: {message}")
