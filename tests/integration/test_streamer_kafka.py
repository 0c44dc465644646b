"""The streamer on real Kafka: every simulated event published once, malformed input dead-lettered."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fedilake.contracts import Envelope, EventKind, Topics
from fedilake.kafka_topics import read_since
from fedilake.settings import KafkaSettings, SimulatorSettings, StreamerSettings
from fedilake.stack.control import LocalStack
from streamer.daemon import Streamer
from streamer.simulator import start_simulator
from streamer.sources import configured_sources
from streamer.transports import StreamAuthError

pytestmark = pytest.mark.integration


def read_topic(topic: str, match: Any, expected: int, timeout_s: float = 30) -> list[bytes]:
    """The values of `topic` written since this test module started that `match`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [r.value for r in read_since(KafkaSettings(), topic, STARTED_MS) if match(r.value)]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


STARTED_MS = int(time.time() * 1000) - 1000


@pytest.fixture
def simulator() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    settings = SimulatorSettings(port=0, events=500, rate=2000, seed=7)
    server = asyncio.run_coroutine_threadsafe(start_simulator(settings), loop).result(30)
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)


@contextmanager
def running_streamer(state_dir: Path, **settings: Any) -> Iterator[Streamer]:
    """An in-process streamer with its own state directory, stopped (and drained) at exit."""
    config = StreamerSettings(state_dir=state_dir, stall_timeout_s=10, **settings)
    streamer = Streamer(config, KafkaSettings(), configured_sources(config))
    streamer.start()
    try:
        yield streamer
    finally:
        streamer.stop()


def wait_until(what: str, condition: Callable[[], Any], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_every_simulated_event_reaches_kafka_exactly_once(
    stack: LocalStack, simulator: Any, tmp_path: Path
) -> None:
    with running_streamer(
        tmp_path, instance_url=simulator.url, access_token=SimulatorSettings().token
    ) as streamer:
        wait_until("the simulator", lambda: simulator.done)
        wait_until("500 events in Kafka", lambda: streamer.delivered_events >= 500)
    assert streamer.ingestor.counts["published"] == 500

    def ours(value: bytes) -> bool:
        return json.loads(value)["instance"] == simulator.url

    envelopes = [Envelope.from_bytes(v) for v in read_topic(Topics.EVENTS.name, ours, 500)]
    assert len(envelopes) == 500
    assert all(e.kind is EventKind.STATUS for e in envelopes)
    assert Counter(Counter(e.uri for e in envelopes).values()) == {1: 500}
    truth = simulator.ground_truth()
    assert truth["statuses"] == 500


class _MalformedStream(BaseHTTPRequestHandler):
    marker = ""

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/api/v1/instance", "/api/v2/instance"):
            body = json.dumps(
                {
                    "uri": "bad.example",
                    "version": "4.3.0",
                    "urls": {},
                    "api_versions": {"mastodon": 2},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/api/v1/timelines/"):
            # A server without REST timelines: backfill fails, the stream must go on.
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.headers.get("Authorization") != "Bearer good":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        status = {
            "id": "1",
            "uri": f"https://bad.example/s/{self.marker}",
            "created_at": "2026-01-01T00:00:00.000Z",
        }
        self.wfile.write(b":)\n")
        self.wfile.write(f"event: update\ndata: {{not json {self.marker}\n\n".encode())
        self.wfile.write(f"event: update\ndata: {json.dumps(status)}\n\n".encode())
        self.wfile.flush()
        # Then stay connected, as a stream does: a reconnect would send both events again.
        for _ in range(60):
            time.sleep(0.5)
            try:
                self.wfile.write(b":thump\n")
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def malformed_server() -> Iterator[tuple[str, str]]:
    marker = uuid.uuid4().hex
    handler = type("Handler", (_MalformedStream,), {"marker": marker})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", marker
    server.shutdown()


def test_malformed_events_go_to_the_dead_letter_topic_and_the_stream_goes_on(
    stack: LocalStack, malformed_server: tuple[str, str], tmp_path: Path
) -> None:
    url, marker = malformed_server
    with running_streamer(tmp_path, instance_url=url, access_token="good") as streamer:
        wait_until("both events in Kafka", lambda: streamer.delivered_events >= 2, 30)
    assert streamer.ingestor.counts["published"] == 1
    assert streamer.ingestor.counts["dead-lettered"] == 1

    [record] = read_topic(Topics.DEAD_LETTER.name, lambda v: marker.encode() in v, 1)
    doc = json.loads(record)
    assert "not JSON" in doc["reason"]
    assert doc["original"] == "{not json " + marker
    [good] = read_topic(Topics.EVENTS.name, lambda v: marker.encode() in v, 1)
    assert Envelope.from_bytes(good).uri == f"https://bad.example/s/{marker}"


def test_a_refused_token_is_a_clear_error_naming_the_instance(
    stack: LocalStack,
    malformed_server: tuple[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, _ = malformed_server
    with running_streamer(tmp_path, instance_url=url, access_token="s3cret-wrong") as streamer:
        assert streamer.wait() == 2  # every source refused: the daemon gives up
    error = streamer.listeners[0].error
    assert isinstance(error, StreamAuthError)
    assert url in str(error) and "read:statuses" in str(error)
    assert "s3cret-wrong" not in str(error) and "s3cret-wrong" not in caplog.text


def test_refreshes_carry_the_counts_the_instance_returned_and_opt_outs_are_anonymous(
    stack: LocalStack, tmp_path: Path
) -> None:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    # A generous rate limit: the refresher takes at most half of it (FEDILAKE_STREAMER_REFRESH_SHARE).
    settings = SimulatorSettings(port=0, events=300, rate=300, seed=9, rate_limit=5000)
    simulator = asyncio.run_coroutine_threadsafe(start_simulator(settings), loop).result(30)
    try:
        with running_streamer(
            tmp_path,
            instance_url=simulator.url,
            access_token=SimulatorSettings().token,
            refresh_ages_s="1,2",
        ) as streamer:
            wait_until("the simulator", lambda: simulator.done)
            wait_until(
                "two refreshes of every status",
                lambda: sum(r.refreshed for r in streamer.refreshers) >= 600,
                90,
            )
            wait_until("Kafka to take them", lambda: streamer.delivered_events >= 900)
        truth = simulator.ground_truth()
    finally:
        asyncio.run_coroutine_threadsafe(simulator.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)

    ours = [
        Envelope.from_bytes(v)
        for v in read_topic(Topics.EVENTS.name, lambda v: simulator.url.encode() in v, 900)
    ]
    last_refresh = {e.uri: e.payload_json for e in ours if e.kind is EventKind.REFRESH and e.uri}
    assert len(last_refresh) == 300
    for uri, counts in truth["engagement"].items():
        refreshed = last_refresh[uri]
        for field in ("favourites_count", "reblogs_count", "replies_count"):
            assert refreshed[field] == counts[field], (uri, field)

    statuses = [e.payload_json for e in ours if e.kind is EventKind.STATUS]
    anonymous = [s for s in statuses if s.get("fedilake_anonymized")]
    assert len(anonymous) == truth["opted_out_statuses"] > 0
    assert all(s["account"]["acct"] == "" and s["content"] == "" for s in anonymous)
