"""The worker folds old statuses in steps across calls; what is stored after every step
adds up to what every record would (pure: the records are an in-memory fake)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedilake.settings import HBaseSettings, KafkaSettings, ProcessorSettings
from processors import counters
from processors.counters import CounterWorker
from processors.metrics import millis
from processors.settled import SETTLED_PREFIX, Settled
from processors.statuses import StatusRecord

from .test_settled import START, _open_ended, _records


class FakeRecords:
    """One partition's records as `RecordTable` keeps them, without Kafka or RocksDB."""

    def __init__(self, records: dict[str, StatusRecord], flushed_ms: int) -> None:
        self.stored = {uri.encode(): r.to_bytes() for uri, r in records.items()}
        self.flushed_ms = flushed_ms
        self.steps: list[dict[bytes, bytes | None]] = []

    def is_open(self, partition: int) -> bool:
        return partition == 0

    def flushed_watermark(self, partition: int) -> int | None:
        return self.flushed_ms

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.stored.get(key)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        return iter([(k, v) for k, v in self.stored.items() if not k.startswith(b"\x00")])

    def items_under(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter([(k, v) for k, v in self.stored.items() if k.startswith(prefix)])

    async def write_now(self, partition: int, changes: dict[bytes, bytes | None]) -> None:
        self.steps.append(changes)
        for key, value in changes.items():
            if value is None:
                del self.stored[key]
            else:
                self.stored[key] = value


def test_a_fold_goes_on_over_calls_and_every_step_adds_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(counters, "FOLD_STEP_BYTES", 16 * 1024)
    monkeypatch.setattr(counters, "FOLD_STEPS_PER_CALL", 2)
    records = _records(hours=96)
    settings = ProcessorSettings(
        allowed_lateness_s=7200, status_retention_s=(86400 + 7200), data_dir=tmp_path
    )
    app: Any = SimpleNamespace(rebalancing=False)
    worker = CounterWorker(app, settings, KafkaSettings(), HBaseSettings())
    written = millis(START + timedelta(hours=80))
    fake = FakeRecords(records, written)
    worker.records = fake  # type: ignore[assignment]
    worker.settled[0] = Settled()
    truth = _open_ended(list(records.values()))

    def check_stored() -> None:
        stored = Settled.from_items(fake.items_under(0, SETTLED_PREFIX))
        assert stored == worker.settled[0]  # memory never ahead of what was written
        left = [StatusRecord.from_bytes(v) for _, v in fake.items(0)]
        assert _open_ended(left, stored) == truth

    app.rebalancing = True
    asyncio.run(worker.fold_old_statuses())
    assert not fake.steps  # nothing starts during a rebalance

    app.rebalancing = False
    calls = 0
    while not calls or 0 in worker._folding:
        asyncio.run(worker.fold_old_statuses())
        calls += 1
        check_stored()
        assert calls < 100
    horizon = worker.settled[0].horizon_ms
    old = [r for r in records.values() if r.event_ms < horizon]
    assert calls >= 4 and len(fake.steps) >= 2 * (calls - 1)
    assert worker.stats.folded == len(old)
    assert all(StatusRecord.event_ms_of(v) >= horizon for _, v in fake.items(0))
    assert worker.settled[0].written_watermark_ms == written

    asyncio.run(worker.fold_old_statuses())  # the horizon has not moved: nothing to do
    assert worker.stats.folded == len(old)
