"""Fault injection: dropped, stalled, malformed and duplicated streams, by endpoint and by plan."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from fedilake.settings import SimulatorSettings
from streamer import simulator
from streamer.simulator import (
    PlannedFault,
    SimulatorServer,
    parse_fault_plan,
    run_against,
)

pytestmark = pytest.mark.timeout(30)

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAULTS = "/api/v1/_fedilake/faults"


def _settings(**overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "token": TOKEN,
        "rate": 500.0,
        "heartbeat_s": 30.0,
        "start": "2026-11-23T10:00:00Z",
        "spread_s": 3600.0,
    }
    values.update(overrides)
    return SimulatorSettings(**values)


_serve = run_against


def _lines_to_events(raw: bytes) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """Events as an SSE parser sees them, and the lines it ignores (no field name)."""
    events: list[tuple[str, bytes]] = []
    ignored: list[bytes] = []
    event, data = b"", []
    for line in raw.split(b"\n")[:-1]:
        if not line:
            if data:
                events.append((event.decode() or "message", b"\n".join(data)))
            event, data = b"", []
        elif line.startswith(b":"):
            continue
        elif b":" not in line:
            ignored.append(line)
        else:
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"event":
                event = value
            elif name == b"data":
                data.append(value)
    return events, ignored


async def _read_for(response: aiohttp.ClientResponse, seconds: float) -> bytes:
    buffer = b""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            async with asyncio.timeout(left):
                chunk = await response.content.readany()
        except TimeoutError:
            break
        if not chunk:
            break
        buffer += chunk
    return buffer


async def _fault(session: aiohttp.ClientSession, url: str, **body: Any) -> dict[str, Any]:
    async with session.post(url + FAULTS, json=body) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


def test_fault_plan_parsing() -> None:
    plan = parse_fault_plan("drop=2, stall=1,malformed=0,duplicate=1", events=90, instances=2)
    assert plan == [
        PlannedFault(30, "drop", 0),
        PlannedFault(45, "duplicate", 0),
        PlannedFault(45, "stall", 0),
        PlannedFault(60, "drop", 1),
    ]
    assert parse_fault_plan(None, None, 1) == [] == parse_fault_plan(" ", 10, 1)
    for bad in ("boom=1", "drop", "drop=x", "drop=-1"):
        with pytest.raises(ValueError, match="ACTION=COUNT"):
            parse_fault_plan(bad, 10, 1)
    with pytest.raises(ValueError, match="bounded number of events"):
        parse_fault_plan("drop=1", None, 1)
    with pytest.raises(ValueError, match="bounded number of events"):
        SimulatorServer(_settings(faults="drop=1"))


def test_fault_plan_runs_at_its_event_counts() -> None:
    async def scenario() -> None:
        settings = _settings(
            events=100, instances=2, faults="drop=1,stall=1,malformed=3,duplicate=1"
        )
        server = SimulatorServer(settings)
        first = simulator._Subscriber(peer="first", instance=0)
        second = simulator._Subscriber(peer="second", instance=1)
        server._subscribe(first)
        server._subscribe(second)
        server._emit(25)  # malformed at 25 on instance 0
        chunks = []
        while not first.queue.empty():
            chunk = first.queue.get_nowait()
            assert chunk is not None
            chunks.append(chunk)
            server._settle(chunk)
        assert server.ground_truth()["malformed"] == 4
        assert server.ground_truth()["unknown"] == server.ground_truth()["garbage"] == 1
        assert chunks[-1].frames[-1].startswith(b"event: fedilake.unknown\n")
        # At 50: malformed on instance 1, then on instance 0 a duplicate, a stall, a drop.
        server._emit(25)
        truth = server.ground_truth()
        assert (truth["drops"], truth["stalls"]) == (1, 1)
        assert first.closing and first.stalled_until is not None
        queued = [first.queue.get_nowait() for _ in range(first.queue.qsize())]
        assert queued[-2:] == [None, None]  # woken to stall, then to end
        duplicate = queued[-3]
        assert duplicate is not None
        assert [tally for _, _, tally in duplicate.marks] == ["duplicate"]
        server._emit(50)
        assert server.done and not server._plan
        tallies = []
        while not second.queue.empty():
            chunk = second.queue.get_nowait()
            assert chunk is not None
            tallies.extend(tally for _, _, tally in chunk.marks)
        assert tallies.count("malformed:not_json") == 1 and "duplicate" not in tallies

    asyncio.run(scenario())


def test_fault_endpoint_checks_its_request() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        for body in (
            {"action": "explode"},
            {"action": "drop", "instance": 5},
            {"action": "drop", "instance": True},
            {"action": "stall", "seconds": 0},
            {"action": "malformed", "count": 0},
            [],
        ):
            async with session.post(server.url + FAULTS, json=body) as response:
                assert response.status == 400
                assert set(await response.json()) == {"error"}
        async with session.post(server.url + FAULTS, data=b"not json") as response:
            assert response.status == 400
        async with session.get(f"{server.url}/api/v1/_fedilake/ground-truth?expected=0") as r:
            counts = await r.json()
        assert "expected" not in counts and counts["drops"] == 0
        answer = await _fault(session, server.urls[1], action="drop")
        assert answer == {"action": "drop", "instances": [0, 1], "connections": 0}

    _serve(_settings(instances=2), scenario)


def test_drop_ends_the_stream_and_the_timeline_fills_the_gap() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming/public"
        async with session.get(url, headers=AUTH) as response:
            raw = await _read_for(response, 0.1)
            answer = await _fault(session, server.url, action="drop", instance=0)
            assert answer["connections"] == 1
            raw += await _read_for(response, 5)
            assert response.content.at_eof()  # ended, cleanly
        before = [json.loads(d) for e, d in _lines_to_events(raw)[0] if e == "update"]
        assert raw.endswith(b"\n\n") and before
        await asyncio.sleep(0.2)  # the gap: emission goes on without a subscriber
        async with session.get(url, headers=AUTH) as response:
            after_raw = await _read_for(response, 0.1)
        after = [json.loads(d) for e, d in _lines_to_events(after_raw)[0] if e == "update"]
        gap: list[dict[str, Any]] = []
        min_id = before[-1]["id"]
        while True:
            page_url = f"{server.url}/api/v1/timelines/public?min_id={min_id}&limit=40"
            async with session.get(page_url, headers=AUTH) as r:
                page = await r.json()
            ids = {s["id"] for s in page}
            gap.extend(reversed([s for s in page if s["id"] < after[0]["id"]]))
            if after[0]["id"] in ids or not page:
                break
            min_id = page[0]["id"]
        assert len(gap) > 20  # ~100 statuses came while nobody listened
        uris = [s["uri"] for s in before + gap + after]
        expected = [e["uri"] for e in server.ground_truth()["expected"]]
        assert uris == expected[: len(uris)]
        assert server.ground_truth()["drops"] == 1

    _serve(_settings(), scenario)


def test_drop_closes_websockets_as_going_away() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming?stream=public"
        async with session.ws_connect(url, headers=AUTH) as ws:
            assert (await ws.receive()).type is aiohttp.WSMsgType.TEXT
            await _fault(session, server.url, action="drop")
            async with asyncio.timeout(5):
                while (message := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    pass
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert message.data == aiohttp.WSCloseCode.GOING_AWAY

    _serve(_settings(), scenario)


def test_stall_keeps_the_connection_silent_then_closes_it() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        url = f"{server.url}/api/v1/streaming/public"
        async with session.get(url, headers=AUTH) as response:
            assert (await _read_for(response, 0.4)).count(
                b":thump"
            ) >= 2  # 0.04 s apart, under load too
            sent = server.sent
            began = loop.time()
            assert (await _fault(session, server.url, action="stall", seconds=2.0))[
                "connections"
            ] == 1
            await _read_for(response, 0.05)  # what was already on its way
            silent_from = loop.time()
            rest = await _read_for(response, 5)
            ended = loop.time()
            assert rest == b"" and response.content.at_eof()
        # The stall is long against scheduling delays: a 0.5 s hiccup cannot make it look short.
        assert ended - began >= 1.95 and ended - silent_from >= 1.4
        assert server.sent > sent + 50  # statuses went on being created
        ws_url = f"{server.url}/api/v1/streaming?stream=public"
        async with session.ws_connect(ws_url, headers=AUTH, autoping=False) as ws:
            assert (await ws.receive()).type is aiohttp.WSMsgType.TEXT
            await _fault(session, server.url, action="stall", seconds=0.4)
            await asyncio.sleep(0.05)
            await ws.ping()  # no answer comes while stalled
            kinds = []
            async with asyncio.timeout(5):
                while (message := await ws.receive()).type is not aiohttp.WSMsgType.CLOSE:
                    kinds.append(message.type)
            assert aiohttp.WSMsgType.PING not in kinds and aiohttp.WSMsgType.PONG not in kinds
        assert server.ground_truth()["stalls"] == 2

    _serve(_settings(heartbeat_s=0.04), scenario)


def test_malformed_events_on_sse() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming/public"
        async with session.get(url, headers=AUTH) as response:
            await _read_for(response, 0.05)
            await _fault(session, server.url, action="malformed")
            raw = await _read_for(response, 0.3)
        events, ignored = _lines_to_events(raw)
        assert ignored == [b"garbage line without a field name"]
        assert [d for e, d in events if e == "fedilake.unknown"]
        broken = []
        for event, data in events:
            if event != "update":
                continue
            try:
                status = json.loads(data.decode())
            except UnicodeDecodeError:
                broken.append("not_utf8")
                continue
            except json.JSONDecodeError:
                broken.append("not_json")
                continue
            if "uri" not in status:
                broken.append("no_uri")
            elif len(data) > 1 << 20:
                broken.append("too_large")
        assert sorted(broken) == ["no_uri", "not_json", "not_utf8", "too_large"]
        truth = server.ground_truth()
        assert truth["malformed"] == 4
        assert truth["malformed_by_reason"] == dict.fromkeys(
            ("not_json", "not_utf8", "no_uri", "too_large"), 1
        )
        assert (truth["garbage"], truth["unknown"]) == (1, 1)
        assert {e["uri"] for e in truth["expected"]}.isdisjoint(
            {json.loads(d).get("uri") for e, d in events if e == "update" and len(d) > 1 << 20}
        )

    _serve(_settings(), scenario)


def test_malformed_events_on_websocket() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming?stream=hashtag&tag=python"
        async with session.ws_connect(url, headers=AUTH, max_msg_size=4 << 20) as ws:
            await _fault(session, server.url, action="malformed", count=2)
            texts = []
            async with asyncio.timeout(5):
                while len(texts) < 12:
                    message = await ws.receive()
                    assert message.type is aiohttp.WSMsgType.TEXT
                    texts.append(message.data)
        unreadable = []
        for text in texts:
            try:
                frame = json.loads(text)
            except json.JSONDecodeError:
                unreadable.append("garbage")
                continue
            assert frame["stream"] in (["hashtag", "python"], ["public"])
            if frame["event"] == "fedilake.unknown":
                unreadable.append("unknown")
                continue
            try:
                status = json.loads(frame["payload"].encode())
            except UnicodeEncodeError:
                unreadable.append("not_utf8")
                continue
            except json.JSONDecodeError:
                unreadable.append("not_json")
                continue
            unreadable.append("too_large" if len(text) > 1 << 20 else "no_uri")
            assert "uri" not in status or len(text) > 1 << 20
        assert sorted(unreadable) == sorted(
            ["garbage", "unknown", "not_utf8", "not_json", "too_large", "no_uri"] * 2
        )
        assert server.ground_truth()["malformed"] == 8

    _serve(_settings(rate=0.0, events=1), scenario)


def test_duplicates_resend_the_latest_updates() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming/public"
        async with session.get(url, headers=AUTH) as response:
            raw = await _read_for(response, 0.2)
            assert server.done
            await _fault(session, server.url, action="duplicate", count=2)
            raw += await _read_for(response, 0.2)
        data = [d for e, d in _lines_to_events(raw)[0] if e == "update"]
        assert len(data) == 42 and data[-2:] == data[38:40]
        truth = server.ground_truth()
        assert truth["duplicates_injected"] == 2 and len(truth["expected"]) == 40

    _serve(_settings(rate=0.0, events=40), scenario)


def test_a_fault_plan_in_the_settings() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming/public"
        async with session.get(url, headers=AUTH) as response:
            raw = b""
            async with asyncio.timeout(10):
                while not server.done:
                    raw += await _read_for(response, 0.05)
            raw += await _read_for(response, 0.1)
        events, ignored = _lines_to_events(raw)
        updates = [d for e, d in events if e == "update"]
        truth = server.ground_truth()
        assert (truth["malformed"], truth["garbage"], truth["unknown"]) == (8, 2, 2)
        assert truth["duplicates_injected"] == 3 and len(ignored) == 2
        assert len(updates) == 300 + 3 + 8
        assert len(truth["expected"]) == 300

    _serve(_settings(rate=0.0, events=300, faults="malformed=2,duplicate=3"), scenario)


@pytest.mark.parametrize("instances", [1, 2])
def test_a_lossless_client_publishes_exactly_the_expected_events(instances: int) -> None:
    """A small client (reconnect, backfill from `min_id`, drop duplicates) under faults:
    what it publishes is exactly the ground truth's `expected`."""

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        published: list[tuple[str, str, str | None]] = []
        connections = 0
        loop = asyncio.get_running_loop()

        def settled() -> bool:
            return server.done and server.pending == 0

        async def follow(base: str) -> None:
            nonlocal connections
            uri_of: dict[str, str] = {}  # this instance's ids
            last_id = 0

            def publish(key: tuple[str, str, str | None]) -> None:
                if key not in published:
                    published.append(key)

            def publish_status(status: dict[str, Any]) -> None:
                nonlocal last_id
                last_id = max(last_id, int(status["id"]))
                uri_of[status["id"]] = status["uri"]
                publish((status["uri"], "status", None))

            def handle(event: str, data: bytes) -> None:
                try:
                    text = data.decode()
                    payload = text if event == "delete" else json.loads(text)
                except ValueError:
                    return  # dead-lettered
                if event == "delete":
                    # An id this instance never showed us names no status we know.
                    if str(payload) in uri_of:
                        publish((uri_of[str(payload)], "delete", None))
                elif event == "status.update":
                    publish((payload["uri"], "edit", payload["edited_at"]))
                elif event == "update" and "uri" in payload and len(data) <= 1 << 20:
                    publish_status(payload)
                # else: no uri or too large (dead-lettered), or an unknown kind (kept)

            async def backfill() -> None:
                min_id = last_id
                while True:
                    url = f"{base}/api/v1/timelines/public?min_id={min_id}&limit=40"
                    async with session.get(url, headers=AUTH) as response:
                        page = await response.json()
                    if not page:
                        return
                    for status in reversed(page):
                        publish_status(status)
                    min_id = int(page[0]["id"])

            while not settled():
                async with session.get(f"{base}/api/v1/streaming/public", headers=AUTH) as r:
                    connections += 1
                    if last_id:
                        await backfill()
                    buffer, quiet_at = b"", None
                    while True:
                        if quiet_at is None and settled():
                            quiet_at = loop.time() + 0.2  # read what is still on its way
                        if quiet_at is not None and loop.time() > quiet_at:
                            break
                        try:
                            async with asyncio.timeout(0.1):
                                chunk = await r.content.readany()
                        except TimeoutError:
                            continue
                        if not chunk:
                            break
                        buffer += chunk
                        complete, _, buffer = buffer.rpartition(b"\n\n")
                        for event, data in _lines_to_events(complete + b"\n\n")[0]:
                            handle(event, data)
            await backfill()

        async with asyncio.timeout(20):
            await asyncio.gather(*(follow(url) for url in server.urls))

        truth = server.ground_truth()
        assert (truth["drops"], truth["stalls"]) == (2, 1) and connections >= 2 + instances
        assert truth["edits"] > 5 and truth["deletes"] > 5 and truth["malformed"] >= 4
        assert truth["duplicates_injected"] >= 1
        expected = [(e["uri"], e["kind"], e["version"]) for e in truth["expected"]]
        assert len(published) == len(set(published))
        assert sorted(published, key=str) == sorted(expected, key=str)

    _serve(
        _settings(
            instances=instances,
            federation_share=0.5,
            rate=800.0,
            events=600,
            edit_share=0.1,
            delete_share=0.1,
            faults="drop=2,stall=1,malformed=3,duplicate=2",
            stall_s=0.2,
            heartbeat_s=0.05,
        ),
        scenario,
    )
