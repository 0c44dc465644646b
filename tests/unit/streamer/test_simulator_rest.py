"""The simulator's REST API: timelines and their paging, status lookups, tokens, rate limits."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from mastodon import Mastodon
from mastodon.errors import MastodonRatelimitError

from fedilake.settings import SimulatorSettings
from streamer.generator import engagement_counts
from streamer.simulator import SimulatorServer

pytestmark = pytest.mark.timeout(30)

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EVENTS = 130


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settings(**overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "token": TOKEN,
        "rate": 0.0,
        "heartbeat_s": 30.0,
        "events": EVENTS,
        "start": "2026-11-23T10:00:00Z",
        "spread_s": 3600.0,
    }
    values.update(overrides)
    return SimulatorSettings(**values)


def _serve(
    settings: SimulatorSettings,
    scenario: Callable[[SimulatorServer, aiohttp.ClientSession], Awaitable[None]],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Serve, let one subscriber receive every event (so the timelines fill), then play."""

    async def main() -> None:
        server = SimulatorServer(settings, clock=clock)
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                url = f"{server.url}/api/v1/streaming/public"
                async with session.get(url, headers=AUTH) as response:
                    async with asyncio.timeout(10):
                        while not server.done:
                            await response.content.readany()
                await scenario(server, session)
        finally:
            await server.stop()

    asyncio.run(main())


async def _get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with session.get(url, headers=AUTH if headers is None else headers) as response:
        return response.status, await response.json(), response.headers


def _ids(page: list[dict[str, Any]]) -> list[int]:
    return [int(s["id"]) for s in page]


def test_timeline_pages_newest_first_with_mastodon_link_headers() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        base = f"{server.url}/api/v1/timelines/public"
        status, first, headers = await _get(session, f"{base}?limit=40&local=false")
        assert status == 200 and len(first) == 40
        ids = _ids(first)
        assert ids == sorted(ids, reverse=True)
        assert headers["Link"] == (
            f'<{base}?limit=40&local=false&max_id={ids[-1]}>; rel="next", '
            f'<{base}?limit=40&local=false&min_id={ids[0]}>; rel="prev"'
        )
        everything = list(first)
        while 'rel="next"' in headers.get("Link", ""):
            _, page, headers = await _get(session, headers["Link"][1:].partition(">")[0])
            everything.extend(page)
        all_ids = _ids(everything)
        assert len(all_ids) == EVENTS and all_ids == sorted(all_ids, reverse=True)
        assert [e["uri"] for e in server.ground_truth()["expected"]] == [
            s["uri"] for s in reversed(everything)
        ]

        ascending = all_ids[::-1]
        # min_id: the statuses right after it, still newest first, as Mastodon answers.
        _, page, headers = await _get(session, f"{base}?min_id={ascending[10]}&limit=5")
        assert _ids(page) == ascending[11:16][::-1]
        assert headers["Link"].endswith(f'?limit=5&min_id={ascending[15]}>; rel="prev"')
        # since_id: the newest ones above it.
        _, page, _ = await _get(session, f"{base}?since_id={ascending[10]}&limit=5")
        assert _ids(page) == ascending[-5:][::-1]
        _, page, _ = await _get(session, f"{base}?since_id={ascending[10]}&max_id={ascending[14]}")
        assert _ids(page) == ascending[11:14][::-1]
        _, page, _ = await _get(session, f"{base}?min_id={ascending[10]}&max_id={ascending[14]}")
        assert _ids(page) == ascending[11:14][::-1]
        # Past either end: an empty page, and no Link header.
        status, page, headers = await _get(session, f"{base}?min_id={ascending[-1]}")
        assert status == 200 and page == [] and "Link" not in headers
        _, page, _ = await _get(session, f"{base}?limit=1000")
        assert len(page) == 40
        _, page, _ = await _get(session, base)
        assert len(page) == 20

        # The tag timeline: the statuses with that tag, with the same paging.
        tagged = [s for s in everything if "fediverse" in {t["name"] for t in s["tags"]}]
        assert tagged
        _, page, headers = await _get(
            session, f"{server.url}/api/v1/timelines/tag/Fediverse?limit=40"
        )
        assert _ids(page) == _ids(tagged)[:40]
        _, page, _ = await _get(session, f"{base}?only_media=true&limit=40")
        assert _ids(page) == _ids([s for s in everything if s["media_attachments"]])[:40]
        _, local, _ = await _get(session, f"{base}?local=true&limit=40")
        _, remote, _ = await _get(session, f"{base}?remote=true&limit=40")
        assert all("@" not in s["account"]["acct"] for s in local)
        assert all("@" in s["account"]["acct"] for s in remote)

    _serve(_settings(), scenario)


