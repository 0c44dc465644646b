"""Re-fetching statuses at set ages for their engagement counts (a status streams with all zeros)."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import requests

from fedilake.contracts import Envelope, EventKind, parse_time

from .envelopes import as_edit
from .ingest import IngestClosed, Ingestor
from .ratelimit import RateLimit
from .sources import Source
from .state import StreamerState

log = logging.getLogger(__name__)


@dataclass(order=True)
class _Due:
    at: float
    local_id: str = field(compare=False)
    uri: str = field(compare=False)
    age_s: float = field(compare=False)


class EngagementRefresher:
    """One per instance: fetches `/api/v1/statuses/:id` when each tracked status reaches an age.

    It uses at most `share` of the instance's rate limit, leaving the rest to gap
    backfill; what it cannot fetch in time waits (the backlog is logged). A status gone
    (404) is published as a delete, and one edited since as an edit: this also recovers
    the deletes and edits a dropped stream or a killed process missed.
    The schedule lives in memory and is rebuilt at start from the state's local ids.
    """

    def __init__(
        self,
        instance_url: str,
        source: Source,
        ingestor: Ingestor,
        rate_limit: RateLimit,
        ages_s: tuple[float, ...],
        share: float,
        session: requests.Session | None = None,
    ) -> None:
        self.instance_url = instance_url
        self.source = source
        self.ingestor = ingestor
        self.rate_limit = rate_limit
        self.ages_s = ages_s
        self.share = share
        self.session = session or requests.Session()
        self.stop_requested = threading.Event()
        self.refreshed = 0
        self.gone = 0
        self._due: list[_Due] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def track(self, envelope: Envelope) -> None:
        """Called for every published envelope; keeps statuses of this instance."""
        if (
            envelope.kind is not EventKind.STATUS
            or envelope.instance != self.instance_url
            or not envelope.uri
            or not envelope.status_id
        ):
            return
        self.track_id(envelope.status_id, envelope.uri, time.time())

    def track_id(self, local_id: str, uri: str, seen_at: float) -> None:
        with self._lock:
            for age in self.ages_s:
                heapq.heappush(self._due, _Due(seen_at + age, local_id, uri, age))
        self._wake.set()

    def resume(self, ingestor_state: StreamerState) -> int:
        """After a restart: schedule again what the last run tracked and had not yet fetched.

        This is also how a delete lost with a crashed process is found: the re-fetch of
        its status answers 404 and is published as a delete.
        """
        horizon = time.time() - max(self.ages_s, default=0) - 60
        resumed = 0
        for local_id, uri, seen_at in ingestor_state.recent_ids(self.instance_url, horizon):
            self.track_id(local_id, uri, seen_at)
            resumed += 1
        return resumed

    @property
    def backlog(self) -> int:
        now = time.time()
        with self._lock:
            return sum(1 for due in self._due if due.at <= now)

    def run(self) -> None:
        token = self.source.token.read()
        reserve = int(self.rate_limit.limit * (1 - self.share))
        while not self.stop_requested.is_set():
            with self._lock:
                due = self._due[0] if self._due else None
                if due is not None and due.at <= time.time():
                    heapq.heappop(self._due)
                else:
                    due = None
            if due is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            wait = self.rate_limit.wait_s(reserve=reserve)
            if wait > 0:
                with self._lock:
                    heapq.heappush(self._due, due)
                log.info(
                    "refresh of %s waits %.0fs for the rate limit (%d due)",
                    self.instance_url,
                    wait,
                    self.backlog,
                )
                self.stop_requested.wait(min(wait, 5.0))
                continue
            try:
                self._refresh(due, token)
            except requests.RequestException as exc:
                log.warning("refresh of %s failed: %s", due.uri, exc.__class__.__name__)
            except IngestClosed:
                return

    def _refresh(self, due: _Due, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.session.get(
            f"{self.instance_url}/api/v1/statuses/{due.local_id}", headers=headers, timeout=30
        )
        self.rate_limit.observe(response.headers, response.status_code)
        received = datetime.now(UTC)
        if response.status_code == 404:
            self.gone += 1
            gone = Envelope(
                kind=EventKind.DELETE,
                instance=self.instance_url,
                stream=self.source.stream,
                event="delete",
                received_at=received,
                created_at=None,
                uri=due.uri,
                status_id=due.local_id,
                payload=due.local_id,
            )
            self.ingestor.take(None, gone)
            return
        if response.status_code == 429:
            with self._lock:
                heapq.heappush(self._due, due)
            return
        response.raise_for_status()
        envelope = Envelope(
            kind=EventKind.REFRESH,
            instance=self.instance_url,
            stream=f"refresh:{int(due.age_s)}s",
            event="refresh",
            received_at=received,
            created_at=None,
            uri=due.uri,
            status_id=due.local_id,
            payload=response.text,
        )
        try:
            created = envelope.payload_json.get("created_at")
        except ValueError:
            log.warning("refresh of %s answered with something that is not JSON", due.uri)
            return
        if created:
            envelope = replace(envelope, created_at=parse_time(str(created)))
        self.ingestor.take(None, envelope)
        self.refreshed += 1
        if envelope.payload_json.get("edited_at"):
            # An edit we missed (a dropped stream or a crash) shows here: publish it; the
            # ingestor drops it if that version was already published.
            self.ingestor.take(None, as_edit(replace(envelope, stream=self.source.stream)))

    def stop(self) -> None:
        self.stop_requested.set()
        self._wake.set()
