"""What a streaming connection yields, and the server-sent-events parser (pure: lines in, items out)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamEvent:
    """One event of a stream (SSE or WebSocket): its name and its payload bytes as sent."""

    event: str
    data: bytes


@dataclass(frozen=True)
class Heartbeat:
    """A `:thump` (or any other comment line, or a WebSocket ping): the connection is alive."""


@dataclass(frozen=True)
class Unreadable:
    """Something the server sent that is not an event; it goes to the dead-letter topic."""

    reason: str
    raw: bytes


StreamItem = StreamEvent | Heartbeat | Unreadable

_KNOWN_FIELDS = (b"event", b"data", b"id", b"retry")


class SseParser:
    """Feed it lines without their line ending; it returns an event at each blank line.

    Payload bytes are kept exactly as the server sent them (multi-line `data:` fields
    are joined with `\\n`, as the SSE specification says). The specification ignores
    unknown fields; Mastodon never sends any, so one is reported as unreadable rather
    than dropped unseen.
    """

    def __init__(self) -> None:
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, line: bytes) -> StreamItem | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return Heartbeat()
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value
        elif field not in _KNOWN_FIELDS:
            return Unreadable("not a server-sent-events field", line)
        # `id:` and `retry:` carry nothing Mastodon uses.
        return None

    def _dispatch(self) -> StreamEvent | None:
        if not self._data:
            self._event = b""
            return None
        event = StreamEvent(
            self._event.decode(errors="replace") or "message", b"\n".join(self._data)
        )
        self._event = b""
        self._data = []
        return event
