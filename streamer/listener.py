"""One source's listener: find the streaming host, read the stream, backfill every gap, reconnect."""

from __future__ import annotations

import logging
import random
import threading

import requests
from mastodon import Mastodon
from mastodon.errors import MastodonError

from .backfill import GapBackfiller
from .ingest import IngestClosed, Ingestor
from .ratelimit import RateLimit
from .sources import Source, SourceConfigError
from .sse import Heartbeat, StreamEvent, Unreadable
from .transports import (
    StreamAuthError,
    StreamConnection,
    http_base,
    open_connection,
)

log = logging.getLogger(__name__)

__all__ = ["StreamAuthError", "StreamListener", "discover_streaming_base", "http_base"]


def discover_streaming_base(instance_url: str, token: str | None) -> str:
    """Where the instance says its streaming API lives (as Mastodon's own clients do)."""
    api = Mastodon(api_base_url=instance_url, access_token=token, request_timeout=30)
    try:
        info = api.instance()
    except MastodonError as exc:
        raise ConnectionError(
            f"cannot read the instance document of {instance_url}: {exc}"
        ) from exc
    except RecursionError:
        # Mastodon.py 2.3.3 recurses without end in its version check when the instance
        # cannot be reached at all (retrieve_mastodon_version <-> verify_minimum_version).
        raise ConnectionError(f"cannot reach {instance_url}") from None
    urls = info.get("urls") or {}
    streaming = urls.get("streaming_api") if isinstance(urls, dict) else None
    if not streaming:
        configuration = info.get("configuration") or {}
        streaming = (
            (configuration.get("urls") or {}) if isinstance(configuration, dict) else {}
        ).get("streaming")
    return http_base(str(streaming)) if streaming else instance_url.rstrip("/")


class StreamListener:
    """Reads one (instance, stream) until stopped.

    After every (re)connection it first backfills from the source's checkpoint, with the
    stream already open so nothing falls between the two; the ingestor drops what both
    delivered. A stall (no byte and no heartbeat within `stall_timeout_s`) counts as a
    drop. Reconnects back off exponentially with full jitter.
    """

    def __init__(
        self,
        source: Source,
        ingestor: Ingestor,
        backfiller: GapBackfiller,
        rate_limit: RateLimit,
        *,
        stall_timeout_s: float,
        reconnect_max_s: float,
        session: requests.Session | None = None,
    ) -> None:
        self.source = source
        self.ingestor = ingestor
        self.backfiller = backfiller
        self.rate_limit = rate_limit
        self.stall_timeout_s = stall_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.session = session or requests.Session()
        self.stop_requested = threading.Event()
        self.connections = 0
        self.backfilled = 0
        self.backfill_failures = 0
        self.error: BaseException | None = None
        self._connection: StreamConnection | None = None

    def run(self) -> None:
        try:
            self._run()
        except (StreamAuthError, SourceConfigError) as exc:
            self.error = exc
            log.error("%s", exc)
        except IngestClosed:
            pass

    def _run(self) -> None:
        base: str | None = None
        backoff = 1.0
        while not self.stop_requested.is_set():
            try:
                token = self.source.token.read()
                if base is None:  # an instance that is down at start is retried like a drop
                    base = discover_streaming_base(self.source.instance_url, token)
                self._connection = open_connection(
                    self.source, base, token, self.stall_timeout_s, self.session
                )
                self.connections += 1
                log.info("connected to %s", self.source)
                backoff = 1.0
                self._backfill_safely(token)
                self.ingestor.backfill_done(self.source)  # held edits wait for the stream
                self._read(self._connection)
            except (StreamAuthError, SourceConfigError, IngestClosed):
                raise
            except (requests.RequestException, OSError, ConnectionError) as exc:
                if not self.stop_requested.is_set():
                    log.warning("stream %s interrupted: %s", self.source, _reason(exc))
            except Exception:
                # A listener that dies silently loses its source for good: log and go on.
                if not self.stop_requested.is_set():
                    log.exception("unexpected error reading %s; reconnecting", self.source)
            finally:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None
            if self.stop_requested.is_set():
                break
            delay = random.uniform(0.0, backoff)  # full jitter: many sources don't stampede
            log.info("reconnecting to %s in %.1fs", self.source, delay)
            self.stop_requested.wait(delay)
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _backfill_safely(self, token: str | None) -> None:
        """A failed backfill is reported, never a reason to stop reading the stream."""
        try:
            self._backfill(token)
        except IngestClosed:
            raise
        except (requests.RequestException, OSError, ValueError, StreamAuthError) as exc:
            self.backfill_failures += 1
            log.warning(
                "backfill of %s failed (%s); statuses of the gap may be missing",
                self.source,
                _reason(exc),
            )

    def _backfill(self, token: str | None) -> None:
        checkpoint = self.ingestor.state_checkpoint(self.source)
        if self.backfiller.max_pages == 0:
            return
        events = (
            self.backfiller.recent(self.source, token, self.rate_limit)
            if checkpoint is None
            else self.backfiller.events(self.source, token, checkpoint, self.rate_limit)
        )
        fetched = published = held = 0
        for event in events:
            fetched += 1
            outcome = self.ingestor.offer(self.source, event, backfilled=True)
            published += outcome == "published"
            held += outcome == "held"
        self.backfilled += published
        if fetched:
            log.info(
                "backfilled %s from id %s: %d fetched, %d were missing, %d edited (held "
                "for the stream's older edits)",
                self.source,
                checkpoint or "(first start: the newest page)",
                fetched,
                published,
                held,
            )

    def _read(self, connection: StreamConnection) -> None:
        where = str(self.source)
        for item in connection.items():
            if isinstance(item, StreamEvent):
                self.ingestor.offer(self.source, item)
            elif isinstance(item, Unreadable):
                self.ingestor.dead_letter(item.reason, item.raw, where)
            elif isinstance(item, Heartbeat):
                pass
            if self.stop_requested.is_set():
                return
        raise ConnectionError("the server ended the stream")

    def stop(self) -> None:
        """Stop soon: the open connection is closed under the reader's feet."""
        self.stop_requested.set()
        connection = self._connection
        if connection is not None:
            connection.close()


def _reason(exc: BaseException) -> str:
    # Exception texts of requests can carry the URL; ours never has the token in it,
    # but a user's instance URL might, so only the class and a short text are logged.
    text = str(exc).split("\n")[0][:200]
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
