"""The worker times its longest wait from the oldest change not yet written, across a flush
that fails and gives its counters back (pure: HBase and the records are fakes)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedilake.contracts import Metric
from fedilake.settings import HBaseSettings, KafkaSettings, ProcessorSettings
from processors import counters
from processors.counters import CounterWorker, Written
from processors.live import Flush
from processors.metrics import Fact, millis
from processors.statuses import StatusRecord


def test_changes_given_back_keep_their_age_and_wait_the_minimum_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(counters.time, "monotonic", lambda: clock[0])
    worker = CounterWorker(
        SimpleNamespace(rebalancing=False),  # type: ignore[arg-type]
        ProcessorSettings(data_dir=tmp_path, write_budget_cells_per_s=0),  # the longest wait only
        KafkaSettings(),
        HBaseSettings(),
    )
    worker.live.rebuild(0, [])
    status = StatusRecord(
        event_ms=millis(datetime(2026, 3, 1, 10, tzinfo=UTC)),
        version_ms=1,
        content=(Fact(Metric.HASHTAG, "rust", 1),),
    )
    worker.live.apply(0, None, status)
    worker._note_changes(counted=999.5)  # the batch was counted half a second ago
    outcomes: list[Any] = [ConnectionError("HBase is down"), None]
    written: list[dict[int, Flush]] = []

    def write(flushes: dict[int, Flush]) -> Written:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        written.append(flushes)
        return Written(cells=len(flushes[0]), partitions=set(flushes))

    monkeypatch.setattr(worker, "_write", write)
    monkeypatch.setattr(worker, "_close", lambda: None)

    async def tick(at: float) -> None:
        clock[0] = at
        await worker.flush_if_due()

    asyncio.run(tick(1001.0))  # 1.5 s old: gathering
    assert not written and outcomes[0] is not None
    asyncio.run(tick(1001.4))  # 1.9 s old: due, and the write fails
    assert not written and worker.live.pending() and worker._changed_since == 999.5
    asyncio.run(tick(1001.65))  # older than the longest wait, but not 0.5 s since that flush
    assert not written
    asyncio.run(tick(1001.9))
    assert [set(f[0].counts) for f in written] and not worker.live.pending()
    assert worker._changed_since is None
    asyncio.run(tick(1010.0))  # nothing pending: nothing to do
    assert len(written) == 1
