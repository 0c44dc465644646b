"""Turning one streaming event into an envelope, or a reason it belongs in the dead-letter topic (pure)."""

from __future__ import annotations

import json
from datetime import datetime

from fedilake.contracts import STREAMING_EVENT_KINDS, Envelope, EventKind, parse_time


class MalformedEvent(ValueError):
    """The server sent something we cannot wrap; the reason goes to the dead-letter topic."""


def wrap_event(
    event: str, data: bytes, *, instance: str, stream: str, received_at: datetime
) -> Envelope:
    kind = STREAMING_EVENT_KINDS.get(event, EventKind.UNKNOWN)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedEvent(f"{event} payload is not UTF-8: {exc}") from exc
    uri: str | None = None
    status_id: str | None = None
    created_at: datetime | None = None
    if kind is EventKind.DELETE:
        # Mastodon sends the bare id of the deleted status, as a string.
        status_id = text.strip().strip('"')
        if not status_id:
            raise MalformedEvent("delete event without a status id")
    elif kind in (EventKind.STATUS, EventKind.EDIT):
        try:
            status = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MalformedEvent(f"{event} payload is not JSON: {exc}") from exc
        if not isinstance(status, dict) or not status.get("uri") or not status.get("id"):
            raise MalformedEvent(f"{event} payload is not a status (no id or uri)")
        uri = str(status["uri"])
        status_id = str(status["id"])
        try:
            created_at = parse_time(str(status["created_at"]))
        except (KeyError, ValueError) as exc:
            raise MalformedEvent(f"{event} status has no valid created_at: {exc}") from exc
    return Envelope(
        kind=kind,
        instance=instance,
        stream=stream,
        event=event,
        received_at=received_at,
        created_at=created_at,
        uri=uri,
        status_id=status_id,
        payload=text,
    )
