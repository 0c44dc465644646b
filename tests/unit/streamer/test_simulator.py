"""The local Mastodon-compatible simulator, served in-process on a free port."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mastodon import Mastodon, StreamListener

from fedilake.contracts import parse_time
from fedilake.settings import SimulatorSettings
from streamer import simulator
from streamer.simulator import SimulatorServer, run_against

pytestmark = pytest.mark.timeout(30)

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _settings(**overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "token": TOKEN,
        "rate": 2000.0,
        "heartbeat_s": 30.0,
        "start": "2026-11-23T10:00:00Z",
        "spread_s": 7200.0,
    }
    values.update(overrides)
    return SimulatorSettings(**values)


_serve = run_against


async def _read_until(
    response: aiohttp.ClientResponse, done: Callable[[bytes], bool], limit_s: float = 10.0
) -> bytes:
    buffer = b""
    async with asyncio.timeout(limit_s):
        while not done(buffer):
            chunk = await response.content.readany()
            if not chunk:
                break
            buffer += chunk
    return buffer


def _parse_stream(raw: bytes) -> tuple[list[dict[str, Any]], int]:
    """Split a stream into update payloads and heartbeats, failing on any other framing."""
    events: list[dict[str, Any]] = []
    beats = 0
    if len(raw) < 3:
        return events, beats
    assert raw.startswith(b":)\n")
    rest = raw[3:]
    while rest:
        if rest.startswith(b":thump\n"):
            beats += 1
            rest = rest[len(b":thump\n") :]
            continue
        if b":thump\n".startswith(rest) or b"event: update\ndata: ".startswith(rest):
            break  # a frame still arriving
        assert rest.startswith(b"event: update\ndata: "), rest[:80]
        end = rest.find(b"\n\n")
        if end < 0:
            break  # an event still arriving
        data = rest[len(b"event: update\ndata: ") : end]
        assert b"\n" not in data
        events.append(json.loads(data))
        rest = rest[end + 2 :]
    return events, beats


def test_simulator_stream_refuses_without_a_valid_token() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming/public"
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with session.get(url, headers=headers) as response:
                assert response.status == 401
                body = await response.json()
                assert set(body) == {"error"}
        async with session.get(f"{url}?access_token=wrong") as response:
            assert response.status == 401
        assert server.sent == 0

    _serve(_settings(events=5), scenario)


def test_simulator_stream_accepts_the_access_token_parameter() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming?stream=public&access_token={TOKEN}"
        async with session.get(url) as response:
            assert response.status == 200
            raw = await _read_until(response, lambda b: len(_parse_stream(b)[0]) >= 2)
            assert len(_parse_stream(raw)[0]) == 2

    _serve(_settings(events=2), scenario)


def test_simulator_health_and_instance_documents_point_at_itself() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        async with session.get(f"{server.url}/api/v1/streaming/health") as response:
            assert response.status == 200
            assert await response.text() == "OK"
        ws_url = server.url.replace("http://", "ws://")
        async with session.get(f"{server.url}/api/v1/instance") as response:
            v1 = await response.json()
        async with session.get(f"{server.url}/api/v2/instance/") as response:
            v2 = await response.json()
        assert v1["urls"]["streaming_api"] == ws_url
        assert v2["configuration"]["urls"]["streaming"] == ws_url
        assert v1["version"] == v2["version"] == "4.3.0"
        assert v2["api_versions"] == {"mastodon": 2}

    _serve(_settings(), scenario)


def test_simulator_frames_events_and_heartbeats_like_mastodon() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming/public"
        async with session.get(url, headers=AUTH) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            raw = await _read_until(response, lambda b: b.count(b":thump\n") >= 2)
        events, beats = _parse_stream(raw)
        assert beats == 2
        assert len(events) == 3
        assert raw.startswith(b":)\nevent: update\ndata: {")
        assert raw.endswith(b"}\n\n:thump\n:thump\n")
        assert [e["id"] for e in events] == sorted(e["id"] for e in events)

    _serve(_settings(events=3, heartbeat_s=0.2), scenario)


def test_simulator_waits_for_a_subscriber_then_sends_exactly_n(tmp_path: Path) -> None:
    truth_file = tmp_path / "truth" / "ground-truth.json"

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(0.1)
        async with session.get(f"{server.url}/api/v1/_fedilake/ground-truth") as response:
            before = await response.json()
        assert before["sent"] == 0 and before["done"] is False

        async with session.get(f"{server.url}/api/v1/streaming/public", headers=AUTH) as r:
            raw = await _read_until(r, lambda b: b.count(b"\n\n") >= 400)
        events, _ = _parse_stream(raw)
        assert len(events) == 400

        async with session.get(f"{server.url}/api/v1/_fedilake/ground-truth") as response:
            truth = await response.json()
        assert truth["sent"] == truth["statuses"] == 400
        assert truth["done"] is True
        recount: dict[str, Counter[str]] = {}
        for event in events:
            hour = parse_time(event["created_at"]).strftime("%Y%m%d%H")
            recount.setdefault(hour, Counter()).update({t["name"] for t in event["tags"]})
        assert truth["hashtags_by_hour"] == {h: dict(c) for h, c in recount.items() if c}
        assert sorted(truth["hashtags_by_hour"]) == ["2026112310", "2026112311"]
        assert json.loads(truth_file.read_text()) == truth

    _serve(_settings(events=400, rate=0.0, ground_truth_file=truth_file), scenario)


def test_simulator_broadcasts_to_every_subscriber() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming/public"
        async with session.get(url, headers=AUTH) as first:
            head = await _read_until(first, lambda b: b.count(b"\n\n") >= 1)
            async with session.get(url, headers=AUTH) as second:
                late = await _read_until(second, lambda b: b.endswith(b"\n\n:thump\n"))
            early = head + await _read_until(first, lambda b: b.endswith(b"\n\n:thump\n"))
        first_ids = [e["id"] for e in _parse_stream(early)[0]]
        late_ids = [e["id"] for e in _parse_stream(late)[0]]
        assert len(first_ids) == 200
        assert 0 < len(late_ids) < 200
        assert first_ids[-len(late_ids) :] == late_ids

    # Half a second of emission, for the second subscriber to join inside, and the first
    # heartbeat (which ends each read) 1.5 s after it: both wide on a loaded machine.
    _serve(_settings(events=200, rate=400.0, heartbeat_s=2.0), scenario)


def test_simulator_paces_emission_at_the_configured_rate() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        async with session.get(f"{server.url}/api/v1/streaming/public", headers=AUTH) as r:
            loop = asyncio.get_running_loop()
            began = loop.time()
            raw = await _read_until(r, lambda b: b.count(b"\n\n") >= 1000)
            elapsed = loop.time() - began
        assert len(_parse_stream(raw)[0]) == 1000
        assert 0.3 < elapsed < 3.0  # 1000 events at 2000/s: about half a second

    _serve(_settings(events=1000, rate=2000.0), scenario)


def test_simulator_drops_a_subscriber_that_falls_behind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(simulator, "SUBSCRIBER_QUEUE_BATCHES", 2)

    async def scenario() -> None:
        server = SimulatorServer(_settings())
        slow = simulator._Subscriber(peer="slow")
        fast = simulator._Subscriber(peer="fast")
        server._subscribe(slow)
        server._subscribe(fast)
        with caplog.at_level(logging.WARNING, logger="streamer.simulator"):
            for _ in range(3):
                server._emit(1)
                fast.queue.get_nowait()
        assert server.subscriber_count == 1
        assert slow.queue.get_nowait() is None  # told to end its response, nothing queued
        assert slow.closing
        assert "slow" in caplog.text
        assert TOKEN not in caplog.text

    asyncio.run(scenario())


def test_simulator_serves_mastodon_py() -> None:
    class Collector(StreamListener):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.updates: list[Any] = []
            self.enough = threading.Event()

        def on_update(self, status: Any) -> None:
            self.updates.append(status)
            if len(self.updates) >= 5:
                self.enough.set()

    def use_mastodon_py(url: str) -> tuple[Any, list[Any]]:
        client = Mastodon(api_base_url=url, access_token=TOKEN)
        instance = client.instance()
        listener = Collector()
        handle = client.stream_public(listener, run_async=True)
        try:
            assert listener.enough.wait(10)
        finally:
            handle.close()
        return instance, listener.updates

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        instance, updates = await asyncio.to_thread(use_mastodon_py, server.url)
        assert instance["version"] == "4.3.0"
        assert instance["configuration"]["urls"]["streaming"].startswith("ws://127.0.0.1:")
        assert len(updates) == 5
        assert updates[0]["uri"].startswith("https://")

    _serve(_settings(events=5, heartbeat_s=0.2), scenario)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_simulator_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    truth_file = tmp_path / "truth.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
        "FEDILAKE_SIMULATOR_PORT": str(port),
        "FEDILAKE_SIMULATOR_TOKEN": TOKEN,
        "FEDILAKE_SIMULATOR_GROUND_TRUTH_FILE": str(truth_file),
    }
    code = (
        "from fedilake.settings import SimulatorSettings as S; "
        "from streamer.simulator import run; run(S())"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert process.poll() is None, "simulator exited early"
                assert time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr.decode()
    assert json.loads(truth_file.read_text())["sent"] == 0
    assert TOKEN.encode() not in stderr
