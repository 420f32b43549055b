"""Encode/decode cost of the Confluent wire format against the format before it, same run.

Pure CPU, no services: ids come from ``schemas.wire.MemoryIds`` (after ``bind`` the hot path only
ever reads the id cache, so a live registry would not change what is timed). Run:

    .venv/bin/python bench/wire_format.py [--records 20000] [--rounds 7]

For the records of the command path (a ``ConfigureAgent`` command in, an ``AgentConfigured``
event out, as in bench/command_throughput.py) and a ``TaskCompleted`` event:

1. before: the encode of the previous release (validate, fastavro schemaless body, schema name
   and version headers), reproduced here line for line, and ``SchemaRegistry.decode`` of those
   records (the old format's path, kept for old events);
2. after: ``SchemaRegistry.encode``/``decode`` in the wire format (5-byte prefix from the id
   cache, one header).

The machine is shared, so each trial times ``--chunk`` records before and the same records after,
back to back in alternating order, in CPU time of this process (``time.process_time``: time spent
waiting for a core is not counted); a ratio is the median of the trials' after/before ratios and
a rate the median trial's. Prints one line of JSON; the numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastavro  # noqa: E402

from schemas import default_registry  # noqa: E402
from schemas.registry import SCHEMA_HEADER, VERSION_HEADER, SchemaRegistry  # noqa: E402
from schemas.wire import MemoryIds  # noqa: E402

PAYLOADS = {
    "ConfigureAgent": lambda i: {"agent_id": "bot", "config": {"step": str(i), "model": "small"}},
    "AgentConfigured": lambda i: {"agent_id": "bot", "config": {"step": str(i), "model": "small"}},
    "TaskCompleted": lambda i: {"task_id": f"t-{i}", "agent_id": "bot", "output": {"summary": "ok"}, "cost": 0.25, "duration_s": 1.5},
}


def encode_before(registry: SchemaRegistry, name: str, data: dict) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The previous release's ``SchemaRegistry.encode``: schemaless body, name and version headers."""
    sv = registry.get(name, None)
    instance = registry.validate(name, data, sv.version)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, sv.schema, instance.model_dump())
    headers = [(SCHEMA_HEADER, sv.name.encode()), (VERSION_HEADER, str(sv.version).encode())]
    return buf.getvalue(), headers


def _cpu_seconds(fn) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _paired(chunk: int, trials: int, before, after) -> tuple[float, float, float]:
    """(median before rate, median after rate, median of the per-trial after/before rate ratios)."""
    b_times, a_times, ratios = [], [], []
    for trial in range(trials):
        if trial % 2:
            a, b = _cpu_seconds(after), _cpu_seconds(before)
        else:
            b, a = _cpu_seconds(before), _cpu_seconds(after)
        b_times.append(b)
        a_times.append(a)
        ratios.append(b / a)
    return chunk / _median(b_times), chunk / _median(a_times), _median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=int, default=2_000, help="records per timed trial")
    parser.add_argument("--trials", type=int, default=101)
    args = parser.parse_args()
    registry = default_registry()
    registry.attach(MemoryIds(), "memory:")
    result: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}", "chunk": args.chunk, "trials": args.trials}
    for name, make in PAYLOADS.items():
        data = [make(i) for i in range(args.chunk)]
        old = [encode_before(registry, name, d) for d in data]
        new = [registry.encode(name, d) for d in data]
        assert [registry.decode(v, h) for v, h in old[:100]] == [registry.decode(v, h) for v, h in new[:100]]
        enc_b, enc_a, enc_r = _paired(len(data), args.trials, lambda: [encode_before(registry, name, d) for d in data], lambda: [registry.encode(name, d) for d in data])
        dec_b, dec_a, dec_r = _paired(len(data), args.trials, lambda: [registry.decode(v, h) for v, h in old], lambda: [registry.decode(v, h) for v, h in new])
        result[name] = {
            "encode_before": round(enc_b), "encode_after": round(enc_a), "encode_ratio": round(enc_r, 3),
            "decode_before": round(dec_b), "decode_after": round(dec_a), "decode_ratio": round(dec_r, 3),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
