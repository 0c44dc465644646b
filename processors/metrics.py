"""Metric definitions: pure functions over the envelope, run alike by the Faust agents and the MapReduce mappers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fedilake.contracts import Envelope, EventKind, Granularity, Metric, MetricRow, bucket_of


def _original_status(envelope: Envelope) -> dict[str, Any] | None:
    """The status a `status` event is about; a boost counts for nothing here (its original does)."""
    if envelope.kind is not EventKind.STATUS:
        return None
    try:
        status = envelope.payload_json
    except ValueError:  # not JSON: nothing to count (the streamer dead-letters these)
        return None
    if not isinstance(status, dict) or status.get("reblog"):
        return None
    return status


def hashtags(envelope: Envelope) -> frozenset[str]:
    """The distinct hashtags of a new status, lower-cased as Mastodon normalises them."""
    status = _original_status(envelope)
    if status is None:
        return frozenset()
    tags = status.get("tags") or []
    return frozenset(
        str(tag["name"]).lower() for tag in tags if isinstance(tag, dict) and tag.get("name")
    )


def hashtag_rows(
    envelope: Envelope, granularity: Granularity = Granularity.HOUR
) -> Iterator[MetricRow]:
    """One row per hashtag of the status, in the bucket of its event time; each counts 1."""
    tags = hashtags(envelope)
    if not tags:
        return
    bucket = bucket_of(envelope.event_time(), granularity)
    for tag in sorted(tags):
        yield MetricRow(Metric.HASHTAG, granularity, bucket, tag)
