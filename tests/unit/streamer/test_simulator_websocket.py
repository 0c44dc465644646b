"""The simulator's WebSocket streaming: tokens, subscriptions, Mastodon's frames, pings."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

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
        "rate": 1000.0,
        "heartbeat_s": 30.0,
        "start": "2026-11-23T10:00:00Z",
        "spread_s": 3600.0,
    }
    values.update(overrides)
    return SimulatorSettings(**values)


_serve = run_against


async def _frames(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(frames) < count:
            message = await ws.receive()
            assert message.type is aiohttp.WSMsgType.TEXT, message
            frames.append(json.loads(message.data))
    return frames


def test_websocket_streams_mastodon_frames_from_the_query() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming?stream=public&access_token={TOKEN}"
        async with session.ws_connect(url) as ws:
            frames = await _frames(ws, 20)
        for frame in frames:
            assert list(frame) == ["stream", "event", "payload"]
            assert frame["stream"] == ["public"] and frame["event"] == "update"
            assert isinstance(frame["payload"], str)
            assert json.loads(frame["payload"])["uri"].startswith("https://")
        ids = [int(json.loads(f["payload"])["id"]) for f in frames]
        assert ids == sorted(ids)

    _serve(_settings(), scenario)


def test_websocket_subscribes_by_message_and_takes_the_token_as_protocol() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming"
        async with session.ws_connect(url, protocols=(TOKEN,)) as ws:
            assert ws.protocol == TOKEN
            await ws.send_json({"type": "subscribe", "stream": "hashtag", "tag": "Fediverse"})
            await ws.send_json({"type": "subscribe", "stream": "public:local"})
            await ws.send_json({"type": "subscribe", "stream": "nope"})
            frames = await _frames(ws, 30)
            errors = [f for f in frames if "error" in f]
            assert errors == [{"error": "Unknown stream type", "status": 400}]
            events = [f for f in frames if "error" not in f]
            names = {tuple(f["stream"]) for f in events}
            assert names == {("hashtag", "Fediverse"), ("public:local",)}
            for frame in events:
                status = json.loads(frame["payload"])
                if frame["stream"][0] == "hashtag":
                    assert "fediverse" in {t["name"] for t in status["tags"]}
                else:
                    assert "@" not in status["account"]["acct"]
            await ws.send_json({"type": "unsubscribe", "stream": "public:local"})
            await asyncio.sleep(0.05)
            frames = await _frames(ws, 20)
            late = [f for f in frames[-5:] if "error" not in f]
            assert {tuple(f["stream"]) for f in late} == {("hashtag", "Fediverse")}

    _serve(_settings(), scenario)


def test_websocket_refuses_a_missing_or_wrong_token() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming?stream=public"
        for kwargs in ({}, {"headers": {"Authorization": "Bearer wrong"}}, {"protocols": ("x",)}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with session.ws_connect(url, **kwargs):
                    pass
            assert refused.value.status == 401
        async with session.ws_connect(url, headers=AUTH) as ws:
            assert (await _frames(ws, 1))[0]["event"] == "update"

    _serve(_settings(), scenario)


def test_websocket_pings_and_closes_a_peer_that_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(simulator, "WS_SILENT_LIMIT_S", 0.3)

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming"
        # A reading client answers the pings (aiohttp does in receive()) and stays connected.
        async with session.ws_connect(f"{url}?stream=public", headers=AUTH) as ws:
            assert (await _frames(ws, 1))[0]["event"] == "update"
            with pytest.raises(TimeoutError):  # heartbeats, answered, and nothing else
                async with asyncio.timeout(0.8):
                    await ws.receive()
            assert not ws.closed
        # A silent one is pinged, then closed.
        async with session.ws_connect(url, headers=AUTH, autoping=False) as ws:
            kinds = []
            async with asyncio.timeout(5):
                while True:
                    message = await ws.receive()
                    kinds.append(message.type)
                    if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        break
            assert kinds[0] is aiohttp.WSMsgType.PING
            assert kinds[-1] in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await asyncio.sleep(0.05)
        assert server.subscriber_count == 0

    _serve(_settings(heartbeat_s=0.1, rate=0.0, events=1), scenario)


def test_websocket_carries_edits_and_deletes() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming?stream=public"
        async with session.ws_connect(url, headers=AUTH) as ws:
            frames = await _frames(ws, 200)
        seen: dict[str, str] = {}
        deletes = edits = 0
        for frame in frames:
            if frame["event"] == "delete":
                assert frame["payload"] in seen  # the bare id of a status sent before
                deletes += 1
                continue
            status = json.loads(frame["payload"])
            if frame["event"] == "status.update":
                assert seen[status["id"]] == status["uri"] and status["edited_at"]
                edits += 1
            seen[status["id"]] = status["uri"]
        assert edits and deletes
        await asyncio.sleep(0.1)
        truth = server.ground_truth()
        assert truth["edits"] >= edits and truth["deletes"] >= deletes

    _serve(_settings(edit_share=0.2, delete_share=0.2, rate=2000.0), scenario)
