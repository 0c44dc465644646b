"""Status records and live counters: edits, deletes, refreshes and replays count exactly (pure)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from fedilake.contracts import AccountRow, Envelope, EventKind, Granularity, Metric, MetricRow
from processors.live import Flush, FlushPolicy, LiveCounters
from processors.statuses import StatusRecord, apply, delta

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
AUTHOR = {"acct": "alice", "url": "https://a.example/@alice", "followers_count": 10}


def _status(n: int, tags: list[str], edited: int | None = None, **counts: int) -> dict[str, Any]:
    created = T0 + timedelta(minutes=n)
    return {
        "id": str(n),
        "uri": f"https://a.example/statuses/{n}",
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "edited_at": (created + timedelta(seconds=edited)).isoformat().replace("+00:00", "Z")
        if edited
        else None,
        "tags": [{"name": t} for t in tags],
        "language": "en",
        "account": AUTHOR,
        "reblog": None,
        **counts,
    }


def _event(kind: EventKind, status: dict[str, Any], received_s: float = 0) -> Envelope:
    created = datetime.fromisoformat(status["created_at"].replace("Z", "+00:00"))
    return Envelope(
        kind=kind,
        instance="https://a.example",
        stream="public",
        event="update",
        received_at=created + timedelta(seconds=received_s),
        created_at=created,
        uri=status["uri"],
        status_id=status["id"],
        payload=json.dumps(status) if kind is not EventKind.DELETE else status["id"],
    )


def _fold(events: list[Envelope]) -> dict[str, StatusRecord]:
    records: dict[str, StatusRecord] = {}
    for event in events:
        assert event.uri
        new = apply(records.get(event.uri), event)
        if new is not None:
            records[event.uri] = new
    return records


def _hashtags(records: dict[str, StatusRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records.values():
        for row, amount in record.rows().items():
            if row.metric is Metric.HASHTAG and row.granularity is Granularity.ALL:
                counts[row.dimension] = counts.get(row.dimension, 0) + amount
    return counts


def test_a_duplicate_status_changes_nothing() -> None:
    event = _event(EventKind.STATUS, _status(1, ["rust"]))
    record = apply(None, event)
    assert record is not None
    assert apply(record, event) is None
    assert StatusRecord.from_bytes(record.to_bytes()) == record


def test_an_edit_moves_the_status_to_its_new_hashtags_and_an_old_edit_is_ignored() -> None:
    first = _event(EventKind.EDIT, _status(1, ["go"], edited=60))
    later = _event(EventKind.EDIT, _status(1, ["zig"], edited=120))
    records = _fold([_event(EventKind.STATUS, _status(1, ["rust", "go"])), later, first])
    assert _hashtags(records) == {"zig": 1}
    assert {f.dimension for f in records[first.uri or ""].retired} == {"rust", "go"}


def test_a_delete_takes_the_status_out_and_keeps_it_out() -> None:
    status = _status(1, ["rust"], favourites_count=4)
    records = _fold(
        [
            _event(EventKind.STATUS, status),
            _event(EventKind.REFRESH, status, received_s=3600),
            _event(EventKind.DELETE, status),
            _event(EventKind.STATUS, status),  # a replayed copy
            _event(EventKind.EDIT, _status(1, ["go"], edited=60)),
        ]
    )
    record = records[status["uri"]]
    assert record.deleted and record.rows() == {}
    touched = {row.metric for row in record.touched_rows()}
    assert {Metric.HASHTAG, Metric.FAVOURITES, Metric.POSTS} <= touched


def test_the_latest_refresh_replaces_the_one_before() -> None:
    status = _status(1, [])
    records = _fold(
        [
            _event(EventKind.STATUS, status),
            _event(EventKind.REFRESH, {**status, "favourites_count": 9}, received_s=7200),
            _event(EventKind.REFRESH, {**status, "favourites_count": 3}, received_s=3600),
        ]
    )
    rows = records[status["uri"]].rows()
    row = MetricRow(Metric.FAVOURITES, Granularity.ALL, "all", "alice@a.example")
    assert rows[row] == 9


def test_delta_lists_the_counters_a_status_leaves_and_joins() -> None:
    old = apply(None, _event(EventKind.STATUS, _status(1, ["rust"])))
    assert old is not None
    new = apply(old, _event(EventKind.EDIT, _status(1, ["go"], edited=5)))
    assert new is not None
    changes = delta(old, new)
    assert changes[MetricRow(Metric.HASHTAG, Granularity.HOUR, "2026112310", "rust")] == -1
    assert changes[MetricRow(Metric.HASHTAG, Granularity.HOUR, "2026112310", "go")] == 1
    assert MetricRow(Metric.LANGUAGE, Granularity.ALL, "all", "en") not in changes  # unchanged


def _random_history(rng: random.Random, statuses: int) -> list[Envelope]:
    events: list[Envelope] = []
    for n in range(statuses):
        tags = rng.sample(["a", "b", "c", "d"], rng.randint(0, 3))
        status = _status(n, tags)
        events.append(_event(EventKind.STATUS, status))
        for version in range(rng.randint(0, 2)):
            edited = _status(n, rng.sample(["a", "b", "e"], rng.randint(0, 2)), edited=version + 1)
            events.append(_event(EventKind.EDIT, edited))
        if rng.random() < 0.5:
            refreshed = {**status, "favourites_count": rng.randint(0, 9)}
            events.append(_event(EventKind.REFRESH, refreshed, received_s=3600))
        if rng.random() < 0.3:
            events.append(_event(EventKind.DELETE, status))
    return events


def _counts(flush: Flush) -> dict[MetricRow, int]:
    """The counters a flush writes, without follower counts and creation months."""
    return {
        row: value
        for row, value in flush.values().items()
        if not (row.metric.is_gauge or row.metric.is_distinct)
    }


def test_live_counters_survive_duplicates_replays_and_rebuilds() -> None:
    rng = random.Random(7)
    history = _random_history(rng, 60)
    truth = _fold(history)
    expected: dict[MetricRow, int] = {}
    for record in truth.values():
        for row, amount in record.rows().items():
            expected[row] = expected.get(row, 0) + amount

    # Duplicates anywhere, and after a "crash" a replay of the last stretch of events.
    noisy = [e for event in history for e in ([event, event] if rng.random() < 0.2 else [event])]
    crash = len(noisy) * 2 // 3
    noisy += noisy[crash - 25 : crash]
    live = LiveCounters(allowed_lateness_s=10 * 86400)
    live.rebuild(0, [])
    records: dict[str, StatusRecord] = {}
    written: dict[MetricRow, int] = {}
    for i, event in enumerate(noisy):
        assert event.uri
        old = records.get(event.uri)
        new = apply(old, event)
        if new is not None:
            records[event.uri] = new
            live.apply(0, old, new)
        if i % 17 == 0:
            cells = live.pending_cells()
            flush = live.take(0)
            assert len(flush) == cells
            written.update(_counts(flush))
    written.update(_counts(live.take(0)))
    assert {row: v for row, v in written.items() if v} == expected

    rebuilt = LiveCounters(allowed_lateness_s=10 * 86400)
    rebuilt.rebuild(0, records.values())
    after_rebuild = _counts(rebuilt.take(0))
    assert {row: v for row, v in after_rebuild.items() if v} == expected
    # A counter a status left is written as zero after a rebuild, not forgotten: the
    # crash may have lost the flush that would have removed it.
    gone = _fold(
        [_event(EventKind.STATUS, _status(1, ["rust"])), _event(EventKind.DELETE, _status(1, []))]
    )
    lone = LiveCounters(allowed_lateness_s=10 * 86400)
    lone.rebuild(0, gone.values())
    zeroed = _counts(lone.take(0))
    assert zeroed[MetricRow(Metric.HASHTAG, Granularity.HOUR, "2026112310", "rust")] == 0
    assert set(zeroed.values()) == {0}


def test_closed_windows_take_no_late_changes_but_all_time_does() -> None:
    live = LiveCounters(allowed_lateness_s=3600)
    live.rebuild(0, [])
    early = apply(None, _event(EventKind.STATUS, _status(0, ["rust"])))
    assert early is not None
    live.apply(0, None, early)
    later = apply(None, _event(EventKind.STATUS, _status(200, ["go"])))  # 3 h 20 later
    assert later is not None
    live.apply(0, None, later)
    assert MetricRow(Metric.HASHTAG, Granularity.HOUR, "2026112310", "rust") in live.take(0).counts
    assert live.forget_closed(0) > 0
    deleted = apply(early, _event(EventKind.DELETE, _status(0, ["rust"])))
    assert deleted is not None
    live.apply(0, early, deleted)
    flush = live.take(0)
    assert MetricRow(Metric.HASHTAG, Granularity.ALL, "all", "rust") in flush.counts
    assert all(
        row.granularity is not Granularity.HOUR or row.bucket != "2026112310"
        for row in flush.counts
    )
    assert live.late_changes() > 0


def test_accounts_give_a_follower_gauge_and_a_failed_write_is_given_back() -> None:
    live = LiveCounters(allowed_lateness_s=3600)
    live.rebuild(0, [])
    record = apply(None, _event(EventKind.STATUS, _status(0, [])))
    assert record is not None
    live.apply(0, None, record)
    flush = live.take(0)
    gauge = MetricRow(Metric.FOLLOWERS, Granularity.ALL, "all", "alice@a.example")
    assert flush.values()[gauge] == 10
    assert len(live.take(0)) == 0
    live.give_back(0, flush)
    assert live.take(0).accounts == flush.accounts


def test_a_window_that_closed_after_the_last_flush_is_written_again_after_a_crash() -> None:
    live = LiveCounters(allowed_lateness_s=0)
    live.rebuild(0, [])
    first = apply(None, _event(EventKind.STATUS, _status(0, ["x"])))
    assert first is not None
    live.apply(0, None, first)
    flushed = live.take(0)  # hour 10: x = 1, written
    live.forget_closed(0, flushed)
    edited = apply(first, _event(EventKind.EDIT, _status(0, ["y"], edited=5)))
    later = apply(None, _event(EventKind.STATUS, _status(130, [])))  # 12:10 closes hour 10
    assert edited is not None and later is not None
    live.apply(0, first, edited)
    live.apply(0, None, later)
    # kill -9 here: the edit was never written. The rebuild, judged at the last flush's
    # watermark, still writes hour 10 (x = 0, y = 1), then lets it close.
    rebuilt = LiveCounters(allowed_lateness_s=0)
    rebuilt.rebuild(0, [edited, later], flushed_watermark_ms=flushed.watermark_ms)
    written = rebuilt.take(0)
    hour = "2026112310"
    assert written.counts[MetricRow(Metric.HASHTAG, Granularity.HOUR, hour, "x")] == 0
    assert written.counts[MetricRow(Metric.HASHTAG, Granularity.HOUR, hour, "y")] == 1
    assert rebuilt.forget_closed(0, written) > 0  # closed once written


def test_a_follower_count_seen_again_later_is_written_again() -> None:
    live = LiveCounters(allowed_lateness_s=3600)
    live.rebuild(0, [])
    status = _status(0, [])
    record = apply(None, _event(EventKind.STATUS, status))
    assert record is not None
    live.apply(0, None, record)
    live.take(0)
    again = apply(record, _event(EventKind.REFRESH, status, received_s=600))
    assert again is not None
    live.apply(0, record, again)
    # Same count, newer observation: written, or another partition's older one would win.
    cell = live.take(0).accounts[AccountRow(Granularity.ALL, "all", "alice@a.example")]
    assert cell.observed_ms == again.accounts[0].observed_ms


def test_an_anchor_with_an_empty_class_is_an_external_link() -> None:
    from processors.metrics import external_urls

    assert external_urls({"content": '<a class="" href="https://x.example/a">x</a>'}) == {
        "https://x.example/a"
    }


def test_the_flush_policy_goes_early_within_its_budget_and_late_beyond_it() -> None:
    policy = FlushPolicy(min_interval_s=0.5, max_interval_s=2.0, budget_cells_per_s=4000)
    # (since the last flush, since the oldest change not written, rows, cells)
    assert not policy.due(0.25, 0.25, 1, lambda: 1)  # too soon, however little there is
    assert policy.due(0.5, 0.5, 1500, lambda: 1500)  # light traffic: 3,000 cells/s
    assert policy.due(0.5, 0.5, 4000, lambda: 1500)  # the counters of an account share a cell
    assert not policy.due(1.0, 1.0, 9000, lambda: 9000)  # heavy traffic: more events per cell
    assert policy.due(1.9, 1.9, 10**9, lambda: 10**9)  # never past the longest wait (half a tick)
    assert not FlushPolicy(0.5, 2.0, budget_cells_per_s=0).due(1.5, 1.5, 1, lambda: 1)
    assert not policy.due(60.0, None, 0, lambda: 0)  # nothing to write
    # Changes a failed flush gave back are old already: retried no sooner than the minimum.
    assert not policy.due(0.25, 2.5, 100, lambda: 100)
    assert policy.due(0.5, 2.75, 100, lambda: 100)


def test_a_burst_beyond_the_budget_after_a_quiet_spell_gathers_as_long_as_any_other() -> None:
    """Timed from its first change, not from the last flush: minutes of quiet do not make
    the burst's first flush come early, with a fraction of the events for its cells."""
    policy = FlushPolicy(min_interval_s=0.5, max_interval_s=2.0, budget_cells_per_s=4000)
    burst = 5000  # events/s, about a cell each
    for oldest in (0.5, 1.0, 1.5):
        cells = int(burst * oldest)
        assert not policy.due(300.0, oldest, cells, lambda c=cells: c)
    assert policy.due(300.0, 1.9, 9500, lambda: 9500)
    # A lone change after the quiet spell goes at once: it is well within the budget.
    assert policy.due(300.0, 0.01, 3, lambda: 3)


def test_a_snapshot_without_a_creation_date_keeps_the_month_another_one_gave() -> None:
    from processors.metrics import AccountSnapshot

    dated = AccountSnapshot("alice@a.example", 10, 1_000, "202402")
    undated = AccountSnapshot("alice@a.example", 12, 2_000, None)
    everything = AccountRow(Granularity.ALL, "all", "alice@a.example")
    for order in ((dated, undated), (undated, dated)):
        live = LiveCounters(allowed_lateness_s=3600)
        live.rebuild(0, [])
        for snapshot in order:
            live._see_account(live.partitions[0], snapshot)
        cell = live.take(0).accounts[everything]
        assert (cell.followers, cell.created_month) == (12, "202402")
