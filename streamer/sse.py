"""A server-sent-events parser for Mastodon's streaming framing (pure: lines in, events out)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: bytes


@dataclass(frozen=True)
class Heartbeat:
    """A `:thump` (or any other comment line): the connection is alive."""


class SseParser:
    """Feed it lines without their line ending; it returns an event at each blank line.

    Payload bytes are kept exactly as the server sent them (multi-line `data:` fields
    are joined with `\\n`, as the SSE specification says).
    """

    def __init__(self) -> None:
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, line: bytes) -> SseEvent | Heartbeat | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return Heartbeat()
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            self._event = value
        elif field == b"data":
            self._data.append(value)
        # `id:` and `retry:` carry nothing Mastodon uses; unknown fields are ignored per spec.
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._data:
            self._event = b""
            return None
        event = SseEvent(self._event.decode(errors="replace") or "message", b"\n".join(self._data))
        self._event = b""
        self._data = []
        return event
