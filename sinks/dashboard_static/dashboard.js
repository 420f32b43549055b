// Draws one dashboard (sinks/dashboards.py): each widget fetches its rows from the cube query API
// (GET /cubes/{cube}?...&tenant=T, JSON) and draws them with Plotly (served locally by the sink).
// A failed query or an unreachable sink shows a message in that widget only. Each widget refreshes
// itself every refresh_s seconds. window.dashboardTimings records, per widget, the time spent in
// the query and in drawing, and when every widget had drawn (performance.now(), ms since navigation).
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("dashboard-config").textContent);
  const widgets = cfg.dashboard.widgets;
  const STEP = { minute: 60, hour: 3600, day: 86400 };
  const UNIT = { m: 60, h: 3600, d: 86400 };
  const timings = { widgets: {}, drawn: 0, total: widgets.length, allDrawn: null, errors: 0 };
  window.dashboardTimings = timings;

  function rangeSeconds(text) {
    const m = /^([1-9][0-9]{0,4})([mhd])$/.exec(text || "");
    return m ? Number(m[1]) * UNIT[m[2]] : 86400;
  }

  // [from, to) of a widget: the page's absolute range if given, else a relative one ending at the
  // end of the current granularity bucket (bounds on bucket boundaries, so roll-ups answer).
  function windowOf(w) {
    if (cfg.from || cfg.to) return [cfg.from, cfg.to];
    const step = STEP[w.granularity];
    const now = Math.floor(Date.now() / 1000);
    const end = Math.ceil(now / step) * step;
    let start = end - Math.max(rangeSeconds(cfg.range || w.range), step);
    start -= start % step;
    return [new Date(start * 1000).toISOString(), new Date(end * 1000).toISOString()];
  }

  function queryUrl(w) {
    const p = new URLSearchParams();
    p.set("measures", w.measures.join(","));
    if (w.dimensions.length) p.set("dimensions", w.dimensions.join(","));
    p.set("granularity", w.granularity);
    const [from, to] = windowOf(w);
    if (from) p.set("from", from);
    if (to) p.set("to", to);
    if (cfg.tenant) p.set("tenant", cfg.tenant);
    for (const [dim, values] of Object.entries(w.filters || {})) p.set("filter." + dim, values.join(","));
    p.set("format", "json");
    return "/cubes/" + encodeURIComponent(w.cube) + "?" + p.toString();
  }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    return String(Number(v.toPrecision(6)));
  }

  function setBody(box, node) {
    const body = box.querySelector(".body");
    body.replaceChildren(node);
    return body;
  }

  function showError(box, w, message) {
    const div = document.createElement("div");
    div.className = "error";
    div.textContent = message;
    if (box.plot && window.Plotly) { Plotly.purge(box.plot); box.plot = null; }
    setBody(box, div);
    box.dataset.status = "error";
  }

  function column(body, name) {
    const i = body.columns.indexOf(name);
    return body.rows.map((r) => r[i]);
  }

  function drawMetric(box, w, body) {
    const value = body.rows.length ? body.rows[0][body.columns.indexOf(w.measures[0])] : null;
    const div = document.createElement("div");
    div.className = "metric";
    div.dataset.value = value === null ? "" : String(value);
    div.textContent = fmt(value);
    setBody(box, div);
    return Promise.resolve();
  }

  function drawTable(box, w, body) {
    const table = document.createElement("table");
    table.className = "rows";
    const head = table.createTHead().insertRow();
    for (const c of body.columns) { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); }
    const tbody = table.createTBody();
    for (const row of body.rows) {
      const tr = tbody.insertRow();
      row.forEach((v) => { const td = tr.insertCell(); td.textContent = fmt(v); if (typeof v === "number") td.dataset.value = String(v); });
    }
    if (!body.rows.length) { const tr = tbody.insertRow(); tr.insertCell().textContent = "no rows in this range"; }
    setBody(box, table);
    return Promise.resolve();
  }

  function plotDiv(box) {
    if (box.plot) return box.plot;
    const div = document.createElement("div");
    div.className = "plot";
    setBody(box, div);
    box.plot = div;
    return div;
  }

  const LAYOUT = { margin: { l: 50, r: 10, t: 10, b: 40 }, showlegend: true, legend: { orientation: "h" } };
  const CONFIG = { displaylogo: false, displayModeBar: false, responsive: true };

  function drawGauge(box, w, body) {
    const value = body.rows.length ? body.rows[0][body.columns.indexOf(w.measures[0])] : null;
    const trace = { type: "indicator", mode: "gauge+number", value: value === null ? 0 : value,
      gauge: { axis: { range: [0, w.gauge_max || 1] } }, number: { valueformat: ".4~g" } };
    box.dataset.value = value === null ? "" : String(value);
    return Plotly.react(plotDiv(box), [trace], { margin: { l: 30, r: 30, t: 20, b: 10 } }, CONFIG);
  }

  function drawChart(box, w, body) {
    const dims = w.dimensions;
    const byTime = dims.includes("time");
    const others = dims.filter((d) => d !== "time");
    const traces = [];
    for (const m of w.measures) {
      if (byTime) {
        const groups = new Map();
        body.rows.forEach((r) => {
          const key = others.map((d) => r[body.columns.indexOf(d)]).join(" / ");
          if (!groups.has(key)) groups.set(key, { x: [], y: [] });
          groups.get(key).x.push(r[body.columns.indexOf("time")]);
          groups.get(key).y.push(r[body.columns.indexOf(m)]);
        });
        for (const [key, g] of groups) {
          traces.push({ type: "scatter", mode: "lines+markers", name: key ? m + " " + key : m, x: g.x, y: g.y, meta: { measure: m, group: key } });
        }
      } else {
        const x = body.rows.map((r) => dims.map((d) => r[body.columns.indexOf(d)]).join(" / "));
        traces.push({ type: "bar", name: m, x: x, y: column(body, m), meta: { measure: m, group: "" } });
      }
    }
    return Plotly.react(plotDiv(box), traces, Object.assign({}, LAYOUT, { xaxis: { type: byTime ? "date" : "category" } }), CONFIG);
  }

  const DRAW = { metric: drawMetric, table: drawTable, gauge: drawGauge, chart: drawChart };

  async function load(w, box, first) {
    const t0 = performance.now();
    let body;
    try {
      let response;
      try {
        response = await fetch(queryUrl(w), { cache: "no-store" });
      } catch (e) {
        throw new Error("the query service is not reachable (is `agentstream sink` running?): " + e.message);
      }
      body = await response.json().catch(() => null);
      if (!response.ok) throw new Error((body && body.error) || "the query failed: HTTP " + response.status);
      if (!body || !Array.isArray(body.rows)) throw new Error("the query service answered something that is not a cube result");
    } catch (e) {
      showError(box, w, e.message);
      finish(w, box, first, t0, performance.now(), true);
      return;
    }
    const t1 = performance.now();
    try {
      if (w.type !== "gauge" && w.type !== "chart" && box.plot) { Plotly.purge(box.plot); box.plot = null; }
      await DRAW[w.type](box, w, body);
      box.dataset.status = "drawn";
      box.dataset.rollup = body.rollup || "";
    } catch (e) {
      showError(box, w, "cannot draw this widget: " + e.message);
    }
    finish(w, box, first, t0, t1, false);
  }

  function finish(w, box, first, t0, t1, failed) {
    const t2 = performance.now();
    if (first) {
      timings.widgets[w.id] = { query_ms: t1 - t0, draw_ms: t2 - t1, done_ms: t2 };
      timings.drawn += 1;
      if (failed) timings.errors += 1;
      if (timings.drawn === timings.total) timings.allDrawn = t2;
    }
    box.dataset.loads = String(Number(box.dataset.loads || 0) + 1);
    setTimeout(() => load(w, box, false), w.refresh_s * 1000);
  }

  for (const w of widgets) load(w, document.getElementById("w-" + w.id), true);
})();
