"""The streamer on real Kafka: every simulated event published once, malformed input dead-lettered."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kafka import KafkaConsumer

from fedilake.contracts import Envelope, EventKind, Topics
from fedilake.settings import KafkaSettings, SimulatorSettings, StreamerSettings
from fedilake.stack.control import LocalStack
from streamer.listener import StreamAuthError, StreamListener, run_streamer
from streamer.publisher import EventPublisher, make_producer
from streamer.simulator import start_simulator

pytestmark = pytest.mark.integration


def read_topic(topic: str, match: Any, expected: int, timeout_s: float = 30) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=KafkaSettings().bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    found: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for record in consumer:
                if match(record.value):
                    found.append(record.value)
            if len(found) >= expected:
                break
    finally:
        consumer.close()
    return found


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


def test_every_simulated_event_reaches_kafka_exactly_once(
    stack: LocalStack, simulator: Any
) -> None:
    settings = StreamerSettings(instance_url=simulator.url, access_token=SimulatorSettings().token)
    publisher = EventPublisher(make_producer(KafkaSettings()))
    listener = StreamListener(settings, publisher)
    thread = threading.Thread(target=run_streamer, args=(listener, publisher))
    thread.start()
    deadline = time.monotonic() + 60
    while not simulator.done and time.monotonic() < deadline:
        time.sleep(0.2)
    while publisher.published < 500 and time.monotonic() < deadline:
        time.sleep(0.2)
    listener.stop()
    thread.join(60)
    assert simulator.done and publisher.published == 500 and publisher.failed == 0

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
    stack: LocalStack, malformed_server: tuple[str, str]
) -> None:
    url, marker = malformed_server
    publisher = EventPublisher(make_producer(KafkaSettings()))
    listener = StreamListener(StreamerSettings(instance_url=url, access_token="good"), publisher)
    thread = threading.Thread(target=listener.run)
    thread.start()
    deadline = time.monotonic() + 20
    while publisher.published < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    listener.stop()
    thread.join(30)
    publisher.close()
    assert (publisher.published, publisher.dead_lettered) == (1, 1)

    [record] = read_topic(Topics.DEAD_LETTER.name, lambda v: marker.encode() in v, 1)
    doc = json.loads(record)
    assert "not JSON" in doc["reason"]
    assert doc["original"] == "{not json " + marker
    [good] = read_topic(Topics.EVENTS.name, lambda v: marker.encode() in v, 1)
    assert Envelope.from_bytes(good).uri == f"https://bad.example/s/{marker}"


def test_a_refused_token_is_a_clear_error_naming_the_instance(
    stack: LocalStack, malformed_server: tuple[str, str]
) -> None:
    url, _ = malformed_server
    publisher = EventPublisher(make_producer(KafkaSettings()))
    listener = StreamListener(
        StreamerSettings(instance_url=url, access_token="s3cret-wrong"), publisher
    )
    with pytest.raises(StreamAuthError) as refused:
        listener.run()
    publisher.close()
    assert url in str(refused.value) and "read:statuses" in str(refused.value)
    assert "s3cret-wrong" not in str(refused.value)
