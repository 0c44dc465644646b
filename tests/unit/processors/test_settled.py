"""Folding old statuses into settled totals changes no counter that is still written (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fedilake.contracts import MetricRow
from fedilake.settings import ProcessorSettings
from processors.history import speed_history
from processors.live import LiveCounters
from processors.metrics import millis
from processors.settled import NEVER, OPEN_ENDED, Settled, fold_horizon
from processors.statuses import StatusRecord, apply

START = datetime(2026, 3, 1, tzinfo=UTC)


def _records(hours: float) -> dict[str, StatusRecord]:
    records: dict[str, StatusRecord] = {}
    for envelope in speed_history(4000, seed=3, start=START, hours=hours).envelopes:
        assert envelope.uri
        new = apply(records.get(envelope.uri), envelope)
        if new is not None:
            records[envelope.uri] = new
    return records


def _open_ended(
    records: list[StatusRecord], settled: Settled | None = None
) -> dict[MetricRow, int]:
    live = LiveCounters(allowed_lateness_s=30 * 86400)
    live.rebuild(0, records, settled=settled)
    return {row: v for row, v in live.take(0).values().items() if row.granularity in OPEN_ENDED}


def test_a_rebuild_from_settled_totals_writes_what_one_from_every_record_does() -> None:
    records = _records(hours=96)
    horizon = millis(START + timedelta(hours=48))
    old = [r for r in records.values() if r.event_ms < horizon]
    kept = [r for r in records.values() if r.event_ms >= horizon]
    assert len(old) > 1000 and len(kept) > 1000
    assert any(r.deleted for r in old) and any(r.retired for r in old)

    settled = Settled(horizon_ms=horizon)
    rows, handles = set(), set()
    for record in old:
        more_rows, more_handles = settled.fold(record)
        rows |= more_rows
        handles |= more_handles
    assert rows == set(settled.totals) and handles == set(settled.accounts)
    settled.written_watermark_ms = horizon + 1
    stored = Settled.from_items(settled.changes(rows, handles).items())
    assert stored == settled

    everything = _open_ended(list(records.values()))
    assert 0 in everything.values()  # what deleted and edited statuses left is written as 0
    assert _open_ended(kept, stored) == everything


def test_a_new_owner_does_not_rewrite_a_window_that_lost_folded_statuses() -> None:
    """A worker taking a partition over has no written watermark of its own: it must not
    rebuild the day that straddles the horizon from the statuses left after the fold."""
    records = _records(hours=96)
    lateness_s, retention_ms = 7200, (86400 + 7200) * 1000
    written = millis(START + timedelta(hours=80))
    horizon = fold_horizon(written, retention_ms)
    assert (horizon - millis(START)) % 86_400_000  # mid-day: that day keeps statuses
    settled = Settled(horizon_ms=horizon, written_watermark_ms=written)
    kept = []
    for record in records.values():
        if settled.folds(record):
            settled.fold(record)
        else:
            kept.append(record)

    everything = LiveCounters(allowed_lateness_s=lateness_s)
    everything.rebuild(0, list(records.values()))
    truth = everything.take(0).values()
    new_owner = LiveCounters(allowed_lateness_s=lateness_s)
    new_owner.rebuild(0, kept, None, settled)
    rewritten = new_owner.take(0).values()
    assert rewritten
    assert {row: truth.get(row, 0) for row in rewritten} == rewritten


def test_a_status_older_than_the_horizon_without_a_record_counts_as_folded() -> None:
    settled = Settled(horizon_ms=1_000)
    assert settled.folds(StatusRecord(event_ms=999))
    assert not settled.folds(StatusRecord(event_ms=1_000))
    assert not Settled().folds(StatusRecord(event_ms=0))  # nothing folded yet


def test_nothing_folds_before_the_first_flush() -> None:
    assert fold_horizon(None, 10) == NEVER
    assert fold_horizon(5, 10) == NEVER
    assert fold_horizon(25, 10) == 15


def test_the_retention_must_outlive_a_day_window_and_its_lateness() -> None:
    with pytest.raises(ValueError, match="at least a day plus"):
        ProcessorSettings(allowed_lateness_s=3600, status_retention_s=86400)
    assert ProcessorSettings(allowed_lateness_s=3600, status_retention_s=90000)
    assert ProcessorSettings(allowed_lateness_s=1000 * 86400).status_retention_s is None


def test_an_empty_retention_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDILAKE_PROCESSOR_STATUS_RETENTION_S", "")
    assert ProcessorSettings().status_retention_s is None
    monkeypatch.setenv("FEDILAKE_PROCESSOR_STATUS_RETENTION_S", "200000")
    assert ProcessorSettings().status_retention_s == 200000


def test_a_record_tells_its_date_without_being_decoded() -> None:
    record = StatusRecord(event_ms=1_764_000_000_123, version_ms=5)
    assert StatusRecord.event_ms_of(record.to_bytes()) == record.event_ms
