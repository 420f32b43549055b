"""The runtime's pure parts: a table partition's batch overlay and the key partitioner."""

from __future__ import annotations

import orjson
from aiokafka.partitioner import DefaultPartitioner

from streams.runtime import KeyPartitioner, PartitionTable, changelog_topic


def test_a_batch_sees_its_own_changes_and_commits_them_once_coalesced():
    table = PartitionTable("aggregates", 2, {"t/a": {"version": 1}})
    table.put("t/a", {"version": 2})
    table.put("t/a", {"version": 3})
    table.put("t/b", {"version": 1})
    table.put("t/b", None)
    assert table.get("t/a") == {"version": 3} and table.get("t/b") is None and "t/b" not in table
    assert sorted(table.changes()) == [(b"t/a", orjson.dumps({"version": 3})), (b"t/b", None)]  # one record per row
    table.commit()
    assert not table.changed and table.get("t/a") == {"version": 3} and len(table) == 1


def test_an_aborted_batch_leaves_the_committed_rows_as_they_were():
    table = PartitionTable("aggregates", 0, {"t/a": {"version": 1}})
    table.put("t/a", {"version": 2})
    table.put("t/a", None)
    table.abort()
    assert table.get("t/a") == {"version": 1} and table["t/a"] == {"version": 1} and not table.changed


def test_keys_go_where_java_clients_and_aiokafka_put_them():
    ours, theirs = KeyPartitioner(6), DefaultPartitioner()
    keys = [f"tenant-{i}".encode() for i in range(2000)]
    assert [ours(k) for k in keys] == [theirs(k, list(range(6)), list(range(6))) for k in keys]
    assert [ours(k) for k in keys] == [ours(k) for k in keys]  # cached answers are the same


def test_changelog_topics_keep_the_names_existing_clusters_have():
    assert changelog_topic("agentstream", "aggregates") == "agentstream-aggregates-changelog"
