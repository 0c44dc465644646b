"""`fedilake simulate`: a local Mastodon-compatible server streaming generated public statuses.

It speaks the parts of the Mastodon API the streamer uses (the public SSE stream, its
health check, the v1/v2 instance documents) and reports the ground truth of what it
sent at `/api/v1/_fedilake/ground-truth`, so tests can compare the pipeline's counts
with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from fedilake.settings import SimulatorSettings
from streamer.generator import DEFAULT_DOMAIN, GroundTruth, StatusGenerator

log = logging.getLogger(__name__)

MASTODON_VERSION = "4.3.0"
MASTODON_API_VERSION = 2

# Framing of Mastodon's streaming server (streaming/index.js, `streamToHttp`).
SSE_HELLO = b":)\n"
SSE_HEARTBEAT = b":thump\n"

SUBSCRIBER_QUEUE_BATCHES = 256  # per subscriber; one item is one tick's batch of events
MIN_TICK_S = 0.01
MAX_BATCH = 5000
UNPACED_BATCH = 500


def sse_event(event: str, payload: str) -> bytes:
    return f"event: {event}\ndata: {payload}\n\n".encode()


def _encode_status(status: dict[str, Any]) -> bytes:
    # One line of compact JSON, like the JSON.stringify Mastodon streams.
    return sse_event("update", json.dumps(status, ensure_ascii=False, separators=(",", ":")))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass(eq=False)
class _Subscriber:
    peer: str
    queue: asyncio.Queue[bytes] = field(
        default_factory=lambda: asyncio.Queue(maxsize=SUBSCRIBER_QUEUE_BATCHES)
    )

    def offer(self, chunk: bytes) -> bool:
        """Queue a chunk; False when the subscriber is too far behind to keep."""
        try:
            self.queue.put_nowait(chunk)
        except asyncio.QueueFull:
            return False
        return True

    def close(self) -> None:
        """Make the handler end the response: drop what is queued, then the stop mark."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(b"")  # the stop mark