def test_mastodon_py_pages_through_the_timeline() -> None:
    def use_mastodon_py(url: str) -> None:
        client = Mastodon(api_base_url=url, access_token=TOKEN, ratelimit_method="throw")
        page = client.timeline_public(limit=40)
        seen = [int(s["id"]) for s in page]
        while (page := client.fetch_next(page)) is not None and page:
            seen.extend(int(s["id"]) for s in page)
        assert len(seen) == EVENTS and seen == sorted(seen, reverse=True)
        ascending = seen[::-1]
        newer = client.timeline_public(min_id=ascending[50], limit=10)
        assert [int(s["id"]) for s in newer] == ascending[51:61][::-1]
        again = client.fetch_previous(newer)
        assert again is not None
        assert [int(s["id"]) for s in again] == ascending[61:71][::-1]
        older = client.fetch_next(newer)
        assert older is not None
        assert [int(s["id"]) for s in older] == ascending[41:51][::-1]
        assert client.ratelimit_limit == 300 and client.ratelimit_remaining < 300

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        await asyncio.to_thread(use_mastodon_py, server.url)

    _serve(_settings(), scenario)


def test_status_lookup_returns_counts_that_grow_with_age() -> None:
    clock = FakeClock()

    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        _, page, _ = await _get(session, f"{server.url}/api/v1/timelines/public?limit=40")
        counts_keys = ("favourites_count", "reblogs_count", "replies_count")
        clock.now += 5
        lookups = []
        for status in page:
            code, looked_up, _ = await _get(session, f"{server.url}/api/v1/statuses/{status['id']}")
            assert code == 200 and looked_up["uri"] == status["uri"]
            lookups.append(looked_up)
        clock.now += 3600
        later = [
            (await _get(session, f"{server.url}/api/v1/statuses/{s['id']}"))[1] for s in lookups
        ]
        grew = 0
        for first, second in zip(lookups, later, strict=True):
            for key in counts_keys:
                assert second[key] >= first[key]
            grew += second["favourites_count"] > first["favourites_count"]
        assert grew == len(later)
        assert max(s["favourites_count"] for s in later) > 10

        engagement = server.ground_truth()["engagement"]
        assert set(engagement) == {s["uri"] for s in later}
        for status in later:
            recorded = engagement[status["uri"]]
            assert {k: recorded[k] for k in counts_keys} == {k: status[k] for k in counts_keys}
            pure = engagement_counts(server._settings.seed, status["uri"], recorded["age_s"])
            assert pure == {k: status[k] for k in counts_keys}

        for missing in ("1", "not-a-number", "99999999999999999999"):
            code, body, headers = await _get(session, f"{server.url}/api/v1/statuses/{missing}")
            assert code == 404 and body == {"error": "Record not found"}
            assert "X-RateLimit-Remaining" in headers

    _serve(_settings(), scenario, clock=clock)


def test_rest_endpoints_need_the_token() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        paths = ("/api/v1/timelines/public", "/api/v1/timelines/tag/rust", "/api/v1/statuses/1")
        for path in paths:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                code, body, response_headers = await _get(session, server.url + path, headers)
                assert code == 401
                assert body == {"error": "The access token is invalid"}
                assert "X-RateLimit-Limit" in response_headers
            code, _, _ = await _get(session, f"{server.url}{path}?access_token=wrong", {})
            assert code == 401
        code, page, _ = await _get(
            session, f"{server.url}/api/v1/timelines/public?access_token={TOKEN}", {}
        )
        assert code == 200 and len(page) == 20

    _serve(_settings(events=30), scenario)


def test_rate_limit_per_token_and_instance() -> None:
    async def scenario(server: SimulatorServer, session: aiohttp.ClientSession) -> None:
        url = f"{server.url}/api/v1/timelines/public?limit=1"
        remaining = []
        for _ in range(5):
            code, _, headers = await _get(session, url)
            assert code == 200
            assert headers["X-RateLimit-Limit"] == "5"
            remaining.append(int(headers["X-RateLimit-Remaining"]))
            reset = headers["X-RateLimit-Reset"]
        assert remaining == [4, 3, 2, 1, 0]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", reset)
        reset_at = datetime.strptime(reset, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert 0 < reset_at.timestamp() - time.time() <= 3600
        assert reset_at.timestamp() % 3600 == 0  # windows aligned to the epoch

        code, body, headers = await _get(session, url)
        assert code == 429 and body == {"error": "Too many requests"}
        assert headers["X-RateLimit-Remaining"] == "0"
        # Another instance, or requests without a valid token, have their own budget.
        code, _, headers = await _get(session, f"{server.urls[1]}/api/v1/timelines/public")
        assert code == 200 and headers["X-RateLimit-Remaining"] == "4"
        code, _, headers = await _get(session, url, {"Authorization": "Bearer wrong"})
        assert code == 401 and headers["X-RateLimit-Remaining"] == "4"
        # Mastodon.py reads the headers and stops before the server would refuse it.
        client = Mastodon(api_base_url=server.url, access_token=TOKEN, ratelimit_method="throw")
        with pytest.raises(MastodonRatelimitError):
            await asyncio.to_thread(client.timeline_public)

    # The windows turn at the top of each hour; the test must not straddle one.
    if (left_in_hour := 3600 - time.time() % 3600) < 15:
        time.sleep(left_in_hour + 0.5)
    _serve(_settings(rate_limit=5, rate_limit_window_s=3600, instances=2, events=10), scenario)
