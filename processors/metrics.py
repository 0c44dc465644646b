"""Metric definitions: pure functions over the envelope, run alike by the Faust agents and the MapReduce mappers.

A status *counts for* a set of facts: (metric, dimension, amount). Its content gives
hashtags, mentions, URLs, domains, language, media, and what its author posted; a
`refresh` of it gives the favourites, boosts and replies it received. Each fact counts
in the hour, the day and all time of the status's event time (`Envelope.event_time`).
Accounts give two more: the latest follower count (a gauge) and the month they were
created in (counted once per account).

What counts, by metric (see `fedilake.contracts.Metric`):

* hashtags, mentions, URLs and domains count once per status however often they occur;
* URLs are the external links of the content and of the link card, never a mention or
  hashtag link; a domain is the URL's host, lower-cased, without `www.`;
* a boost counts only as a boost by its booster (its original counted when posted);
* an anonymised author (see `streamer.optouts`) counts in every metric that is not
  about an account, and in none that is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from html import unescape
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from fedilake.contracts import (
    COUNTED_GRANULARITIES,
    Envelope,
    EventKind,
    Granularity,
    Metric,
    MetricRow,
    bucket_of,
    parse_time,
)

UNKNOWN_LANGUAGE = "und"
ANY_MEDIA = "any"

_ANCHOR = re.compile(r"<a\s([^>]*)>", re.IGNORECASE)
_HREF = re.compile(r"""href\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_CLASS = re.compile(r"""class\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)


class Fact(NamedTuple):
    """One thing a status counts for: `amount` in (`metric`, `dimension`)."""

    metric: Metric
    dimension: str
    amount: int = 1


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """What one event says about an account: its follower count then, and its creation month."""

    handle: str
    followers: int
    observed_ms: int
    created_month: str | None


# ------------------------------------------------------------------ the status of an event


def counted_status(envelope: Envelope) -> dict[str, Any] | None:
    """The status payload of a status, edit or refresh event; None for every other kind."""
    if envelope.kind not in (EventKind.STATUS, EventKind.EDIT, EventKind.REFRESH):
        return None
    try:
        status = envelope.payload_json
    except ValueError:  # not JSON: nothing to count (the streamer dead-letters these)
        return None
    return status if isinstance(status, dict) else None


def account_handle(account: Any) -> str | None:
    """`user@domain`, the same whichever instance the account was seen through.

    None for an anonymised account, or one without a name.
    """
    if not isinstance(account, dict) or account.get("anonymized"):
        return None
    acct = str(account.get("acct") or account.get("username") or "")
    if not acct:
        return None
    if "@" in acct:
        return acct.lower()
    host = urlsplit(str(account.get("url") or "")).hostname
    return f"{acct}@{host}".lower() if host else acct.lower()


def _mention_handle(mention: Any) -> str | None:
    if not isinstance(mention, dict):
        return None
    return account_handle(
        {"acct": mention.get("acct") or mention.get("username"), "url": mention.get("url")}
    )


# ------------------------------------------------------------------ content facts


def hashtags(status: Mapping[str, Any]) -> frozenset[str]:
    """The distinct hashtags of a status, lower-cased as Mastodon normalises them."""
    tags = status.get("tags") or []
    return frozenset(
        str(tag["name"]).lower() for tag in tags if isinstance(tag, dict) and tag.get("name")
    )


def mentions(status: Mapping[str, Any]) -> frozenset[str]:
    """The distinct accounts a status mentions, as `user@domain`."""
    handles = (_mention_handle(m) for m in status.get("mentions") or [])
    return frozenset(h for h in handles if h)


def external_urls(status: Mapping[str, Any]) -> frozenset[str]:
    """The distinct external links of a status: its content's anchors and its link card.

    Mention and hashtag links (anchors with class `mention` or `hashtag`) are not external.
    """
    urls: set[str] = set()
    for match in _ANCHOR.finditer(str(status.get("content") or "")):
        attributes = match.group(1)
        classes = _CLASS.search(attributes)
        names = (classes.group(1) or classes.group(2) or "") if classes else ""
        if {"mention", "hashtag"} & set(names.split()):
            continue
        href = _HREF.search(attributes)
        if href:
            urls.add(unescape(href.group(1) or href.group(2) or ""))
    card = status.get("card")
    if isinstance(card, dict) and card.get("url"):
        urls.add(str(card["url"]))
    return frozenset(url for url in urls if url_domain(url))


def url_domain(url: str) -> str | None:
    """The host of an http(s) URL, lower-cased, without `www.`; None for anything else."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    return host[4:] if host.startswith("www.") else host


def media_types(status: Mapping[str, Any]) -> frozenset[str]:
    media = status.get("media_attachments") or []
    return frozenset(str(m.get("type") or "unknown") for m in media if isinstance(m, dict))


def content_facts(status: Mapping[str, Any]) -> tuple[Fact, ...]:
    """Everything one version of a status counts for (an edit replaces the whole set)."""
    author = account_handle(status.get("account"))
    if isinstance(status.get("reblog"), dict):
        return (Fact(Metric.BOOSTS, author),) if author else ()
    facts = [Fact(Metric.HASHTAG, tag) for tag in sorted(hashtags(status))]
    facts += [Fact(Metric.MENTION, handle) for handle in sorted(mentions(status))]
    urls = external_urls(status)
    facts += [Fact(Metric.URL, url) for url in sorted(urls)]
    domains = {url_domain(url) for url in urls}
    facts += [Fact(Metric.DOMAIN, domain) for domain in sorted(d for d in domains if d)]
    facts.append(Fact(Metric.LANGUAGE, str(status.get("language") or UNKNOWN_LANGUAGE).lower()))
    types = media_types(status)
    if types:
        facts.append(Fact(Metric.MEDIA, ANY_MEDIA))
        facts += [Fact(Metric.MEDIA, kind) for kind in sorted(types)]
    if author:
        facts.append(Fact(Metric.POSTS, author))
        if status.get("in_reply_to_id"):
            facts.append(Fact(Metric.REPLIES, author))
    return tuple(facts)


def engagement_facts(status: Mapping[str, Any]) -> tuple[Fact, ...]:
    """What a refreshed status received, credited to its author: favourites, boosts, replies.

    Counts are snapshots: the latest refresh of a status replaces the one before.
    """
    author = account_handle(status.get("account"))
    if not author or isinstance(status.get("reblog"), dict):
        return ()
    facts = []
    for metric, field in (
        (Metric.FAVOURITES, "favourites_count"),
        (Metric.REBLOGS, "reblogs_count"),
        (Metric.REPLIES_RECEIVED, "replies_count"),
    ):
        amount = _count(status.get(field))
        if amount:
            facts.append(Fact(metric, author, amount))
    return tuple(facts)


def _count(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def account_snapshots(status: Mapping[str, Any], observed: datetime) -> tuple[AccountSnapshot, ...]:
    """The accounts a status shows (its author, and a boost's original author)."""
    accounts = [status.get("account")]
    reblog = status.get("reblog")
    if isinstance(reblog, dict):
        accounts.append(reblog.get("account"))
    observed_ms = millis(observed)
    snapshots = []
    for account in accounts:
        handle = account_handle(account)
        if handle is None or not isinstance(account, dict):
            continue
        snapshots.append(
            AccountSnapshot(
                handle,
                _count(account.get("followers_count")),
                observed_ms,
                _month_of(account.get("created_at")),
            )
        )
    return tuple(snapshots)


def _month_of(value: Any) -> str | None:
    return _month_of_text(str(value)) if value else None


@lru_cache(maxsize=65536)
def _month_of_text(text: str) -> str | None:
    # Cached: every status carries its author's creation date, and authors repeat.
    try:
        return bucket_of(parse_time(text), Granularity.MONTH)
    except ValueError:
        return None


# ------------------------------------------------------------------ rows


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_millis(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def fact_rows(facts: Iterable[Fact], event_time: datetime) -> Iterator[tuple[MetricRow, int]]:
    """Each fact in the buckets of `event_time` its metric is counted in (`Metric.windows`)."""
    buckets = counted_buckets(millis(event_time))
    for metric, dimension, amount in facts:
        windows = metric.windows
        for granularity, bucket in buckets:
            if granularity in windows:
                yield MetricRow(metric, granularity, bucket, dimension), amount


@lru_cache(maxsize=4096)
def _hour_buckets(hour: int) -> tuple[tuple[Granularity, str], ...]:
    moment = from_millis(hour * 3_600_000)
    return tuple((g, bucket_of(moment, g)) for g in COUNTED_GRANULARITIES)


def counted_buckets(event_ms: int) -> tuple[tuple[Granularity, str], ...]:
    """The (granularity, bucket) pairs a fact of that event time counts in (cached per hour)."""
    return _hour_buckets(event_ms // 3_600_000)


def snapshot_rows(snapshot: AccountSnapshot) -> Iterator[MetricRow]:
    """The gauge row of an account's follower count, and its row in its creation month."""
    yield MetricRow(Metric.FOLLOWERS, Granularity.ALL, "all", snapshot.handle)
    if snapshot.created_month:
        yield MetricRow(
            Metric.ACCOUNTS_CREATED, Granularity.MONTH, snapshot.created_month, snapshot.handle
        )


def engagement_rate(favourites: int, reblogs: int, replies: int, followers: int) -> float | None:
    """(favourites + boosts + replies) / followers; None for an account without followers."""
    if followers <= 0:
        return None
    return (favourites + reblogs + replies) / followers


# ------------------------------------------------------------------ hashtags, for the batch job


def hashtag_rows(
    envelope: Envelope, granularity: Granularity = Granularity.HOUR
) -> Iterator[MetricRow]:
    """One row per hashtag of a new status, in the bucket of its event time; each counts 1."""
    if envelope.kind is not EventKind.STATUS:
        return
    status = counted_status(envelope)
    if status is None or status.get("reblog"):
        return
    bucket = bucket_of(envelope.event_time(), granularity)
    for tag in sorted(hashtags(status)):
        yield MetricRow(Metric.HASHTAG, granularity, bucket, tag)
