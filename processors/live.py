"""The live counters of the partitions one worker owns: sums over status records, kept per window (pure).

Counters are a view over the `StatusRecord`s of a partition: changed by each record's
`delta`, rebuilt from the records after a restart or a rebalance. Each partition's
counters are written to HBase as absolute values in that partition's own column, so
two workers never write the same cell and a rebuilt view rewrites what a crash lost.

Hour and day windows are tumbling windows on event time. A window closes once the
partition's watermark (the latest event time of a new status) has passed its end by
`allowed_lateness`; it is then written one last time and forgotten. Changes that
arrive for a closed window are counted as late and left to the nightly batch, which
recomputes every window from the lake. All-time counters never close.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from fedilake.contracts import (
    AccountCell,
    AccountRow,
    Granularity,
    Metric,
    MetricRow,
    bucket_end,
)

from .metrics import AccountSnapshot, millis
from .settled import OPEN_ENDED, Settled
from .statuses import NEVER, StatusRecord, delta

Window = tuple[Granularity, str]


@dataclass
class Flush:
    """What one partition has to write, as absolute values: counts of content metrics (0
    removes the cell), and every value of each changed account row (an empty one removes it)."""

    counts: dict[MetricRow, int] = field(default_factory=dict)
    accounts: dict[AccountRow, AccountCell] = field(default_factory=dict)
    watermark_ms: int = 0  # every window closed at this watermark is final once this is written
    catch_up_ms: int = 0

    def __len__(self) -> int:
        return len(self.counts) + len(self.accounts)

    def values(self) -> dict[MetricRow, int]:
        """Every counter written, by metric: follower counts, and 1 for a creation month."""
        values = dict(self.counts)
        for row, cell in self.accounts.items():
            values.update(zip(row.count_rows(), cell.counts, strict=True))
            if cell.observed_ms >= 0:
                values[MetricRow(Metric.FOLLOWERS, row.granularity, row.bucket, row.handle)] = (
                    cell.followers
                )
            if cell.created_month:
                created = MetricRow(
                    Metric.ACCOUNTS_CREATED, Granularity.MONTH, cell.created_month, row.handle
                )
                values[created] = 1
        return values


@dataclass
class PartitionCounters:
    values: dict[MetricRow, int] = field(default_factory=dict)
    windows: dict[Window, set[MetricRow]] = field(default_factory=dict)
    dirty: set[MetricRow] = field(default_factory=set)
    accounts: dict[str, AccountSnapshot] = field(default_factory=dict)
    dirty_accounts: set[str] = field(default_factory=set)  # whose snapshot is not written
    watermark_ms: int = 0
    catch_up_ms: int = 0  # the watermark of the records, reached after a rebuild's first flush
    late_changes: int = 0


class LiveCounters:
    """Counters per owned partition, windows closing `allowed_lateness_s` after they end.

    A status dated more than `MAX_CLOCK_SKEW_S` past the wall clock does not move the
    watermark: one server with a wrong clock must not close every window.
    """

    MAX_CLOCK_SKEW_S = 600

    def __init__(self, allowed_lateness_s: float, clock: Callable[[], float] = time.time) -> None:
        self.allowed_lateness_ms = int(allowed_lateness_s * 1000)
        self._clock = clock
        self.partitions: dict[int, PartitionCounters] = {}
        self._window_ends: dict[Window, int | None] = {}

    # ------------------------------------------------------------------ windows

    def _end_ms(self, window: Window) -> int | None:
        if window not in self._window_ends:
            granularity, bucket = window
            if granularity in OPEN_ENDED:
                end = None
            else:
                moment = bucket_end(granularity, bucket)
                end = millis(moment) if moment else None
            self._window_ends[window] = end
        return self._window_ends[window]

    def is_closed(self, window: Window, watermark_ms: int) -> bool:
        end = self._end_ms(window)
        return end is not None and end + self.allowed_lateness_ms <= watermark_ms

    # ------------------------------------------------------------------ changes

    def apply(self, partition: int, old: StatusRecord | None, new: StatusRecord) -> None:
        view = self.partitions[partition]  # KeyError: a partition must be rebuilt before use
        if (old is None or old.version_ms == NEVER) and new.version_ms != NEVER:
            self._advance(view, new.event_ms)  # a new status (not a delete, not a refresh)
        for row, change in delta(old, new).items():
            self._add(view, row, change)
        for snapshot in new.accounts:
            self._see_account(view, snapshot)

    def _advance(self, view: PartitionCounters, event_ms: int) -> None:
        if event_ms <= (self._clock() + self.MAX_CLOCK_SKEW_S) * 1000:
            view.watermark_ms = max(view.watermark_ms, event_ms)

    def _add(self, view: PartitionCounters, row: MetricRow, change: int, late: bool = True) -> None:
        # The hot path: a few times per event, so the window lookups are inlined.
        window = (row.granularity, row.bucket)
        end = self._window_ends[window] if window in self._window_ends else self._end_ms(window)
        if end is not None and end + self.allowed_lateness_ms <= view.watermark_ms:
            if change and late:  # a rebuild skipping closed windows is not lateness
                view.late_changes += 1
            return
        view.values[row] = view.values.get(row, 0) + change
        rows = view.windows.get(window)
        if rows is None:
            rows = view.windows[window] = set()
        rows.add(row)
        view.dirty.add(row)

    def _see_account(self, view: PartitionCounters, snapshot: AccountSnapshot) -> None:
        """Keep the latest snapshot of each account, and write it.

        The creation month is kept from whichever snapshot had one: a profile seen without
        a readable creation date, before or after, must not erase it.
        """
        known = view.accounts.get(snapshot.handle)
        if known is not None:
            month = known.created_month or snapshot.created_month
            if (known.observed_ms, known.followers) >= (snapshot.observed_ms, snapshot.followers):
                if month != known.created_month:
                    view.accounts[snapshot.handle] = replace(known, created_month=month)
                    view.dirty_accounts.add(snapshot.handle)
                return
            if not snapshot.created_month and month:
                snapshot = replace(snapshot, created_month=month)
        view.accounts[snapshot.handle] = snapshot
        # Rewritten even when the count is unchanged: readers take the newest observation
        # across partitions, so an old one here could lose to another partition's.
        view.dirty_accounts.add(snapshot.handle)

    # ------------------------------------------------------------------ ownership

    def rebuild(
        self,
        partition: int,
        records: Iterable[StatusRecord],
        flushed_watermark_ms: int | None = None,
        settled: Settled | None = None,
    ) -> int:
        """The partition's counters from its records and the totals of its folded statuses;
        everything they touch is written again.

        Windows are judged closed at `flushed_watermark_ms`, the watermark of the last flush
        known to have completed (0 when unknown), or at the one the last fold relied on if
        later: a window that closed after it may have missed its last write, so it is
        rebuilt and written once more before it closes. (One closed before the fold may
        have lost folded statuses: rebuilt from the rest, it would be written too low.)
        """
        records = list(records)
        fence = settled.written_watermark_ms if settled is not None else 0
        view = PartitionCounters()  # installed when complete: a flush never sees half of it
        if settled is not None:
            for row, amount in settled.totals.items():
                self._add(view, row, amount, late=False)  # open-ended: never closed
            for snapshot in settled.accounts.values():
                self._see_account(view, snapshot)
        for record in records:
            if record.version_ms != NEVER:
                self._advance(view, record.event_ms)
        view.catch_up_ms = max(view.watermark_ms, fence)
        view.watermark_ms = max(min(view.watermark_ms, flushed_watermark_ms or 0), fence)
        for record in records:
            for row, amount in record.rows().items():
                self._add(view, row, amount, late=False)
            for row in record.touched_rows():
                self._add(view, row, 0)  # a counter the status left is written as 0
            for snapshot in record.accounts:
                self._see_account(view, snapshot)
        self.partitions[partition] = view
        return len(records)

    def drop(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    # ------------------------------------------------------------------ flushing

    def take(self, partition: int) -> Flush:
        """The partition's dirty counters, now clean; `give_back` if writing them failed."""
        view = self.partitions.get(partition)
        flush = Flush()
        if view is None:
            return flush
        flush.watermark_ms = view.watermark_ms
        flush.catch_up_ms = view.catch_up_ms  # every row of a rebuild is dirty until this flush
        accounts = {AccountRow(Granularity.ALL, "all", handle) for handle in view.dirty_accounts}
        for row in view.dirty:
            value = view.values.get(row, 0)
            if row.metric.is_about_account:
                accounts.add(AccountRow.of(row))
            else:
                flush.counts[row] = value
            if value == 0:  # written as a removed cell or field; nothing left to remember
                view.values.pop(row, None)
                view.windows.get((row.granularity, row.bucket), set()).discard(row)
        for account in accounts:
            flush.accounts[account] = self._account_cell(view, account)
        view.dirty = set()
        view.dirty_accounts = set()
        return flush

    @staticmethod
    def _account_cell(view: PartitionCounters, row: AccountRow) -> AccountCell:
        """Every value of the row, not only the changed ones: the cell is written whole."""
        counts = tuple(view.values.get(counter, 0) for counter in row.count_rows())
        snapshot = view.accounts.get(row.handle) if row.granularity is Granularity.ALL else None
        if snapshot is None:
            return AccountCell(counts)
        return AccountCell(
            counts, snapshot.observed_ms, snapshot.followers, snapshot.created_month or ""
        )

    def give_back(self, partition: int, flush: Flush) -> None:
        view = self.partitions.get(partition)
        if view is None:  # revoked meanwhile: the new owner rebuilds and writes it all
            return
        view.dirty.update(flush.counts)
        for row in flush.accounts:
            # Every counter of the row stays dirty, so its window cannot close unwritten.
            view.dirty.update(row.count_rows())
            if row.granularity is Granularity.ALL:
                view.dirty_accounts.add(row.handle)

    def forget_closed(self, partition: int, written: Flush | None = None) -> int:
        """Drop the written counters of closed windows (`written`: the flush that just
        succeeded); returns how many were dropped."""
        view = self.partitions.get(partition)
        if view is None:
            return 0
        if written is not None and written.catch_up_ms > view.watermark_ms:
            view.watermark_ms = written.catch_up_ms  # the rebuild's windows are written: move on
        dropped = 0
        for window in [w for w in view.windows if self.is_closed(w, view.watermark_ms)]:
            rows = view.windows[window]
            if rows & view.dirty:
                continue  # written once more first
            for row in rows:
                view.values.pop(row, None)
            dropped += len(rows)
            del view.windows[window]
        return dropped

    def pending(self) -> int:
        """Changed counters not written yet."""
        return sum(len(v.dirty) + len(v.dirty_accounts) for v in self.partitions.values())

    def pending_cells(self) -> int:
        """The cells the next flush would write (the counters of an account share one)."""
        cells = 0
        for view in self.partitions.values():
            accounts = {("all", handle) for handle in view.dirty_accounts}
            content = 0
            for row in view.dirty:
                if row.metric.is_about_account:
                    accounts.add((row.bucket, row.dimension))
                else:
                    content += 1
            cells += content + len(accounts)
        return cells

    def late_changes(self) -> int:
        return sum(v.late_changes for v in self.partitions.values())


