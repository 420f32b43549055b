"""The corrections to Faust's exactly-once processing that need no broker: the commit barrier and the committable offset."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from streams.faust_fixes import CommitBarrier, _offset_after_last_acked


def test_a_commit_waits_for_events_in_progress_and_holds_new_ones_back():
    async def scenario() -> list[str]:
        barrier, order = CommitBarrier(), []
        first_inside = asyncio.Event()

        async def event(name: str, hold: float) -> None:
            async with barrier.processing():
                order.append(f"{name} start")
                first_inside.set()
                await asyncio.sleep(hold)
                order.append(f"{name} end")

        async def commit() -> None:
            await first_inside.wait()
            async with barrier.committing():
                order.append("commit")
                await asyncio.sleep(0.05)
                order.append("commit done")

        first = asyncio.create_task(event("a", 0.1))
        committer = asyncio.create_task(commit())
        await asyncio.sleep(0.02)  # the commit is now waiting for "a"
        late = asyncio.create_task(event("b", 0))
        await asyncio.gather(first, committer, late)
        return order

    assert asyncio.run(scenario()) == ["a start", "a end", "commit", "commit done", "b start", "b end"]


def test_leaving_an_event_never_suspends_so_its_ack_comes_before_any_commit():
    async def scenario() -> bool:
        barrier = CommitBarrier()
        manager = barrier.processing()
        await manager.__aenter__()
        exit_ = manager.__aexit__(None, None, None)
        try:
            exit_.send(None)
        except StopIteration:
            return True  # finished without yielding to the loop
        return False

    assert asyncio.run(scenario())


def test_events_held_when_a_rebalance_begins_are_stale_until_it_is_over():
    async def scenario() -> list[bool]:
        barrier, seen = CommitBarrier(), []
        in_progress = asyncio.Event()

        async def event(hold: float = 0) -> None:
            async with barrier.processing() as current:
                seen.append(current)
                in_progress.set()
                await asyncio.sleep(hold)

        async def commit() -> None:
            async with barrier.committing():
                await asyncio.sleep(0.05)

        first = asyncio.create_task(event(0.1))  # in progress when the rebalance begins: finishes
        await in_progress.wait()
        committer = asyncio.create_task(commit())
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(event())  # taken before the rebalance, waits for the commit
        await asyncio.sleep(0.01)
        barrier.hold()
        await asyncio.gather(first, committer, waiting)
        await event()  # taken during the rebalance
        barrier.release()
        await event()  # fetched after it
        return seen

    assert asyncio.run(scenario()) == [True, False, False, True]


def _consumer(acked: list[int]) -> SimpleNamespace:
    return SimpleNamespace(_acked=defaultdict(list, {"tp": acked}), _acked_index=defaultdict(set, {"tp": set(acked)}), _gap={"tp": object()})


def test_the_committable_offset_is_one_past_the_highest_acked_even_after_a_gap_at_the_head():
    # 100..104 were aborted records a read_committed consumer never saw
    consumer = _consumer([105, 106, 107])
    assert _offset_after_last_acked(consumer, "tp") == 108
    assert consumer._acked["tp"] == [] and consumer._acked_index["tp"] == set() and "tp" not in consumer._gap
    assert _offset_after_last_acked(consumer, "tp") is None  # nothing new acked: nothing to commit
