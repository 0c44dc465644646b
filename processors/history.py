"""A seeded history of events for the speed layer, and the counters it must end with.

`speed_history` draws statuses, boosts, edits, deletes, engagement refreshes and
duplicated messages from the simulator's generator, as the streamer would publish
them, and keeps the generator's own `GroundTruth` of hashtags beside them.
`expected_counters` recounts a history the batch way: the final version of every
status that was not deleted, its latest refresh, the latest snapshot of every
account. The e2e tests, the scenario and the benchmark compare HBase with both.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fedilake.contracts import Envelope, EventKind, Granularity, Metric, MetricRow, parse_time
from streamer.generator import GroundTruth, StatusGenerator, engagement_counts

from .metrics import (
    account_snapshots,
    content_facts,
    counted_status,
    engagement_facts,
    fact_rows,
    millis,
    snapshot_rows,
)

INSTANCE = "https://sim.fedilake.example"
_EVENT_NAMES = {
    EventKind.STATUS: "update",
    EventKind.EDIT: "status.update",
    EventKind.DELETE: "delete",
    EventKind.REFRESH: "refresh",
}


@dataclass
class History:
    envelopes: list[Envelope] = field(default_factory=list)
    truth: GroundTruth = field(default_factory=GroundTruth)
    kinds: dict[str, int] = field(default_factory=dict)

    def add(self, envelope: Envelope, kind: str | None = None) -> None:
        self.envelopes.append(envelope)
        name = kind or envelope.kind.value
        self.kinds[name] = self.kinds.get(name, 0) + 1


def _envelope(kind: EventKind, status: dict[str, Any], received: datetime) -> Envelope:
    payload = status["id"] if kind is EventKind.DELETE else json.dumps(status, ensure_ascii=False)
    return Envelope(
        kind=kind,
        instance=INSTANCE,
        stream="public",
        event=_EVENT_NAMES[kind],
        received_at=received,
        created_at=None if kind is EventKind.DELETE else parse_time(status["created_at"]),
        uri=status["uri"],
        status_id=status["id"],
        payload=payload,
    )


def speed_history(
    events: int,
    *,
    seed: int = 7,
    start: datetime,
    hours: float = 4.0,
    edit_share: float = 0.05,
    delete_share: float = 0.03,
    refresh_share: float = 0.25,
    reblog_share: float = 0.05,
    duplicate_share: float = 0.03,
) -> History:
    """About `events` envelopes whose statuses span `hours` of event time from `start`."""
    rng = random.Random(f"{seed}:history")
    statuses = max(
        1, int(events * (1 - edit_share - delete_share - refresh_share - duplicate_share))
    )
    generator = StatusGenerator(
        seed, start=start, spread_num=hours * 3600, spread_den=float(statuses)
    )
    history = History()
    live: dict[str, dict[str, Any]] = {}  # uri -> the version counted now
    live_uris: list[str] = []
    while len(history.envelopes) < events:
        roll = rng.random()
        now = generator.event_time(generator.emitted) + timedelta(seconds=1)
        if roll < duplicate_share and history.envelopes:
            history.add(rng.choice(history.envelopes), "duplicate")
            continue
        roll -= duplicate_share
        target = _pick_live(rng, live, live_uris)
        if target is not None and roll < edit_share:
            edited = generator.edit_of(live[target], rng, at=now)
            history.truth.revise(live[target], edited)
            live[target] = edited
            history.add(_envelope(EventKind.EDIT, edited, now))
            continue
        roll -= edit_share
        if target is not None and roll < delete_share:
            gone = live.pop(target)
            history.truth.forget(gone)
            history.add(_envelope(EventKind.DELETE, gone, now))
            continue
        roll -= delete_share
        if target is not None and roll < refresh_share:
            created = parse_time(live[target]["created_at"])
            age = (now - created).total_seconds() + rng.uniform(0, 3600)
            refreshed = {**live[target], **engagement_counts(seed, target, age)}
            history.add(_envelope(EventKind.REFRESH, refreshed, created + timedelta(seconds=age)))
            continue
        if live_uris and rng.random() < reblog_share:
            original = live.get(rng.choice(live_uris))
            status = generator.reblog_of(original, rng) if original else generator.next_status()
        else:
            status = generator.next_status()
        history.truth.record(status)
        if status.get("reblog") is None:  # boosts are not edited, deleted or refreshed here
            live[status["uri"]] = status
            live_uris.append(status["uri"])
        received = parse_time(status["created_at"]) + timedelta(milliseconds=rng.randint(5, 900))
        history.add(_envelope(EventKind.STATUS, status, received))
    return history


def _pick_live(rng: random.Random, live: dict[str, Any], uris: list[str]) -> str | None:
    for _ in range(4):
        if not uris:
            return None
        uri = uris[rng.randrange(len(uris))]
        if uri in live:
            return uri
    return None


def _newest(
    seen: dict[str, tuple[int, dict[str, Any]]], uri: str, version: int, status: dict[str, Any]
) -> None:
    if uri not in seen or version > seen[uri][0]:
        seen[uri] = (version, status)


def expected_counters(
    envelopes: Iterable[Envelope],
) -> tuple[dict[MetricRow, int], dict[MetricRow, int]]:
    """The counts and the gauges a history must end with, recounted from its final state."""
    content: dict[str, tuple[int, dict[str, Any]]] = {}
    refreshed: dict[str, tuple[int, dict[str, Any]]] = {}
    deleted: set[str] = set()
    accounts: dict[str, tuple[int, int]] = {}
    created_months: set[MetricRow] = set()
    for envelope in envelopes:
        uri = envelope.uri or ""
        if envelope.kind is EventKind.DELETE:
            deleted.add(uri)
            continue
        status = counted_status(envelope)
        if status is None or uri in deleted:
            continue
        if envelope.kind is EventKind.REFRESH:
            _newest(refreshed, uri, millis(envelope.received_at), status)
        else:
            version = status.get("edited_at") or status["created_at"]
            _newest(content, uri, millis(parse_time(version)), status)
        for snapshot in account_snapshots(status, envelope.received_at):
            known = accounts.get(snapshot.handle)
            if known is None or (snapshot.observed_ms, snapshot.followers) > known:
                accounts[snapshot.handle] = (snapshot.observed_ms, snapshot.followers)
            for row in snapshot_rows(snapshot):
                if row.metric is Metric.ACCOUNTS_CREATED:
                    created_months.add(row)
    counts: dict[MetricRow, int] = {}
    for uri, (_, status) in content.items():
        if uri in deleted:
            continue
        facts = content_facts(status)
        if uri in refreshed:
            facts += engagement_facts(refreshed[uri][1])
        for row, amount in fact_rows(facts, parse_time(status["created_at"])):
            counts[row] = counts.get(row, 0) + amount
    counts = {row: value for row, value in counts.items() if value}
    counts.update({row: 1 for row in created_months})
    gauges = {
        MetricRow(Metric.FOLLOWERS, Granularity.ALL, "all", handle): followers
        for handle, (_, followers) in accounts.items()
    }
    return counts, gauges
