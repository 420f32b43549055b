"""Exactly once under chaos: two workers and the sink, SIGKILLs during load and rebalances, an audit.

The scenario and the audit are in ``tests/chaos.py``. The suite runs one seed per partitioner
(commands produced with murmur2 as Java clients and aiokafka do, and with librdkafka's default
CRC32 partitioner, so a tenant's commands land on a partition that does not own it). Larger or
more runs: ``AGENTSTREAM_CHAOS_SEEDS=1,2,3 AGENTSTREAM_CHAOS_COMMANDS=6000 AGENTSTREAM_CHAOS_KILLS=8``.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos import run_chaos

pytestmark = pytest.mark.integration

SEEDS = [int(s) for s in os.environ.get("AGENTSTREAM_CHAOS_SEEDS", "").split(",") if s.strip()]
COMMANDS = int(os.environ.get("AGENTSTREAM_CHAOS_COMMANDS", "2500"))
KILLS = int(os.environ.get("AGENTSTREAM_CHAOS_KILLS", "5"))
CASES = [(seed, p) for seed in SEEDS for p in ("murmur2", "librdkafka-default")] if SEEDS else [(11, "murmur2"), (12, "librdkafka-default")]


@pytest.mark.parametrize("seed,partitioner", CASES)
def test_exactly_once_under_chaos(worker, applied, tmp_path, seed, partitioner):
    worker.stop()  # the run's own two workers are the only ones in the groups
    try:
        report = run_chaos(applied, tmp_path, seed, partitioner, commands=COMMANDS, kills=KILLS)
    finally:
        worker.start()
    summary = f"seed {seed} ({partitioner}): {report.messages} messages, kills {report.kills}, {report.accepted} accepted, {report.rejected} rejected, {report.events} events, {report.facts} facts, {report.seconds}s"
    print(summary)
    assert not report.problems, summary + "\n" + "\n".join(report.problems[:40])
