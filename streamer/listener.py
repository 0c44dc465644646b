"""The Mastodon listener: discovers the streaming host, reads the SSE stream, publishes every event."""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from mastodon import Mastodon
from mastodon.errors import MastodonError

from fedilake.settings import StreamerSettings

from .envelopes import MalformedEvent, wrap_event
from .publisher import EventPublisher
from .sse import Heartbeat, SseEvent, SseParser

log = logging.getLogger(__name__)

STREAM_PATHS = {
    "public": "/api/v1/streaming/public",
    "public:local": "/api/v1/streaming/public/local",
    "public:remote": "/api/v1/streaming/public/remote",
    "user": "/api/v1/streaming/user",
    "user:notification": "/api/v1/streaming/user/notification",
}


class StreamAuthError(Exception):
    """The instance refused our token; retrying will not help."""


def stream_path(stream: str) -> str:
    if stream in STREAM_PATHS:
        return STREAM_PATHS[stream]
    kind, _, arg = stream.partition(":")
    if kind == "hashtag" and arg:
        tag, _, local = arg.partition(":")
        suffix = "/local" if local == "local" else ""
        return f"/api/v1/streaming/hashtag{suffix}?tag={quote(tag, safe='')}"
    if kind == "list" and arg:
        return f"/api/v1/streaming/list?list={quote(arg, safe='')}"
    raise ValueError(f"unknown stream {stream!r}; known: {', '.join(STREAM_PATHS)}, hashtag:TAG")


def http_base(streaming_url: str) -> str:
    """Mastodon reports its streaming host as ws(s)://; SSE speaks http(s) to the same place."""
    parts = urlsplit(streaming_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def discover_streaming_base(instance_url: str, token: str | None) -> str:
    """Where the instance says its streaming API lives (as Mastodon's own clients do)."""
    api = Mastodon(api_base_url=instance_url, access_token=token, request_timeout=30)
    try:
        info = api.instance()
    except MastodonError as exc:
        raise ConnectionError(
            f"cannot read the instance document of {instance_url}: {exc}"
        ) from exc
    urls = info.get("urls") or {}
    streaming = urls.get("streaming_api") if isinstance(urls, dict) else None
    if not streaming:
        configuration = info.get("configuration") or {}
        streaming = (
            (configuration.get("urls") or {}) if isinstance(configuration, dict) else {}
        ).get("streaming")
    return http_base(str(streaming)) if streaming else instance_url.rstrip("/")


class StreamListener:
    """One (instance, stream) pair, read as server-sent events and reconnected with backoff."""

    def __init__(
        self,
        settings: StreamerSettings,
        publisher: EventPublisher,
        session: requests.Session | None = None,
        stall_timeout_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.session = session or requests.Session()
        self.stall_timeout_s = stall_timeout_s
        self.stop_requested = threading.Event()
        self._token = settings.token()

    def run(self) -> None:
        path = stream_path(self.settings.stream)  # an unknown stream fails here, at once
        url: str | None = None
        backoff = 1.0
        while not self.stop_requested.is_set():
            try:
                if url is None:  # an instance that is down at start is retried like a drop
                    url = discover_streaming_base(self.settings.instance_url, self._token) + path
                self._read(url)
                backoff = 1.0
            except StreamAuthError:
                raise
            except (requests.RequestException, OSError) as exc:
                log.warning("stream %s interrupted: %s", self._where(), exc.__class__.__name__)
            if self.stop_requested.is_set():
                break
            delay = random.uniform(0.5, 1.0) * backoff
            log.info("reconnecting to %s in %.1fs", self._where(), delay)
            self.stop_requested.wait(delay)
            backoff = min(backoff * 2, self.settings.reconnect_max_s)

    def stop(self) -> None:
        """Ask the listener to stop; it notices at the next line or heartbeat.

        The CLI also interrupts a read blocked on a silent stream (see `fedilake stream`).
        """
        self.stop_requested.set()

    def _where(self) -> str:
        return f"{self.settings.instance_url} ({self.settings.stream})"

    def _read(self, url: str) -> None:
        headers = {"Accept": "text/event-stream"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        with self.session.get(
            url, headers=headers, stream=True, timeout=(10, self.stall_timeout_s)
        ) as response:
            if response.status_code in (401, 403):
                raise StreamAuthError(
                    f"{self.settings.instance_url} refused the access token "
                    f"(HTTP {response.status_code}) for stream {self.settings.stream!r}: "
                    "it needs a user token with the read:statuses scope "
                    "(FEDILAKE_STREAMER_ACCESS_TOKEN or FEDILAKE_STREAMER_ACCESS_TOKEN_FILE)"
                )
            response.raise_for_status()
            log.info("connected to %s", self._where())
            parser = SseParser()
            for line in response.iter_lines(chunk_size=64 * 1024):
                if self.stop_requested.is_set():
                    return
                item = parser.feed(line)
                if isinstance(item, SseEvent):
                    self._handle(item)
                elif isinstance(item, Heartbeat):
                    continue

    def _handle(self, item: SseEvent) -> None:
        try:
            envelope = wrap_event(
                item.event,
                item.data,
                instance=self.settings.instance_url,
                stream=self.settings.stream,
                received_at=datetime.now(UTC),
            )
        except MalformedEvent as exc:
            self.publisher.dead_letter(str(exc), item.data, self._where())
            return
        self.publisher.publish(envelope)


def run_streamer(listener: StreamListener, publisher: EventPublisher) -> None:
    """Run until stopped; always flush what was sent."""
    reporter = threading.Thread(target=_report, args=(listener, publisher), daemon=True)
    reporter.start()
    try:
        listener.run()
    finally:
        publisher.close()
        log.info(
            "streamer stopped: %d published, %d dead-lettered, %d failed",
            publisher.published,
            publisher.dead_lettered,
            publisher.failed,
        )


def _report(listener: StreamListener, publisher: EventPublisher, every_s: float = 10.0) -> None:
    last, last_t = 0, time.monotonic()
    while not listener.stop_requested.wait(every_s):
        now = time.monotonic()
        rate = (publisher.published - last) / (now - last_t)
        last, last_t = publisher.published, now
        log.info("published %d events (%.0f/s)", publisher.published, rate)
