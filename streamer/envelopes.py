"""Turning one streamed or fetched event into an envelope, or a reason it is dead-lettered (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from fedilake.contracts import STREAMING_EVENT_KINDS, Envelope, EventKind, parse_time


class MalformedEvent(ValueError):
    """The server sent something we cannot wrap; the reason goes to the dead-letter topic."""


def wrap_event(
    event: str,
    data: bytes,
    *,
    instance: str,
    stream: str,
    received_at: datetime,
    max_bytes: int | None = None,
) -> Envelope:
    if max_bytes is not None and len(data) > max_bytes:
        raise MalformedEvent(f"{event} payload of {len(data)} bytes exceeds {max_bytes} bytes")
    kind = STREAMING_EVENT_KINDS.get(event, EventKind.UNKNOWN)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedEvent(f"{event} payload is not UTF-8: {exc}") from exc
    uri: str | None = None
    status_id: str | None = None
    created_at: datetime | None = None
    parsed: dict[str, Any] | None = None
    if kind is EventKind.DELETE:
        # Mastodon sends the bare id of the deleted status, as a string.
        status_id = text.strip().strip('"')
        if not status_id:
            raise MalformedEvent("delete event without a status id")
    elif kind in (EventKind.STATUS, EventKind.EDIT):
        parsed = _json_object(event, text)
        if not parsed.get("uri") or not parsed.get("id"):
            raise MalformedEvent(f"{event} payload is not a status (no id or uri)")
        uri = str(parsed["uri"])
        status_id = str(parsed["id"])
        try:
            created_at = parse_time(str(parsed["created_at"]))
        except (KeyError, ValueError, OverflowError) as exc:  # "0001-01-01T00:00+01:00"
            raise MalformedEvent(f"{event} status has no valid created_at: {exc}") from exc
    elif kind in (EventKind.NOTIFICATION, EventKind.CONVERSATION):
        parsed = _json_object(event, text)
        status = parsed.get("status" if kind is EventKind.NOTIFICATION else "last_status")
        if isinstance(status, dict) and status.get("uri"):
            uri = str(status["uri"])  # with its status's other events, in order
            status_id = str(status["id"]) if status.get("id") is not None else None
    envelope = Envelope(
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
    if parsed is not None:
        object.__setattr__(envelope, "_parsed", parsed)  # parsed once, here
    return envelope


def _json_object(event: str, text: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"{event} payload is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedEvent(f"{event} payload is not a JSON object")
    return doc


def identity_key(envelope: Envelope) -> str | None:
    """What makes two envelopes the same event, wherever and however often they arrived.

    A status is its `uri`; an edit is its `uri` and `edited_at`; a delete is the `uri`
    it deletes (or the instance-local id when the status was never seen); a refresh is
    the `uri` and the age it was fetched at. None: never deduplicated.
    """
    kind = envelope.kind
    if kind is EventKind.STATUS:
        return f"status\0{envelope.uri}"
    if kind is EventKind.EDIT:
        return f"edit\0{envelope.uri}\0{envelope.payload_json.get('edited_at') or ''}"
    if kind is EventKind.DELETE:
        target = envelope.uri or f"{envelope.instance}/{envelope.status_id}"
        return f"delete\0{target}"
    if kind is EventKind.REFRESH:
        return f"refresh\0{envelope.uri}\0{envelope.stream}"
    if kind is EventKind.NOTIFICATION:
        notification_id = envelope.payload_json.get("id")
        if notification_id is not None:
            return f"notification\0{envelope.instance}\0{notification_id}"
    return None


def as_edit(envelope: Envelope) -> Envelope:
    """A backfilled status already published, but changed since: publish it as an edit."""
    edited = replace(envelope, kind=EventKind.EDIT, event="status.update")
    object.__setattr__(edited, "_parsed", envelope.payload_json)
    return edited
