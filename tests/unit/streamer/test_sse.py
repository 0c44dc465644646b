"""The SSE parser on Mastodon's streaming framing."""

from __future__ import annotations

from collections.abc import Iterable

from streamer.sse import Heartbeat, SseParser, StreamEvent, StreamItem, Unreadable

STATUS = b'{"id":"1","uri":"https://example.social/users/a/statuses/1","content":"caf\xc3\xa9"}'


def _feed(lines: Iterable[bytes], parser: SseParser | None = None) -> list[StreamItem]:
    parser = parser or SseParser()
    return [item for line in lines if (item := parser.feed(line)) is not None]


def _events(items: list[StreamItem]) -> list[StreamEvent]:
    return [item for item in items if isinstance(item, StreamEvent)]


def test_mastodon_stream_framing() -> None:
    stream = (
        b":)\n"
        b"event: update\ndata: " + STATUS + b"\n\n"
        b":thump\n"
        b"event: delete\ndata: 109\n\n"
        b":thump\n"
        b"event: status.update\ndata: " + STATUS + b"\n\n"
    )
    items = _feed(stream.split(b"\n"))
    assert items == [
        Heartbeat(),
        StreamEvent("update", STATUS),
        Heartbeat(),
        StreamEvent("delete", b"109"),
        Heartbeat(),
        StreamEvent("status.update", STATUS),
    ]


def test_payload_bytes_are_kept_exactly() -> None:
    data = b'{"content":"  two spaces, a tab\\t and \xf0\x9f\x90\x98 "}'
    [event] = _events(_feed([b"event: update", b"data: " + data, b""]))
    assert event.data == data


def test_multi_line_data_is_joined_with_newlines() -> None:
    items = _feed([b"event: update", b"data: {", b'data: "a": 1', b"data: }", b""])
    assert items == [StreamEvent("update", b'{\n"a": 1\n}')]


def test_data_without_a_space_after_the_colon() -> None:
    assert _feed([b"event:update", b"data:{}", b""]) == [StreamEvent("update", b"{}")]


def test_only_one_leading_space_is_removed() -> None:
    assert _feed([b"data:  x ", b""]) == [StreamEvent("message", b" x ")]


def test_data_without_an_event_field_is_a_message() -> None:
    assert _feed([b"data: hello", b""]) == [StreamEvent("message", b"hello")]


def test_event_without_data_is_ignored_and_forgotten() -> None:
    parser = SseParser()
    assert _feed([b"event: update", b""], parser) == []
    # The dropped event's name must not leak into the next event.
    assert _feed([b"data: x", b""], parser) == [StreamEvent("message", b"x")]


def test_heartbeat_followed_by_a_blank_line_gives_no_event() -> None:
    # Newer Mastodon versions end the `:thump` comment with a blank line.
    items = _feed([b":)", b"", b":thump", b"", b":thump", b""])
    assert items == [Heartbeat(), Heartbeat(), Heartbeat()]
    assert _events(items) == []


def test_heartbeat_in_the_middle_of_an_event_does_not_break_it() -> None:
    items = _feed([b"event: update", b":thump", b"data: {}", b""])
    assert items == [Heartbeat(), StreamEvent("update", b"{}")]


def test_blank_lines_between_events_give_nothing() -> None:
    assert _feed([b"", b"", b"event: delete", b"data: 1", b"", b"", b""]) == [
        StreamEvent("delete", b"1")
    ]


def test_id_and_retry_are_ignored() -> None:
    items = _feed([b"id: 7", b"retry: 1000", b"event: delete", b"data: 5", b""])
    assert items == [StreamEvent("delete", b"5")]


def test_parser_state_resets_between_events() -> None:
    items = _feed(
        [b"event: update", b"data: a", b"", b"data: b", b"", b"event: delete", b"data: c", b""]
    )
    assert items == [
        StreamEvent("update", b"a"),
        StreamEvent("message", b"b"),
        StreamEvent("delete", b"c"),
    ]


def test_a_line_without_a_known_field_is_reported_not_dropped() -> None:
    items = _feed([b"garbage that is no field", b"event: update", b"data: {}", b""])
    assert items[0] == Unreadable("not a server-sent-events field", b"garbage that is no field")
    assert items[1] == StreamEvent("update", b"{}")
