"""Metric extraction: the hashtags a status counts for, and the rows they land in."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fedilake.contracts import Envelope, EventKind, Granularity, Metric, MetricRow
from processors.metrics import (
    ANY_MEDIA,
    Fact,
    account_handle,
    account_snapshots,
    content_facts,
    engagement_facts,
    engagement_rate,
    external_urls,
    hashtag_rows,
    url_domain,
)


def _tags_of(envelope: Envelope) -> frozenset[str]:
    return frozenset(row.dimension for row in hashtag_rows(envelope))


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
    assert _tags_of(envelope) == frozenset({"rust", "python", "caf\u00e9"})


@pytest.mark.parametrize("tags", [None, [], [{}], [{"name": ""}], [{"name": None}], ["rust"]])
def test_statuses_without_usable_tags_count_nothing(tags: list[Any] | None) -> None:
    assert _tags_of(_envelope(_status(tags))) == frozenset()


def test_status_without_a_tags_field_counts_nothing() -> None:
    status = _status(None)
    del status["tags"]
    assert _tags_of(_envelope(status)) == frozenset()


def test_boosts_count_nothing() -> None:
    original = _status(_tags("rust"))
    boost = _status(_tags("rust"), reblog=original)
    assert _tags_of(_envelope(boost)) == frozenset()
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
    assert _tags_of(envelope) == frozenset()
    assert list(hashtag_rows(envelope)) == []


def test_status_payload_that_is_not_an_object_counts_nothing() -> None:
    assert _tags_of(_envelope([{"name": "rust"}])) == frozenset()


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


# ------------------------------------------------------------------ every other metric

AUTHOR = {
    "id": "7",
    "acct": "alice",
    "username": "alice",
    "url": "https://Example.Social/@alice",
    "followers_count": 120,
    "created_at": "2024-02-10T00:00:00.000Z",
}
CONTENT = (
    '<p><span class="h-card"><a href="https://other.example/@bob" class="u-url mention">'
    '@<span>bob</span></a></span> read <a href="https://www.News.example/a?x=1&amp;y=2" '
    'rel="nofollow noopener" target="_blank">news.example/a</a> '
    '<a href="https://example.social/tags/rust" class="mention hashtag" rel="tag">#<span>rust'
    "</span></a></p>"
)


def _full_status(**changes: Any) -> dict[str, Any]:
    status = _status(
        _tags("Rust"),
        account=AUTHOR,
        content=CONTENT,
        language="en",
        mentions=[{"acct": "bob@other.example", "url": "https://other.example/@bob"}],
        card={"url": "https://blog.example/post"},
        media_attachments=[{"type": "image"}, {"type": "image"}, {"type": "video"}],
        in_reply_to_id=None,
    )
    status.update(changes)
    return status


def test_a_status_counts_for_each_content_metric_once() -> None:
    facts = set(content_facts(_full_status()))
    assert facts == {
        Fact(Metric.HASHTAG, "rust"),
        Fact(Metric.MENTION, "bob@other.example"),
        Fact(Metric.URL, "https://www.News.example/a?x=1&y=2"),
        Fact(Metric.URL, "https://blog.example/post"),
        Fact(Metric.DOMAIN, "news.example"),
        Fact(Metric.DOMAIN, "blog.example"),
        Fact(Metric.LANGUAGE, "en"),
        Fact(Metric.MEDIA, ANY_MEDIA),
        Fact(Metric.MEDIA, "image"),
        Fact(Metric.MEDIA, "video"),
        Fact(Metric.POSTS, "alice@example.social"),
    }


def test_mention_and_hashtag_links_are_not_external() -> None:
    assert external_urls(_full_status(card=None)) == {"https://www.News.example/a?x=1&y=2"}
    assert external_urls({"content": '<a href="mailto:x@y.z">mail</a>'}) == frozenset()
    assert url_domain("ftp://files.example/x") is None


def test_a_reply_counts_as_a_post_and_a_reply() -> None:
    facts = content_facts(_full_status(in_reply_to_id="3"))
    assert Fact(Metric.REPLIES, "alice@example.social") in facts
    assert Fact(Metric.POSTS, "alice@example.social") in facts


def test_a_boost_counts_only_for_its_booster() -> None:
    boost = _status([], account={**AUTHOR, "acct": "carol@else.example"}, reblog=_full_status())
    assert content_facts(boost) == (Fact(Metric.BOOSTS, "carol@else.example"),)


def test_an_anonymised_author_counts_in_no_account_metric() -> None:
    status = _full_status(account={"id": "", "acct": "", "anonymized": True}, mentions=[])
    metrics = {fact.metric for fact in content_facts(status)}
    assert Metric.POSTS not in metrics and Metric.HASHTAG in metrics
    assert engagement_facts({**status, "favourites_count": 3}) == ()
    assert account_snapshots(status, RECEIVED) == ()


def test_unknown_language_and_the_same_account_through_two_instances() -> None:
    facts = content_facts(_full_status(language=None))
    assert Fact(Metric.LANGUAGE, "und") in facts
    remote = {"acct": "alice@example.social", "url": "https://example.social/@alice"}
    assert account_handle(remote) == account_handle(AUTHOR) == "alice@example.social"


def test_engagement_comes_from_the_counts_of_a_refresh() -> None:
    status = _full_status(favourites_count=5, reblogs_count="2", replies_count=None)
    assert engagement_facts(status) == (
        Fact(Metric.FAVOURITES, "alice@example.social", 5),
        Fact(Metric.REBLOGS, "alice@example.social", 2),
    )


def test_account_snapshots_give_followers_and_creation_month() -> None:
    (snapshot,) = account_snapshots(_full_status(), RECEIVED)
    assert (snapshot.handle, snapshot.followers, snapshot.created_month) == (
        "alice@example.social",
        120,
        "202402",
    )


def test_engagement_rate() -> None:
    assert engagement_rate(6, 2, 2, 20) == 0.5
    assert engagement_rate(6, 2, 2, 0) is None
