"""Rate-limit pacing, id arithmetic for backfill, and WebSocket message parsing (pure)."""

from __future__ import annotations

from streamer.backfill import newer, rewind
from streamer.ratelimit import RateLimit
from streamer.sse import StreamEvent, Unreadable
from streamer.transports import parse_ws_message, ws_base


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_follows_the_headers_and_waits_for_the_reset() -> None:
    clock = Clock()
    limit = RateLimit(clock)
    limit.observe(
        {
            "X-RateLimit-Limit": "300",
            "X-RateLimit-Remaining": "2",
            "X-RateLimit-Reset": "1970-01-12T13:47:00.000Z",  # 1_000_020 s
        }
    )
    assert limit.wait_s() == 0 and limit.wait_s() == 0
    assert limit.wait_s() == 20.0
    clock.now += 21
    assert limit.wait_s() == 0 and limit.remaining == 299


def test_a_reserve_leaves_budget_for_more_important_callers() -> None:
    limit = RateLimit(Clock())
    limit.observe({"X-RateLimit-Remaining": "150", "X-RateLimit-Reset": "1000100"})
    assert limit.wait_s(reserve=150) > 0
    assert limit.wait_s(reserve=0) == 0


def test_a_429_without_headers_still_backs_off() -> None:
    limit = RateLimit(Clock())
    limit.observe({}, status=429)
    assert limit.wait_s() == 300.0


def test_rewind_goes_back_in_mastodon_ids_only() -> None:
    checkpoint = str(1_700_000_000_000 << 16)
    assert int(rewind(checkpoint, 60)) == (1_700_000_000_000 - 60_000) << 16
    assert rewind("01HF7YAT31JZZ2T0KX6QJXKK5S", 60) == "01HF7YAT31JZZ2T0KX6QJXKK5S"


def test_newer_compares_numbers_as_numbers() -> None:
    assert newer("99", "100") == "100"
    assert newer(None, "5") == "5"
    assert newer("01HF7YAT31", "01HF7YAT30") == "01HF7YAT31"


def test_websocket_messages_become_events_with_the_payload_text() -> None:
    frame = b'{"stream":["public"],"event":"update","payload":"{\\"id\\":\\"1\\"}"}'
    assert parse_ws_message(frame) == StreamEvent("update", b'{"id":"1"}')
    assert parse_ws_message(b'{"stream":["public"],"event":"delete","payload":"7"}') == (
        StreamEvent("delete", b"7")
    )
    # A payload sent as an object is kept as compact JSON text, its numbers exact.
    frame = b'{"event":"update","payload":{"id":"1","n":18446744073709551616, "x":"\xc3\xa9"}}'
    assert parse_ws_message(frame) == StreamEvent(
        "update", '{"id":"1","n":18446744073709551616,"x":"\u00e9"}'.encode()
    )


def test_unreadable_websocket_frames_keep_their_bytes() -> None:
    assert parse_ws_message(b"\xff{") == Unreadable("WebSocket frame is not JSON", b"\xff{")
    assert isinstance(parse_ws_message(b'{"payload":"x"}'), Unreadable)


def test_streaming_urls_convert_between_http_and_ws() -> None:
    assert ws_base("https://streaming.example/") == "wss://streaming.example"
    assert ws_base("http://127.0.0.1:8765") == "ws://127.0.0.1:8765"