@dataclass(frozen=True)
class FlushPolicy:
    """When to write: as soon as a flush keeps within the HBase write budget, never sooner
    than `min_interval_s` after the last one, and never later than `max_interval_s` after
    the oldest change it holds was counted.

    Under light traffic counters reach HBase about every `min_interval_s`; under heavy
    traffic changes gather for up to `max_interval_s`, so each cell written carries many
    events and HBase's write load stays near the budget whatever the event rate. Timed
    from the oldest change, not from the last flush, a burst after a quiet spell gathers
    for as long as any other (timed from the last flush, its first flush came at whatever
    point of the interval the burst began, with a fraction of the events for its cells).
    """

    min_interval_s: float
    max_interval_s: float
    budget_cells_per_s: float  # 0: flush max_interval_s after the oldest change
    tick_s: float = 0.25  # how often the worker asks

    def due(
        self,
        since_flush_s: float,
        oldest_change_s: float | None,
        pending_rows: int,
        pending_cells: Callable[[], int],
    ) -> bool:
        """`oldest_change_s`: how long ago the oldest change not yet written was counted
        (None: there is none). `pending_rows` bounds `pending_cells` from above, and costs
        nothing to count."""
        if oldest_change_s is None or since_flush_s < self.min_interval_s:
            return False  # changes given back by a failed flush wait too, not every tick
        if oldest_change_s + self.tick_s / 2 >= self.max_interval_s:
            return True
        if not self.budget_cells_per_s:
            return False
        allowed = self.budget_cells_per_s * oldest_change_s
        return pending_rows <= allowed or pending_cells() <= allowed
