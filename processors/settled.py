"""Statuses past the retention horizon, folded into per-partition totals (pure).

The speed layer keeps a `StatusRecord` per status so that an edit, a delete or a refresh
can move the counters it contributed to. Kept forever, the records would grow with every
status ever seen, and so would the time a restart or a rebalance takes to rebuild a
partition's counters from them.

So a status older than the retention is folded. Its hour and day windows are closed and
written by then: the settings hold the retention to at least a day plus the allowed
lateness. What it adds to the counters that never close (all time, account creation
months) goes into the partition's settled totals, its account snapshots into the settled
snapshots, and its record is deleted. The counters rebuilt from the settled totals and
the remaining records equal those rebuilt from every record.

A status dated before the partition's fold horizon that has no record is treated as
folded: a late copy, edit or refresh of it changes nothing live, and is left to the
nightly batch like a change to a closed window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from fedilake.contracts import Granularity, MetricRow, compact_json

from .metrics import AccountSnapshot
from .statuses import NEVER, StatusRecord

# Keys in each partition's records database and changelog. Status uris never start
# with a NUL byte, so these never meet a status.
SETTLED_PREFIX = b"\x00settled:"
TOTAL_PREFIX = SETTLED_PREFIX + b"total:"
ACCOUNT_PREFIX = SETTLED_PREFIX + b"account:"
HORIZON_KEY = SETTLED_PREFIX + b"horizon"
WATERMARK_KEY = SETTLED_PREFIX + b"written-watermark"

OPEN_ENDED = frozenset({Granularity.ALL, Granularity.MONTH})  # windows that never close


def fold_horizon(flushed_watermark_ms: int | None, retention_ms: int) -> int:
    """Statuses dated before this may be folded (NEVER before the partition's first flush).

    The watermark is that of the last flush known to be written, so every hour and day
    window of a folded status was written for the last time before it folds.
    """
    if flushed_watermark_ms is None or flushed_watermark_ms <= retention_ms:
        return NEVER
    return flushed_watermark_ms - retention_ms


@dataclass
class Settled:
    """What the folded statuses of one partition add up to."""

    horizon_ms: int = NEVER
    # The written watermark the last fold relied on: every hour and day window closed at
    # it had been written for the last time, so no owner rebuilds one from fewer records.
    written_watermark_ms: int = 0
    totals: dict[MetricRow, int] = field(default_factory=dict)
    accounts: dict[str, AccountSnapshot] = field(default_factory=dict)

    def folds(self, record: StatusRecord) -> bool:
        """Whether a status with no record but this one's date has been folded already."""
        return record.event_ms < self.horizon_ms

    def fold(self, record: StatusRecord) -> tuple[set[MetricRow], set[str]]:
        """Take `record`'s open-ended counters and accounts in; returns what changed.

        Totals a status only counted for once (an edit's old hashtags, a deleted status's
        facts) are kept at 0, so a rebuild still writes them as 0: the write that took the
        status out may have been lost with a crash.
        """
        counted = record.rows()
        rows = set()
        for row in record.touched_rows():
            if row.granularity in OPEN_ENDED and row not in rows:
                rows.add(row)
                self.totals[row] = self.totals.get(row, 0) + counted.get(row, 0)
        handles = set()
        for snapshot in record.accounts:
            merged = _newest(self.accounts.get(snapshot.handle), snapshot)
            if merged != self.accounts.get(snapshot.handle):
                self.accounts[snapshot.handle] = merged
                handles.add(snapshot.handle)
        return rows, handles

    # ------------------------------------------------------------------ storage

    def changes(self, rows: Iterable[MetricRow], handles: Iterable[str]) -> dict[bytes, bytes]:
        """The stored form of the horizon, the watermark and the given totals and accounts."""
        stored = {
            HORIZON_KEY: str(self.horizon_ms).encode(),
            WATERMARK_KEY: str(self.written_watermark_ms).encode(),
        }
        for row in rows:
            stored[TOTAL_PREFIX + row.key()] = str(self.totals[row]).encode()
        for handle in handles:
            a = self.accounts[handle]
            stored[ACCOUNT_PREFIX + handle.encode()] = compact_json(
                [a.followers, a.observed_ms, a.created_month]
            )
        return stored

    @classmethod
    def from_items(cls, items: Iterable[tuple[bytes, bytes]]) -> Settled:
        """Read back from the (key, value) pairs under `SETTLED_PREFIX`."""
        settled = cls()
        for key, value in items:
            if key == HORIZON_KEY:
                settled.horizon_ms = int(value)
            elif key == WATERMARK_KEY:
                settled.written_watermark_ms = int(value)
            elif key.startswith(TOTAL_PREFIX):
                settled.totals[MetricRow.from_key(key[len(TOTAL_PREFIX) :])] = int(value)
            elif key.startswith(ACCOUNT_PREFIX):
                handle = key[len(ACCOUNT_PREFIX) :].decode()
                followers, observed_ms, month = orjson.loads(value)
                settled.accounts[handle] = AccountSnapshot(handle, followers, observed_ms, month)
        return settled


def _newest(known: AccountSnapshot | None, seen: AccountSnapshot) -> AccountSnapshot:
    """The later observation of an account, keeping a creation month either one had."""
    if known is None:
        return seen
    newer, older = (
        (seen, known)
        if (seen.observed_ms, seen.followers) > (known.observed_ms, known.followers)
        else (known, seen)
    )
    if not newer.created_month and older.created_month:
        return AccountSnapshot(
            newer.handle, newer.followers, newer.observed_ms, older.created_month
        )
    return newer
