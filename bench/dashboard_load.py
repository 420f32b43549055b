"""Dashboard load time in headless Chromium: navigation -> every widget drawn, p50/p95 over N loads.

Embedded ClickHouse (chdb) under a temporary directory with the declared cube (``topology.yaml``,
database ``agentstream``) and the events archive; the facts are generated inside ClickHouse as in
``bench/cube_queries.py`` (100 skewed tenants, 30 days, 4 agent types, 3 regions), so the
materialized views fill the roll-ups as sink inserts would. The sink's query app
(``sinks.query_server.build_query_app``, dashboards included) is served on 127.0.0.1 from this
process, as the sink process serves it. Run:

    .venv/bin/python bench/dashboard_load.py [--facts 1000000] [--loads 50] [--tenant tenant-000]

For each default dashboard (``tasks``, ``response-times``, ``cost``), scoped to ``--tenant``
(the biggest tenant by default) with each widget's own range (24 h), ``--loads`` timed page loads
in one Chromium (fresh profile; scripts from its cache after the first load, as for a person who
comes back) after 3 untimed ones. A load's time is ``window.dashboardTimings.allDrawn``: ms from
the start of navigation until the last widget has drawn. The share spent in queries vs drawing is
summed over the widgets of all timed loads (query = fetch + JSON parse of the cube API answer,
drawing = DOM/Plotly until the widget is on screen); widgets load in parallel, so the two
shares are of widget work, and "page" is what happens before the first widget starts (HTML,
parsing plotly.min.js, 4.8 MB).

Prints a table and, last, one line of JSON. Target: p95 < 1 s at 10M facts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHUNK = 1_000_000


def serve(app) -> tuple[int, asyncio.AbstractEventLoop, object]:
    """Serve ``app`` on 127.0.0.1 (a free port) from a background event loop."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    return port, loop, runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--loads", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tenant", default="tenant-000")
    parser.add_argument("--screenshots", type=Path, default=None, help="save one screenshot per dashboard here")
    args = parser.parse_args()

    from bench.cube_queries import insert_select
    from connectors.clickhouse import clickhouse_client
    from schemas.settings import Settings
    from schemas.topology import load_topology
    from sinks.clickhouse_schema import cube_tables, ensure_schema
    from sinks.events_archive import archive_table, ensure_archive
    from sinks.query_server import build_query_app
    from tests.browser import chromium, console_errors

    tmp = Path(tempfile.mkdtemp(prefix="agentstream-bench-dash-"))
    try:
        settings = Settings(data_dir=tmp, clickhouse_url=f"chdb://{tmp / 'chdb'}", topology_path=REPO / "topology.yaml", web_host="127.0.0.1")
        client = clickhouse_client(settings)
        topology = load_topology(settings.topology_path)
        spec = next(c for c in topology.cubes if c.name == "task_cube")
        ensure_schema(client, spec)
        ensure_archive(client, archive_table(topology))
        tables = cube_tables(spec)
        import datetime as dt

        now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
        span_ms = 30 * 86_400_000
        start_ms = int(now.timestamp() * 1000) - span_ms
        began = time.perf_counter()
        for first in range(0, args.facts, CHUNK):
            client.command(insert_select(tables.facts, first, min(CHUNK, args.facts - first), args.facts, start_ms, span_ms))
        load_s = time.perf_counter() - began
        tenant_facts = int(client.command(f"SELECT count() FROM {tables.facts} WHERE tenant = '{args.tenant}'"))
        print(f"loaded {args.facts:,} facts in {load_s:.1f}s ({args.tenant}: {tenant_facts:,})", file=sys.stderr)

        port, loop, runner = serve(build_query_app(settings, client, threading.Lock()))
        results: dict[str, dict[str, float]] = {}
        all_loads: list[float] = []
        query_ms = draw_ms = page_ms = 0.0
        with chromium() as driver:
            for dashboard in topology.dashboards:
                url = f"http://127.0.0.1:{port}/dashboards/{dashboard.id}?tenant={args.tenant}"
                loads: list[float] = []
                for i in range(args.warmup + args.loads):
                    driver.get(url)
                    deadline = time.monotonic() + 30
                    timings = None
                    while time.monotonic() < deadline:
                        timings = driver.execute_script("return window.dashboardTimings && window.dashboardTimings.allDrawn !== null ? window.dashboardTimings : null")
                        if timings:
                            break
                        time.sleep(0.01)
                    if not timings:
                        raise SystemExit(f"{dashboard.id}: not every widget drew within 30 s")
                    if timings["errors"]:
                        raise SystemExit(f"{dashboard.id}: {timings['errors']} widget(s) failed: {driver.find_element('tag name', 'main').text}")
                    errors = console_errors(driver)
                    if errors:
                        raise SystemExit(f"{dashboard.id}: console errors: {errors}")
                    if i < args.warmup:
                        continue
                    loads.append(timings["allDrawn"])
                    widgets = timings["widgets"].values()
                    query_ms += sum(w["query_ms"] for w in widgets)
                    draw_ms += sum(w["draw_ms"] for w in widgets)
                    page_ms += min(w["done_ms"] - w["query_ms"] - w["draw_ms"] for w in widgets)
                if args.screenshots:
                    args.screenshots.mkdir(parents=True, exist_ok=True)
                    driver.save_screenshot(str(args.screenshots / f"{dashboard.id}.png"))
                p50, p95 = np.percentile(loads, [50, 95])
                results[dashboard.id] = {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "widgets": len(dashboard.widgets)}
                all_loads += loads
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)

        work = query_ms + draw_ms
        p50, p95 = np.percentile(all_loads, [50, 95])
        print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; facts {args.facts:,}; {args.loads} loads per dashboard")
        print(f"{'dashboard':<16}{'widgets':>8}{'p50 ms':>10}{'p95 ms':>10}")
        for name, r in results.items():
            print(f"{name:<16}{r['widgets']:>8}{r['p50_ms']:>10}{r['p95_ms']:>10}")
        print(f"{'all':<16}{'':>8}{p50:>10.1f}{p95:>10.1f}")
        print(f"widget work: {100 * query_ms / work:.0f}% queries, {100 * draw_ms / work:.0f}% drawing; page before the first widget starts: {page_ms / len(all_loads):.0f} ms mean")
        summary = {
            "bench": "dashboard_load", "facts": args.facts, "tenant": args.tenant, "tenant_facts": tenant_facts, "loads_per_dashboard": args.loads,
            "load_s": round(load_s, 1), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "dashboards": results,
            "query_share": round(query_ms / work, 3), "draw_share": round(draw_ms / work, 3), "page_before_widgets_ms": round(page_ms / len(all_loads), 1),
            "target_p95_ms": 1000,
        }
        print(json.dumps(summary))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
