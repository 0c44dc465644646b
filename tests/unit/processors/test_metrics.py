"""Metric extraction: the hashtags a status counts for, and the rows they land in."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fedilake.contracts import Envelope, EventKind, Granularity, Metric, MetricRow
from processors.metrics import hashtag_rows, hashtags

RECEIVED = datetime(2026, 11, 23, 12, 0, 1, tzinfo=UTC)
CREATED = datetime(2026, 11, 23, 10, 59, 59, 999000, tzinfo=UTC)


def _status(tags: list[Any] | None, **changes: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "id": "1",
        "uri": "https://example.social/users/a/statuses/1",
        "created_at": "2026-11-23T10:59:59.999Z",
        "tags": tags,
        "reblog": None,
    }
    status.update(changes)
    return status


def _envelope(
    payload: Any,
    kind: EventKind = EventKind.STATUS,
    created_at: datetime | None = CREATED,
) -> Envelope:
    return Envelope(
        kind=kind,
        instance="https://example.social",
        stream="public",
        event="update",
        received_at=RECEIVED,
        created_at=created_at,
        uri="https://example.social/users/a/statuses/1",
        status_id="1",
        payload=payload if isinstance(payload, str) else json.dumps(payload),
    )


def _tags(*names: str) -> list[dict[str, str]]:
    return [{"name": name, "url": f"https://example.social/tags/{name}"} for name in names]


def test_hashtags_are_lower_cased_and_distinct() -> None:
    envelope = _envelope(_status(_tags("Rust", "rust", "RUST", "Python", "caf\u00c9")))
    assert hashtags(envelope) == frozenset({"rust", "python", "caf\u00e9"})


@pytest.mark.parametrize("tags", [None, [], [{}], [{"name": ""}], [{"name": None}], ["rust"]])
def test_statuses_without_usable_tags_count_nothing(tags: list[Any] | None) -> None:
    assert hashtags(_envelope(_status(tags))) == frozenset()


def test_status_without_a_tags_field_counts_nothing() -> None:
    status = _status(None)
    del status["tags"]
    assert hashtags(_envelope(status)) == frozenset()


def test_boosts_count_nothing() -> None:
    original = _status(_tags("rust"))
    boost = _status(_tags("rust"), reblog=original)
    assert hashtags(_envelope(boost)) == frozenset()
    assert list(hashtag_rows(_envelope(boost))) == []


@pytest.mark.parametrize(
    "kind",
    [
        EventKind.EDIT,
        EventKind.DELETE,
        EventKind.NOTIFICATION,
        EventKind.CONVERSATION,
        EventKind.ANNOUNCEMENT,
        EventKind.REFRESH,
        EventKind.UNKNOWN,
    ],
)
def test_non_status_kinds_count_nothing(kind: EventKind) -> None:
    envelope = _envelope(_status(_tags("rust")), kind=kind)
    assert hashtags(envelope) == frozenset()
    assert list(hashtag_rows(envelope)) == []


def test_status_payload_that_is_not_an_object_counts_nothing() -> None:
    assert hashtags(_envelope([{"name": "rust"}])) == frozenset()


def test_hashtag_rows_land_in_the_hour_of_the_event() -> None:
    envelope = _envelope(_status(_tags("Rust", "python", "rust")))
    rows = list(hashtag_rows(envelope))
    assert rows == [
        MetricRow(Metric.HASHTAG, Granularity.HOUR, "2026112310", "python"),
        MetricRow(Metric.HASHTAG, Granularity.HOUR, "2026112310", "rust"),
    ]


def test_hashtag_rows_by_day() -> None:
    rows = list(hashtag_rows(_envelope(_status(_tags("rust"))), Granularity.DAY))
    assert rows == [MetricRow(Metric.HASHTAG, Granularity.DAY, "20261123", "rust")]


def test_hashtag_rows_fall_back_to_the_receive_time() -> None:
    rows = list(hashtag_rows(_envelope(_status(_tags("rust")), created_at=None)))
    assert [row.bucket for row in rows] == ["2026112312"]


def test_status_without_hashtags_has_no_rows() -> None:
    assert list(hashtag_rows(_envelope(_status([])))) == []