class SimulatorServer:
    """The running simulator: an aiohttp app, its emission loop and its ground truth."""

    def __init__(
        self,
        settings: SimulatorSettings,
        generator: StatusGenerator | None = None,
        domain: str = DEFAULT_DOMAIN,
    ) -> None:
        self._settings = settings
        self._token = settings.token.get_secret_value()
        self._generator = generator or StatusGenerator.from_settings(settings, domain=domain)
        self._truth = GroundTruth()
        self._sent = 0
        self._done = False
        self._subscribers: set[_Subscriber] = set()
        self._has_subscribers = asyncio.Event()
        self._emitter: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._port = settings.port
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host = self._settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def done(self) -> bool:
        return self._done

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def ground_truth(self) -> dict[str, Any]:
        doc = self._truth.to_dict()
        doc["sent"] = self._sent
        doc["done"] = self._done
        return doc

    def build_app(self) -> web.Application:
        app = web.Application()
        routes = [
            web.get("/api/v1/streaming/public", self._handle_stream),
            web.get("/api/v1/streaming", self._handle_stream),
            web.get("/api/v1/streaming/", self._handle_stream),
            web.get("/api/v1/streaming/health", self._handle_health),
            web.get("/api/v1/_fedilake/ground-truth", self._handle_ground_truth),
        ]
        # Mastodon.py asks for `/api/v1/instance/`, with the slash; Rails accepts both.
        for path in ("/api/v1/instance", "/api/v1/instance/"):
            routes.append(web.get(path, self._handle_instance_v1))
        for path in ("/api/v2/instance", "/api/v2/instance/"):
            routes.append(web.get(path, self._handle_instance_v2))
        app.add_routes(routes)
        return app

    async def start(self) -> None:
        # No access log: it would print request URLs, and `access_token` may be one.
        self._runner = web.AppRunner(self.build_app(), shutdown_timeout=2.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.host, self._settings.port)
        await site.start()
        if self._runner.addresses:  # the bound port, when the settings asked for port 0
            self._port = int(self._runner.addresses[0][1])
        self._emitter = asyncio.create_task(self._emit_loop(), name="simulator-emitter")
        log.info(
            "simulator listening on %s (seed=%s rate=%s/s events=%s)",
            self.url,
            self._settings.seed,
            self._settings.rate,
            self._settings.events,
        )

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._emitter is not None:
            self._emitter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._emitter
        for subscriber in list(self._subscribers):
            subscriber.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._write_ground_truth()
        log.info("simulator stopped after %s statuses", self._sent)

    def _write_ground_truth(self) -> None:
        path = self._settings.ground_truth_file
        if path is None:
            return
        try:
            _write_atomically(path, json.dumps(self.ground_truth(), ensure_ascii=False, indent=1))
        except OSError as exc:
            log.error("could not write ground truth to %s: %s", path, exc)
        else:
            log.info("ground truth of %s statuses written to %s", self._sent, path)

    # ------------------------------------------------------------------ emission

    def _remaining(self) -> int | None:
        events = self._settings.events
        return None if events is None else max(events - self._sent, 0)

    async def _emit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        rate = self._settings.rate
        while self._remaining() != 0:
            await self._has_subscribers.wait()
            # Pace from the moment someone listens: nothing is due while nobody is.
            began, base = loop.time(), self._sent
            while self._subscribers and self._remaining() != 0:
                if rate > 0:
                    due = base + int((loop.time() - began) * rate) + 1
                    count = min(due - self._sent, MAX_BATCH)
                elif self._busiest_backlog() > SUBSCRIBER_QUEUE_BATCHES // 2:
                    # Unpaced: as fast as the slowest subscriber reads, never dropping it.
                    await asyncio.sleep(MIN_TICK_S)
                    continue
                else:
                    count = UNPACED_BATCH
                remaining = self._remaining()
                if remaining is not None:
                    count = min(count, remaining)
                if count > 0:
                    self._emit(count)
                if rate > 0:
                    next_due = began + (self._sent - base) / rate
                    await asyncio.sleep(max(next_due - loop.time(), MIN_TICK_S))
                else:
                    await asyncio.sleep(0)

    def _busiest_backlog(self) -> int:
        return max((s.queue.qsize() for s in self._subscribers), default=0)

    def _emit(self, count: int) -> None:
        parts: list[bytes] = []
        for _ in range(count):
            status = self._generator.next_status()
            self._truth.record(status)
            parts.append(_encode_status(status))
        self._sent += count
        chunk = b"".join(parts)
        for subscriber in list(self._subscribers):
            if not subscriber.offer(chunk):
                log.warning(
                    "disconnecting stream subscriber %s: %s batches behind",
                    subscriber.peer,
                    SUBSCRIBER_QUEUE_BATCHES,
                )
                self._unsubscribe(subscriber)
                subscriber.close()
        if self._remaining() == 0:
            self._done = True
            log.info("simulator emitted all %s statuses", self._sent)
            self._write_ground_truth()

    def _subscribe(self, subscriber: _Subscriber) -> None:
        self._subscribers.add(subscriber)
        self._has_subscribers.set()

    def _unsubscribe(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)
        if not self._subscribers:
            self._has_subscribers.clear()

    # ------------------------------------------------------------------ handlers

    def _auth_error(self, request: web.Request) -> str | None:
        """Mastodon's rule: the `Authorization` header, else the `access_token` parameter."""
        header = request.headers.get("Authorization")
        token = (
            header.removeprefix("Bearer ").strip()
            if header is not None
            else request.query.get("access_token", "")
        )
        if not token:
            return "Missing access token"
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            return "Invalid access token"
        return None

    async def _handle_stream(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/api/v1/streaming/public":
            stream = request.query.get("stream")
            if stream != "public":
                return web.json_response({"error": "Unknown stream type"}, status=400)
        error = self._auth_error(request)
        if error is not None:
            log.warning("refused stream for %s: %s", request.remote, error)
            return web.json_response({"error": error}, status=401)

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "private, no-store"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        subscriber = _Subscriber(peer=str(request.remote))
        await response.write(SSE_HELLO)
        self._subscribe(subscriber)
        log.info("stream subscriber %s connected (%s)", subscriber.peer, len(self._subscribers))
        loop = asyncio.get_running_loop()
        heartbeat = self._settings.heartbeat_s
        # A fixed cadence from connection time, like Mastodon's setInterval.
        next_beat = loop.time() + heartbeat if heartbeat > 0 else None
        try:
            while True:
                try:
                    async with asyncio.timeout_at(next_beat):
                        chunk = await subscriber.queue.get()
                except TimeoutError:
                    await response.write(SSE_HEARTBEAT)
                    next_beat = (next_beat or loop.time()) + heartbeat
                    continue
                if not chunk:
                    break
                await response.write(chunk)
        except ConnectionError:
            log.info("stream subscriber %s went away", subscriber.peer)
        finally:
            self._unsubscribe(subscriber)
            log.info("stream subscriber %s disconnected", subscriber.peer)
        return response

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK", content_type="text/plain")

    async def _handle_ground_truth(self, request: web.Request) -> web.Response:
        return web.json_response(self.ground_truth())

    def _instance_common(self) -> dict[str, Any]:
        return {
            "title": "fedilake simulator",
            "version": MASTODON_VERSION,
            "source_url": "https://github.com/mastodon/mastodon",
            "languages": ["en", "de", "ja", "fr", "es"],
            "rules": [{"id": "1", "text": "Simulated statuses only.", "hint": ""}],
        }

    def _configuration(self) -> dict[str, Any]:
        return {
            "accounts": {"max_featured_tags": 10, "max_pinned_statuses": 5},
            "statuses": {
                "max_characters": 500,
                "max_media_attachments": 4,
                "characters_reserved_per_url": 23,
            },
            "media_attachments": {
                "supported_mime_types": ["image/jpeg", "image/png", "image/gif", "video/mp4"],
                "image_size_limit": 16777216,
                "image_matrix_limit": 33177600,
                "video_size_limit": 103809024,
                "video_frame_rate_limit": 120,
                "video_matrix_limit": 8294400,
            },
            "polls": {
                "max_options": 4,
                "max_characters_per_option": 50,
                "min_expiration": 300,
                "max_expiration": 2629746,
            },
        }

    async def _handle_instance_v1(self, request: web.Request) -> web.Response:
        domain = self._generator.domain
        doc: dict[str, Any] = {
            "uri": domain,
            **self._instance_common(),
            "short_description": "A local Mastodon-compatible simulator for fedilake.",
            "description": "Generated public statuses for testing the fedilake pipeline.",
            "email": f"admin@{domain}",
            "urls": {"streaming_api": f"ws://{request.host}"},
            "stats": {"user_count": 2000, "status_count": self._sent, "domain_count": 8},
            "thumbnail": None,
            "registrations": False,
            "approval_required": False,
            "invites_enabled": False,
            "configuration": self._configuration(),
            "contact_account": None,
        }
        return web.json_response(doc)

    async def _handle_instance_v2(self, request: web.Request) -> web.Response:
        domain = self._generator.domain
        configuration = self._configuration()
        configuration["urls"] = {
            "streaming": f"ws://{request.host}",
            "status": None,
            "about": f"http://{request.host}/about",
            "privacy_policy": None,
            "terms_of_service": None,
        }
        configuration["translation"] = {"enabled": False}
        configuration["vapid"] = {"public_key": ""}
        doc: dict[str, Any] = {
            "domain": domain,
            **self._instance_common(),
            "description": "Generated public statuses for testing the fedilake pipeline.",
            "usage": {"users": {"active_month": 2000}},
            "thumbnail": {"url": f"http://{request.host}/packs/media/images/preview.png"},
            "icon": [],
            "configuration": configuration,
            "registrations": {"enabled": False, "approval_required": False, "message": None},
            "api_versions": {"mastodon": MASTODON_API_VERSION},
            "contact": {"email": f"admin@{domain}", "account": None},
        }
        return web.json_response(doc)


async def start_simulator(
    settings: SimulatorSettings, generator: StatusGenerator | None = None
) -> SimulatorServer:
    """Start serving on `settings.host:settings.port` (0 picks a free port; see `.url`)."""
    server = SimulatorServer(settings, generator)
    await server.start()
    return server


async def _serve_until_signalled(settings: SimulatorSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await start_simulator(settings)
    try:
        await stop.wait()
        log.info("simulator shutting down")
    finally:
        await server.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def run(settings: SimulatorSettings) -> None:
    """`fedilake simulate`: serve until SIGTERM or SIGINT, then stop cleanly."""
    asyncio.run(_serve_until_signalled(settings))
