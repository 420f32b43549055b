"""Where the sink starts a partition when ClickHouse and the committed offsets disagree (pure)."""

from __future__ import annotations

from sinks.sink_consumer import rewind_to


def test_sink_rewinds_only_when_clickhouse_holds_less_than_the_commit():
    assert rewind_to(None, None) is None  # no commit: the consumer starts at the beginning anyway
    assert rewind_to(100, 99) is None  # ClickHouse holds everything below the commit
    assert rewind_to(100, 150) is None  # ahead after a crash: the sink re-sends batches itself
    assert rewind_to(100, 97) == 98  # markers or skipped records, or a lost batch: re-read them
    assert rewind_to(100, None) == 0  # a new or emptied table: from the beginning
