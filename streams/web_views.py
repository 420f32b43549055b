"""The worker's web server: the cube API as JSON for dashboards (``/cubes/{name}?...``).

Same parameters and answers as the sink's query API (``sinks.query_server``). The worker does not
open embedded ClickHouse itself (the sink process owns it): ``QueryClient`` forwards to the sink,
or queries a ClickHouse server directly when one is configured.
"""

from __future__ import annotations

import asyncio

from faust.web import Request, Response, View

from sinks.query_client import QueryClient
from sinks.query_errors import QueryError, QueryFailed, QueryUnavailable, http_status
from sinks.table_formats import table_json
from streams.app import app, settings

queries = QueryClient(settings, open_embedded=False)


@app.page("/cubes/{name}")
class CubeView(View):
    """``GET /cubes/{name}?measures=...&dimensions=...&tenant=...``: rows as JSON."""

    async def get(self, request: Request, name: str) -> Response:
        try:
            table, rollup = await asyncio.to_thread(queries.cube_from_params, name, dict(request.query))
        except (QueryError, QueryFailed, QueryUnavailable) as exc:
            return self.json({"error": str(exc)}, status=http_status(exc))
        return self.json(table_json(table, rollup=rollup))
