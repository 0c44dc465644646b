"""Wrapping streaming events into envelopes, and refusing what cannot be wrapped."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fedilake.contracts import Envelope, EventKind
from streamer.envelopes import MalformedEvent, wrap_event

INSTANCE = "https://mastodon.social"
RECEIVED = datetime(2026, 11, 23, 12, 0, 1, 500000, tzinfo=UTC)
URI = "https://fosstodon.org/users/bob/statuses/111"


def _status(**changes: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "id": "111",
        "uri": URI,
        "created_at": "2026-11-23T10:15:30.250Z",
        "content": "<p>caf\u00e9 \U0001f418 #Rust</p>",
        "tags": [{"name": "rust"}],
        "reblog": None,
    }
    status.update(changes)
    return status


def _wrap(event: str, data: bytes | str | dict[str, Any]) -> Envelope:
    if isinstance(data, dict):
        data = json.dumps(data, ensure_ascii=False)
    if isinstance(data, str):
        data = data.encode()
    return wrap_event(event, data, instance=INSTANCE, stream="public", received_at=RECEIVED)


def test_update_becomes_a_status_envelope() -> None:
    data = json.dumps(_status(), ensure_ascii=False).encode()
    envelope = _wrap("update", data)
    assert envelope.kind is EventKind.STATUS
    assert envelope.event == "update"
    assert envelope.instance == INSTANCE and envelope.stream == "public"
    assert envelope.uri == URI
    assert envelope.status_id == "111"
    assert envelope.created_at == datetime(2026, 11, 23, 10, 15, 30, 250000, tzinfo=UTC)
    assert envelope.received_at == RECEIVED
    assert envelope.payload.encode() == data
    assert envelope.kafka_key() == URI.encode()


def test_update_with_a_numeric_id_and_an_offset_time() -> None:
    envelope = _wrap("update", _status(id=111, created_at="2026-11-23T23:30:00-03:00"))
    assert envelope.status_id == "111"
    assert envelope.created_at == datetime(2026, 11, 24, 2, 30, tzinfo=UTC)


def test_status_update_is_an_edit() -> None:
    envelope = _wrap("status.update", _status(edited_at="2026-11-23T11:00:00.000Z"))
    assert envelope.kind is EventKind.EDIT
    assert envelope.uri == URI and envelope.status_id == "111"


@pytest.mark.parametrize("data", [b"109", b'"109"', b" 109\n", b'"109"\n'])
def test_delete_carries_the_bare_status_id(data: bytes) -> None:
    envelope = _wrap("delete", data)
    assert envelope.kind is EventKind.DELETE
    assert envelope.status_id == "109"
    assert envelope.uri is None and envelope.created_at is None
    assert envelope.payload == data.decode()
    assert envelope.event_time() == RECEIVED


@pytest.mark.parametrize("data", [b"", b'""', b"   "])
def test_delete_without_an_id_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedEvent, match="delete"):
        _wrap("delete", data)


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ("notification", EventKind.NOTIFICATION),
        ("conversation", EventKind.CONVERSATION),
        ("announcement", EventKind.ANNOUNCEMENT),
        ("announcement.reaction", EventKind.ANNOUNCEMENT),
        ("announcement.delete", EventKind.ANNOUNCEMENT),
        ("foo.bar", EventKind.UNKNOWN),
        ("message", EventKind.UNKNOWN),
    ],
)
def test_other_events_are_kept_with_their_kind(event: str, kind: EventKind) -> None:
    data = b'{"id":"5","type":"mention"}'
    envelope = _wrap(event, data)
    assert envelope.kind is kind
    assert envelope.event == event
    assert envelope.payload == data.decode()
    assert envelope.uri is None and envelope.status_id is None and envelope.created_at is None


def test_wrapped_envelopes_survive_the_wire() -> None:
    for envelope in (
        _wrap("update", _status()),
        _wrap("delete", b"109"),
        _wrap("foo.bar", b"anything"),
    ):
        assert Envelope.from_bytes(envelope.to_bytes()) == envelope


@pytest.mark.parametrize("event", ["update", "status.update"])
@pytest.mark.parametrize("data", [b"{not json", b"", b'{"id": "1"'])
def test_status_that_is_not_json_is_malformed(event: str, data: bytes) -> None:
    with pytest.raises(MalformedEvent, match="not JSON"):
        _wrap(event, data)


@pytest.mark.parametrize("event", ["update", "delete", "notification", "foo.bar"])
def test_payload_that_is_not_utf8_is_malformed(event: str) -> None:
    with pytest.raises(MalformedEvent, match="UTF-8"):
        _wrap(event, b'{"id":"1","content":"caf\xe9"}')


@pytest.mark.parametrize(
    "status",
    [
        _status(uri=None),
        {k: v for k, v in _status().items() if k != "uri"},
        _status(uri=""),
        {k: v for k, v in _status().items() if k != "id"},
    ],
)
def test_status_without_uri_or_id_is_malformed(status: dict[str, Any]) -> None:
    with pytest.raises(MalformedEvent, match="not a status"):
        _wrap("update", status)


@pytest.mark.parametrize("data", ["[]", "null", '"text"', "42"])
def test_status_that_is_not_an_object_is_malformed(data: str) -> None:
    with pytest.raises(MalformedEvent):
        _wrap("update", data)


@pytest.mark.parametrize(
    "status",
    [
        {k: v for k, v in _status().items() if k != "created_at"},
        _status(created_at=None),
        _status(created_at="yesterday"),
        _status(created_at="2026-13-45T10:00:00Z"),
    ],
)
def test_status_without_a_valid_created_at_is_malformed(status: dict[str, Any]) -> None:
    with pytest.raises(MalformedEvent, match="created_at"):
        _wrap("update", status)


@pytest.mark.parametrize(
    ("event", "field"), [("notification", "status"), ("conversation", "last_status")]
)
def test_notifications_and_conversations_are_keyed_by_the_status_they_carry(
    event: str, field: str
) -> None:
    status = {"id": "77", "uri": "https://a.example/s/77", "content": "<p>hi</p>"}
    envelope = _wrap(event, json.dumps({"id": "5", field: status}).encode())
    assert (envelope.uri, envelope.status_id) == ("https://a.example/s/77", "77")
    assert envelope.kafka_key() == b"https://a.example/s/77"  # in order with its status
