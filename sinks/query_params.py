"""The query API's parameters, both ways: from a query's arguments to HTTP query parameters and back.

A cube query and an archive read travel as HTTP query parameters (module docstring of
``sinks.query_server``). ``cube_params``/``archive_params`` build them (the client side);
``cube_request``/``archive_request`` check them and return the keyword arguments of
``Cube.query``/``read_archive`` (the side that runs the query), raising QueryError that names
the bad parameter, so a 400 says what is wrong before ClickHouse sees anything.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Mapping, Sequence

from schemas.topology import CubeSpec
from sinks.cube_query import CubeQueryError, build_query
from sinks.query_errors import QueryError

#: Missing ``from``/``to`` of a cube query (both day-aligned, so roll-ups still answer).
_EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc)
_CUBE_PARAMS = ("measures", "dimensions", "granularity", "from", "to", "tenant", "format")
_ARCHIVE_PARAMS = ("tenant", "stream_id", "from_version", "types", "since", "format")


def parse_time(text: str, what: str = "time") -> dt.datetime:
    """An ISO-8601 date or date-time (``Z`` accepted; without a zone: UTC) as an aware UTC datetime."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise QueryError(f"{what} {text!r} is not an ISO-8601 time (e.g. 2025-01-31T12:00:00Z)") from exc
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def _multi(params: Any) -> dict[str, list[str]]:
    """Query parameters as name -> every value given (aiohttp MultiDict or a plain mapping)."""
    out: dict[str, list[str]] = {}
    if hasattr(params, "getall"):
        return {key: list(params.getall(key)) for key in set(params.keys())}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = [value] if isinstance(value, str) else [str(v) for v in value]
    return out


def _names(values: Iterable[str]) -> list[str]:
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def cube_request(spec: CubeSpec, params: Any) -> dict[str, Any]:
    """Keyword arguments of ``Cube.query`` from query parameters (see ``sinks.query_server``).

    Raises QueryError for an unknown parameter, a malformed time or anything ``build_query``
    refuses (unknown measure/dimension/filter, bad granularity), so a 400 names the problem.
    """
    given = _multi(params)
    unknown = sorted(k for k in given if k not in _CUBE_PARAMS and not k.startswith("filter."))
    if unknown:
        raise QueryError(f"unknown parameter(s) {', '.join(unknown)} (known: {', '.join(_CUBE_PARAMS)}, filter.<dimension>)")

    def one(name: str) -> str | None:
        values = given.get(name)
        return values[-1] if values else None

    filters: dict[str, list[str]] = {}
    for key, values in given.items():
        if key.startswith("filter."):
            filters[key[len("filter.") :]] = _names(values)
    start, end = one("from"), one("to")
    time_range = None
    if start is not None or end is not None:
        time_range = (parse_time(start, "from") if start else _EARLIEST, parse_time(end, "to") if end else _LATEST)
    kwargs: dict[str, Any] = {
        "measures": _names(given.get("measures", [])),
        "dimensions": _names(given.get("dimensions", [])),
        "filters": filters,
        "time_range": time_range,
        "granularity": one("granularity") or "minute",
        "tenant": one("tenant"),
    }
    try:
        build_query(spec, **kwargs)  # validates every name and value before ClickHouse sees it
    except CubeQueryError as exc:
        raise QueryError(str(exc)) from exc
    return kwargs


def cube_params(
    measures: Sequence[str],
    dimensions: Sequence[str] = (),
    granularity: str | None = None,
    time_from: str | dt.datetime | None = None,
    time_to: str | dt.datetime | None = None,
    tenant: str | None = None,
    filters: Mapping[str, str | Sequence[str]] | None = None,
) -> dict[str, str]:
    """The query parameters of a cube query (the inverse of ``cube_request``)."""
    params: dict[str, str] = {"measures": ",".join(measures)}
    if dimensions:
        params["dimensions"] = ",".join(dimensions)
    if granularity:
        params["granularity"] = granularity
    for key, value in (("from", time_from), ("to", time_to)):
        if value is not None:
            params[key] = value.isoformat() if isinstance(value, dt.datetime) else str(value)
    if tenant is not None:
        params["tenant"] = tenant
    for dim, values in (filters or {}).items():
        values = [values] if isinstance(values, str) else list(values)
        if any("," in v for v in values):
            raise QueryError(f"filter {dim!r}: values may not contain commas")
        params[f"filter.{dim}"] = ",".join(values)
    return params


def describe_cube(spec: CubeSpec) -> dict[str, Any]:
    """The public description of a cube (what ``GET /cubes`` lists)."""
    return {"name": spec.name, "description": spec.description, "dimensions": list(spec.dimensions), "measures": list(spec.measures), "rollups": list(spec.rollups)}


def archive_params(
    tenant: str | None, stream_id: str | None, from_version: int, types: Sequence[str] | None, since: dt.datetime | None
) -> dict[str, str]:
    """The HTTP query parameters of an archive read (the inverse of ``archive_request``)."""
    params = {"tenant": tenant, "stream_id": stream_id, "from_version": str(from_version) if from_version else None}
    params["types"] = ",".join(types) if types is not None else None
    params["since"] = since.isoformat() if since is not None else None
    return {k: v for k, v in params.items() if v is not None}


def archive_request(params: Mapping[str, str]) -> dict[str, Any]:
    """``read_archive`` keyword arguments from HTTP query parameters (QueryError names a bad one)."""
    unknown = sorted(set(params) - set(_ARCHIVE_PARAMS))
    if unknown:
        raise QueryError(f"unknown parameter(s) {', '.join(unknown)} (use {', '.join(_ARCHIVE_PARAMS)})")
    kwargs: dict[str, Any] = {"tenant": params.get("tenant"), "stream_id": params.get("stream_id")}
    try:
        kwargs["from_version"] = int(params.get("from_version", "0"))
    except ValueError:
        raise QueryError(f"from_version must be a whole number, got {params['from_version']!r}") from None
    if kwargs["from_version"] < 0:
        raise QueryError("from_version must be 0 or more")
    kwargs["types"] = _names([params["types"]]) if "types" in params else None
    kwargs["since"] = parse_time(params["since"], "since") if "since" in params else None
    return kwargs
