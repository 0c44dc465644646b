"""What each status currently counts for, and how an event changes it (pure).

The speed layer keeps one `StatusRecord` per status `uri`. Every counter is the sum,
over the records, of what each record counts for, so an edit moves a status from its
old hashtags to its new ones and a delete takes it out of every counter.

`apply` is written so that replaying events changes nothing: a status seen again, an
edit no newer than the counted version, a refresh no newer than the counted one, and
anything after a delete are ignored. A worker that restarts from a changelog ahead of
its committed offsets therefore reprocesses those events without double counting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from fedilake.contracts import Envelope, EventKind, Metric, MetricRow, compact_json, parse_time

from .metrics import (
    AccountSnapshot,
    Fact,
    account_snapshots,
    content_facts,
    counted_status,
    engagement_facts,
    fact_rows,
    from_millis,
    millis,
)

NEVER = -1


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """One status as the counters see it.

    `version_ms` is the edited_at (else created_at) of the counted content; `engaged_ms`
    when the counted refresh was received. `retired` keeps facts the status counted for
    once and no longer does (an edit's old hashtags, everything once deleted), so that a
    rebuilt view still knows to zero those counters.
    """

    event_ms: int
    version_ms: int = NEVER
    content: tuple[Fact, ...] = ()
    engaged_ms: int = NEVER
    engagement: tuple[Fact, ...] = ()
    deleted: bool = False
    retired: tuple[Fact, ...] = ()
    accounts: tuple[AccountSnapshot, ...] = field(default=())

    @property
    def event_time(self) -> datetime:
        return from_millis(self.event_ms)

    def counted_facts(self) -> tuple[Fact, ...]:
        return () if self.deleted else self.content + self.engagement

    def rows(self) -> dict[MetricRow, int]:
        """Every counter this status adds to, with how much."""
        counted: dict[MetricRow, int] = {}
        for row, amount in fact_rows(self.counted_facts(), self.event_time):
            counted[row] = counted.get(row, 0) + amount
        return counted

    def touched_rows(self) -> Iterator[MetricRow]:
        """Counters this status counts in now or counted in before."""
        for row, _ in fact_rows(self.content + self.engagement + self.retired, self.event_time):
            yield row

    # ------------------------------------------------------------------ storage

    def to_bytes(self) -> bytes:
        return compact_json(
            [
                self.event_ms,
                self.version_ms,
                _facts_doc(self.content),
                self.engaged_ms,
                _facts_doc(self.engagement),
                self.deleted,
                _facts_doc(self.retired),
                [[a.handle, a.followers, a.observed_ms, a.created_month] for a in self.accounts],
            ]
        )

    @staticmethod
    def event_ms_of(raw: bytes) -> int:
        """The `event_ms` of a stored record, read without decoding the rest (it comes first)."""
        return int(raw[1 : raw.index(b",")])

    @classmethod
    def from_bytes(cls, raw: bytes) -> StatusRecord:
        doc = orjson.loads(raw)
        return cls(
            event_ms=doc[0],
            version_ms=doc[1],
            content=_facts(doc[2]),
            engaged_ms=doc[3],
            engagement=_facts(doc[4]),
            deleted=doc[5],
            retired=_facts(doc[6]),
            accounts=tuple(AccountSnapshot(*a) for a in doc[7]),
        )


def _facts_doc(facts: tuple[Fact, ...]) -> list[list[Any]]:
    return [[f.metric.value, f.dimension, f.amount] for f in facts]


def _facts(doc: list[list[Any]]) -> tuple[Fact, ...]:
    return tuple(Fact(Metric(m), d, a) for m, d, a in doc)


def _version_ms(status: dict[str, Any], fallback: datetime) -> int:
    for field_name in ("edited_at", "created_at"):
        value = status.get(field_name)
        if value:
            try:
                return millis(parse_time(str(value)))
            except ValueError:
                continue
    return millis(fallback)


def _newer_accounts(
    known: tuple[AccountSnapshot, ...], seen: tuple[AccountSnapshot, ...]
) -> tuple[AccountSnapshot, ...]:
    by_handle = {a.handle: a for a in known}
    for snapshot in seen:
        current = by_handle.get(snapshot.handle)
        if current is None or (snapshot.observed_ms, snapshot.followers) > (
            current.observed_ms,
            current.followers,
        ):
            by_handle[snapshot.handle] = snapshot
    return tuple(sorted(by_handle.values(), key=lambda a: a.handle))


def apply(record: StatusRecord | None, envelope: Envelope) -> StatusRecord | None:
    """The record after `envelope`, or None when the event changes nothing."""
    kind = envelope.kind
    if kind is EventKind.DELETE:
        if record is None:
            # Deleted before we saw it (or we never will): remembered, so a late copy
            # of the status cannot start counting.
            return StatusRecord(event_ms=millis(envelope.event_time()), deleted=True)
        if record.deleted:
            return None
        return replace(
            record,
            deleted=True,
            retired=_union(record.retired, record.content + record.engagement),
        )
    status = counted_status(envelope)
    if status is None or (record is not None and record.deleted):
        return None
    if record is None:
        record = StatusRecord(event_ms=millis(envelope.event_time()))
    accounts = _newer_accounts(record.accounts, account_snapshots(status, envelope.received_at))
    if kind is EventKind.REFRESH:
        stamp, counted = millis(envelope.received_at), record.engaged_ms
    else:
        stamp, counted = _version_ms(status, envelope.event_time()), record.version_ms
    if stamp <= counted:  # seen before, or older than what counts: only the accounts may be news
        return None if accounts == record.accounts else replace(record, accounts=accounts)
    if kind is EventKind.REFRESH:
        engagement = engagement_facts(status)
        retired = _union(record.retired, _dropped(record.engagement, engagement))
        return replace(
            record, engaged_ms=stamp, engagement=engagement, retired=retired, accounts=accounts
        )
    content = content_facts(status)
    retired = _union(record.retired, _dropped(record.content, content))
    return replace(record, version_ms=stamp, content=content, retired=retired, accounts=accounts)


def _dropped(old: tuple[Fact, ...], new: tuple[Fact, ...]) -> tuple[Fact, ...]:
    kept = {(f.metric, f.dimension) for f in new}
    return tuple(f for f in old if (f.metric, f.dimension) not in kept)


def _union(old: tuple[Fact, ...], more: tuple[Fact, ...]) -> tuple[Fact, ...]:
    seen = {(f.metric, f.dimension) for f in old}
    added = []
    for fact in more:
        if (fact.metric, fact.dimension) not in seen:
            seen.add((fact.metric, fact.dimension))
            added.append(Fact(fact.metric, fact.dimension, 0))
    return old + tuple(added)


def _amounts(record: StatusRecord | None) -> dict[tuple[Metric, str], int]:
    amounts: dict[tuple[Metric, str], int] = {}
    if record is not None:
        for metric, dimension, amount in record.counted_facts():
            amounts[metric, dimension] = amounts.get((metric, dimension), 0) + amount
    return amounts


def delta(old: StatusRecord | None, new: StatusRecord) -> dict[MetricRow, int]:
    """How every counter changes when `old` becomes `new`; unchanged counters are left out."""
    before, after = _amounts(old), _amounts(new)
    changes = [
        Fact(metric, dimension, amount - before.get((metric, dimension), 0))
        for (metric, dimension), amount in after.items()
        if amount != before.get((metric, dimension), 0)
    ]
    changes += [
        Fact(metric, dimension, -amount)
        for (metric, dimension), amount in before.items()
        if (metric, dimension) not in after and amount
    ]
    return dict(fact_rows(changes, new.event_time))
