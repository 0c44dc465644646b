"""The simulated fediverse: several instances, federation, streams, boosts, edits and deletes."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from fedilake.contracts import parse_time
from fedilake.settings import SimulatorSettings
from streamer import simulator
from streamer.generator import DEFAULT_DOMAIN
from streamer.simulator import SimulatorServer, Subscription, run_against

pytestmark = pytest.mark.timeout(30)

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _settings(**overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "token": TOKEN,
        "rate": 0.0,
        "heartbeat_s": 30.0,
        "start": "2026-11-23T10:00:00Z",
        "spread_s": 7200.0,
    }
    values.update(overrides)
    return SimulatorSettings(**values)


_serve = run_against


def parse_sse(raw: bytes) -> list[tuple[str, bytes]]:
    """(event, data) of every complete event, per the SSE specification's rules."""
    events: list[tuple[str, bytes]] = []
    event, data = b"", []
    for line in raw.split(b"\n")[:-1]:
        if not line:
            if data:
                events.append(((event or b"message").decode(), b"\n".join(data)))
            event, data = b"", []
        elif line.startswith(b":"):
            continue
        else:
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"event":
                event = value
            elif name == b"data":
                data.append(value)
    return events


async def collect(
    session: aiohttp.ClientSession,
    url: str,
    until: Callable[[], bool],
    quiet_s: float = 0.3,
) -> bytes:
    """Read a stream until `until()` holds and nothing more came for `quiet_s`."""
    buffer = b""
    async with session.get(url, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        async with asyncio.timeout(15):
            while True:
                try:
                    async with asyncio.timeout(quiet_s):
                        chunk = await response.content.readany()
                except TimeoutError:
                    if until():
                        return buffer
                    continue
                if not chunk:
                    return buffer
                buffer += chunk


async def _all_statuses(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    """Every status of an instance's public timeline, newest first, by `max_id` pages."""
    statuses: list[dict[str, Any]] = []
    query = "limit=40"
    while True:
        async with session.get(f"{url}/api/v1/timelines/public?{query}", headers=AUTH) as r:
            assert r.status == 200
            page = await r.json()
        if not page:
            return statuses
        statuses.extend(page)
        query = f"limit=40&max_id={page[-1]['id']}"


def _settled(server: SimulatorServer) -> Callable[[], bool]:
    return lambda: server.done and server.pending == 0


def test_instances_listen_on_consecutive_ports_with_their_own_domains() -> None:
    settings = _settings(instances=3)
    server = SimulatorServer(settings)
    assert server.domains == [DEFAULT_DOMAIN, "sim1.fedilake.example", "sim2.fedilake.example"]

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        assert len(set(server.urls)) == 3 and server.url == server.urls[0]
        for url, domain in zip(server.urls, server.domains, strict=True):
            async with session.get(f"{url}/api/v2/instance") as response:
                assert (await response.json())["domain"] == domain
        truth = server.ground_truth()
        assert [i["url"] for i in truth["instances"]] == server.urls
        assert [i["domain"] for i in truth["instances"]] == server.domains

    _serve(settings, scenario)


def test_statuses_federate_under_instance_local_ids() -> None:
    settings = _settings(instances=3, federation_share=0.4, events=300)

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        # Emission starts with the first subscriber; the timelines fill on every instance.
        await collect(session, f"{server.url}/api/v1/streaming/public", lambda: server.done)
        order = [e["uri"] for e in server.ground_truth()["expected"]]
        assert len(order) == len(set(order)) == 300
        by_instance = [await _all_statuses(session, url) for url in server.urls]

        seen: dict[str, dict[int, str]] = {}
        for k, (statuses, domain) in enumerate(zip(by_instance, server.domains, strict=True)):
            ids = [int(s["id"]) for s in statuses]
            assert ids == sorted(ids, reverse=True)  # newest first
            emitted = sorted(statuses, key=lambda s: order.index(s["uri"]))
            emitted_ids = [int(s["id"]) for s in emitted]
            assert emitted_ids == sorted(set(emitted_ids))  # increasing in emission order
            for status in statuses:
                seen.setdefault(status["uri"], {})[k] = status["id"]
                home = status["account"]["url"].split("/")[2]
                local = home == domain
                assert ("@" not in status["account"]["acct"]) is local
                assert ("application" in status) is local
                assert all(t["url"].startswith(f"https://{domain}/tags/") for t in status["tags"])
        assert set(seen) == set(order)  # every status landed somewhere
        spread = Counter(len(ids) for ids in seen.values())
        assert spread[1] > 0 and spread[2] + spread[3] > 0
        for ids in seen.values():
            assert len(set(ids.values())) == len(ids)  # one status, a different id per instance
        for uri, ids in seen.items():
            # On its author's own instance a status is named after its local id there.
            home = uri.split("/")[2]
            if home in server.domains:
                k = server.domains.index(home)
                assert k in ids and uri.endswith(f"/statuses/{ids[k]}")

    _serve(settings, scenario)


def test_local_remote_and_hashtag_streams_filter_the_public_one() -> None:
    settings = _settings(instances=2, federation_share=0.5, events=400)

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        base = f"{server.urls[1]}/api/v1/streaming"
        paths = {
            "public": "/public",
            "local": "/public/local",
            "remote": "?stream=public:remote",
            "tag": "/hashtag?tag=Fediverse",
            "local_tag": "/hashtag/local?tag=fediverse",
            "media": "/public?only_media=true",
        }
        raws = await asyncio.gather(
            *(collect(session, base + path, lambda: server.done) for path in paths.values())
        )
        got = {
            name: [json.loads(data) for event, data in parse_sse(raw) if event == "update"]
            for name, raw in zip(paths, raws, strict=True)
        }
        domain = server.domains[1]

        def ids(name: str) -> list[str]:
            return [s["id"] for s in got[name]]

        def home(status: dict[str, Any]) -> str:
            return str(status["account"]["url"]).split("/")[2]

        assert len(got["public"]) > 50
        assert {home(s) for s in got["local"]} == {domain}
        assert domain not in {home(s) for s in got["remote"]}
        assert sorted(ids("local") + ids("remote")) == sorted(ids("public"))
        tagged = [s["id"] for s in got["public"] if "fediverse" in {t["name"] for t in s["tags"]}]
        assert ids("tag") == tagged and tagged
        assert ids("local_tag") == [s["id"] for s in got["local"] if s["id"] in tagged]
        assert ids("media") == [s["id"] for s in got["public"] if s["media_attachments"]]

        for path, error in (
            ("?stream=nope", "Unknown stream type"),
            ("/hashtag", "No tag for stream provided"),
            ("?stream=hashtag", "No tag for stream provided"),
        ):
            async with session.get(base + path, headers=AUTH) as response:
                assert response.status == 400
                assert await response.json() == {"error": error}

    _serve(settings, scenario)


def _replay(events: list[tuple[str, bytes]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What a client makes of one connection's events: the expected list and final state."""
    expected: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    final: dict[str, dict[str, Any]] = {}
    for event, data in events:
        if event == "delete":
            status = by_id[data.decode()]
            expected.append({"uri": status["uri"], "kind": "delete", "version": None})
            final.pop(status["uri"])
            continue
        status = json.loads(data)
        if event == "update":
            assert status["id"] not in by_id
            expected.append({"uri": status["uri"], "kind": "status", "version": None})
        else:
            assert event == "status.update"
            before = by_id[status["id"]]
            assert status["uri"] == before["uri"]
            assert status["created_at"] == before["created_at"]
            assert status["edited_at"] > (before["edited_at"] or before["created_at"])
            assert status["tags"] != before["tags"]
            expected.append({"uri": status["uri"], "kind": "edit", "version": status["edited_at"]})
        by_id[status["id"]] = status
        final[status["uri"]] = status
    return expected, final


def test_edits_and_deletes_reach_the_stream_the_timeline_and_the_ground_truth() -> None:
    settings = _settings(events=400, edit_share=0.15, delete_share=0.1)

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/streaming/public"
        raw = await collect(session, url, _settled(server))
        events = parse_sse(raw)
        kinds = Counter(event for event, _ in events)
        assert kinds["status.update"] > 10 and kinds["delete"] > 10
        assert sum(kinds.values()) == 400

        truth = server.ground_truth()
        expected, final = _replay(events)
        assert truth["expected"] == expected
        assert truth["edits"] == kinds["status.update"]
        assert truth["deletes"] == kinds["delete"]
        assert truth["statuses"] == kinds["update"] and truth["sent"] == 400

        # The hashtag truth is that of the final state: deleted ones gone, edits' new tags.
        recount: dict[str, Counter[str]] = {}
        for status in final.values():
            hour = parse_time(status["created_at"]).strftime("%Y%m%d%H")
            recount.setdefault(hour, Counter()).update({t["name"] for t in status["tags"]})
        assert truth["hashtags_by_hour"] == {h: dict(c) for h, c in recount.items() if c}

        deleted = [data.decode() for event, data in events if event == "delete"]
        async with session.get(f"{server.url}/api/v1/statuses/{deleted[0]}", headers=AUTH) as r:
            assert r.status == 404
            assert await r.json() == {"error": "Record not found"}
        edited = next(json.loads(d) for e, d in events if e == "status.update")
        if edited["uri"] in final:
            async with session.get(
                f"{server.url}/api/v1/statuses/{edited['id']}", headers=AUTH
            ) as r:
                current = await r.json()
            assert current["edited_at"] == final[edited["uri"]]["edited_at"]
            assert current["content"] == final[edited["uri"]]["content"]
        timeline = await _all_statuses(session, server.url)
        assert {s["uri"] for s in timeline} == set(final)

    _serve(settings, scenario)


def test_edits_and_deletes_never_written_do_not_count() -> None:
    def changes(truth: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for e in truth["expected"] if e["kind"] != "status"]

    async def scenario() -> None:
        server = SimulatorServer(_settings(edit_share=0.4, delete_share=0.3))
        subscriber = simulator._Subscriber(peer="reader")
        server._subscribe(subscriber)
        server._emit(30)
        while not subscriber.queue.empty():  # written
            chunk = subscriber.queue.get_nowait()
            assert chunk is not None
            server._settle(chunk)
        before = server.ground_truth()
        assert before["pending"] == 0 and changes(before)
        server._emit(100)
        assert server.pending > 0
        server._release(subscriber.close())  # the connection broke before any was written
        after = server.ground_truth()
        assert after["pending"] == 0
        assert changes(after) == changes(before)
        assert (after["edits"], after["deletes"]) == (before["edits"], before["deletes"])
        assert after["statuses"] > before["statuses"]
        # What no one got never happened: the timeline is back to what the truth counts.
        timeline = server._instances[0].timeline
        for status in server._recent:
            assert status.deleted is (status.counted is None)
            assert status.deleted or status.text == status.counted
            assert (timeline.get(status.local_ids[0]) is None) is status.deleted
        # Without a live subscriber nothing is edited or deleted: only new statuses.
        server._unsubscribe(subscriber)
        server._emit(50)
        assert changes(server.ground_truth()) == changes(before)
        assert server.ground_truth()["sent"] == 180

    asyncio.run(scenario())


def test_a_timeline_page_teaches_the_client_the_ids_of_its_instance() -> None:
    """A delete names the instance's local id only; a client that read the status from a
    timeline page of that instance can resolve it, so the truth must count it as deliverable."""
    settings = _settings(instances=2, federation_share=1.0, events=40)

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        # Only instance 0 streams: every status reaches instance 1 too, unseen there.
        await collect(session, f"{server.url}/api/v1/streaming/public", lambda: server.done)
        statuses = server._recent
        assert statuses and not any(s.seen_on >> 1 & 1 for s in statuses)
        page = await _all_statuses(session, server.urls[1])
        served = {s["uri"] for s in page}
        assert served
        for status in statuses:
            assert bool(status.seen_on >> 1 & 1) is (status.uri in served)

    _serve(settings, scenario)


def test_boosts_wrap_an_earlier_status_and_count_no_hashtags() -> None:
    settings = _settings(events=300, reblog_share=0.2)

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        raw = await collect(session, f"{server.url}/api/v1/streaming/public", lambda: server.done)
        statuses = [json.loads(d) for e, d in parse_sse(raw) if e == "update"]
        assert len(statuses) == 300
        boosts = [s for s in statuses if s["reblog"]]
        assert 30 < len(boosts) < 90
        earlier: dict[str, dict[str, Any]] = {}
        for status in statuses:
            if status["reblog"]:
                original = status["reblog"]
                assert (
                    original["uri"] in earlier and original["id"] == earlier[original["uri"]]["id"]
                )
                assert status["uri"].endswith("/activity") and status["content"] == ""
                assert status["tags"] == [] and int(status["id"]) > int(original["id"])
            earlier[status["uri"]] = status
        truth = server.ground_truth()
        assert truth["boosts"] == len(boosts)
        assert [e["uri"] for e in truth["expected"]] == [s["uri"] for s in statuses]
        recount: Counter[str] = Counter()
        for status in statuses:
            recount.update(t["name"] for t in status["tags"])
        assert sum(sum(c.values()) for c in truth["hashtags_by_hour"].values()) == sum(
            recount.values()
        )

    _serve(settings, scenario)


def test_replies_point_at_the_parent_on_each_instance() -> None:
    settings = _settings(instances=2, federation_share=1.0, events=400)

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        await collect(session, f"{server.url}/api/v1/streaming/public", lambda: server.done)
        for url in server.urls:
            statuses = await _all_statuses(session, url)
            by_id = {s["id"]: s for s in statuses}
            replies = [s for s in statuses if s["in_reply_to_id"]]
            assert replies
            for reply in replies:
                parent = by_id[reply["in_reply_to_id"]]
                assert reply["in_reply_to_account_id"] == parent["account"]["id"]

    _serve(settings, scenario)


def test_subscription_parsing() -> None:
    assert Subscription.parse("hashtag", "#Rust") == Subscription("hashtag", "Rust")
    assert Subscription.parse("hashtag", "rust").name == ["hashtag", "rust"]
    assert Subscription.parse("public:local").name == ["public:local"]
    for stream, tag in (("nope", None), (None, None), ("hashtag", ""), ("hashtag:local", None)):
        with pytest.raises(simulator.StreamError):
            Subscription.parse(stream, tag)
