"""Filling the gap a dropped stream left, from the matching REST timeline, within the rate limit."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import requests

from .ratelimit import RateLimit
from .sources import Source, timeline_of
from .sse import StreamEvent
from .transports import auth_error

log = logging.getLogger(__name__)

_SNOWFLAKE_SEQ_BITS = 16  # Mastodon ids: milliseconds << 16 | sequence


def rewind(checkpoint: str, overlap_s: float) -> str:
    """An id `overlap_s` earlier than `checkpoint`, so statuses that federated late are re-read.

    Only Mastodon's time-based numeric ids can be rewound; others (GoToSocial's ULIDs)
    are used as they are.
    """
    if not checkpoint.isdigit() or overlap_s <= 0:
        return checkpoint
    value = int(checkpoint) - (int(overlap_s * 1000) << _SNOWFLAKE_SEQ_BITS)
    return str(max(value, 0))


def newer(a: str | None, b: str | None) -> str | None:
    """The later of two ids: numerically for Mastodon's ids, as text for sortable ULIDs."""
    if a is None or b is None:
        return a or b
    if a.isdigit() and b.isdigit():
        return a if int(a) >= int(b) else b
    return a if (len(a), a) >= (len(b), b) else b


class GapBackfiller:
    """Pages forward (`min_id`) through a timeline from a checkpoint, oldest first.

    Mastodon.py casts every status into attribute dictionaries with parsed dates, which
    loses the bytes the envelope keeps; the pages are read with `requests` and each
    status re-serialised as the compact JSON the streaming server sends.
    """

    def __init__(
        self,
        session: requests.Session,
        page_size: int,
        max_pages: int,
        overlap_s: float,
        stop: threading.Event,
    ) -> None:
        self.session = session
        self.page_size = page_size
        self.max_pages = max_pages
        self.overlap_s = overlap_s
        self.stop = stop

    def recent(
        self, source: Source, token: str | None, rate_limit: RateLimit
    ) -> Iterator[StreamEvent]:
        """The newest page, oldest first: on a first start, what came just before we listened."""
        path, params = timeline_of(source.stream)
        event = "notification" if source.stream == "user:notification" else "update"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        page = self._get(
            source.instance_url + path,
            {**params, "limit": str(self.page_size)},
            headers,
            source,
            rate_limit,
        )
        for item in reversed(page):
            yield StreamEvent(event, _compact(item))

    def events(
        self, source: Source, token: str | None, checkpoint: str, rate_limit: RateLimit
    ) -> Iterator[StreamEvent]:
        path, params = timeline_of(source.stream)
        url = source.instance_url + path
        event = "notification" if source.stream == "user:notification" else "update"
        min_id = rewind(checkpoint, self.overlap_s)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for page_number in range(self.max_pages):
            page = self._get(
                url,
                {**params, "min_id": min_id, "limit": str(self.page_size)},
                headers,
                source,
                rate_limit,
            )
            if not page:
                return
            # Mastodon answers min_id queries newest first; the stream went oldest first.
            for item in reversed(page):
                yield StreamEvent(event, _compact(item))
            min_id = str(page[0]["id"])
            if self.stop.is_set():
                return
            if page_number == self.max_pages - 1:
                log.warning(
                    "backfill of %s stopped after %d pages at id %s: the gap is larger than "
                    "FEDILAKE_STREAMER_BACKFILL_MAX_PAGES allows; older statuses are missed",
                    source,
                    self.max_pages,
                    min_id,
                )

    def _get(
        self,
        url: str,
        params: dict[str, str],
        headers: dict[str, str],
        source: Source,
        rate_limit: RateLimit,
    ) -> list[dict[str, Any]]:
        while True:
            wait = rate_limit.wait_s()
            if wait > 0:
                log.info(
                    "rate limit of %s reached: backfill waits %.0fs", source.instance_url, wait
                )
                if self.stop.wait(wait):
                    return []
                continue
            response = self.session.get(url, params=params, headers=headers, timeout=30)
            rate_limit.observe(response.headers, response.status_code)
            if response.status_code == 429:
                continue
            if response.status_code in (401, 403):
                raise auth_error(source, response.status_code)
            response.raise_for_status()
            page = response.json()
            if not isinstance(page, list):
                raise ConnectionError(f"{url} did not answer with a list of statuses")
            return [item for item in page if isinstance(item, dict) and "id" in item]


def _compact(item: dict[str, Any]) -> bytes:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
