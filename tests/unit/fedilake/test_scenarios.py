"""The scenario verdict: exactly once by (uri, kind, version), in order per status (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from fedilake.contracts import Envelope, EventKind
from fedilake.scenarios import judge

T = datetime(2026, 11, 23, tzinfo=UTC)


def _envelope(kind: EventKind, uri: str, edited_at: str | None = None) -> Envelope:
    payload = json.dumps({"id": "1", "uri": uri, "edited_at": edited_at})
    return Envelope(kind, "http://a", "public", kind.value, T, T, uri, "1", payload)


EXPECTED = [
    {"uri": "u1", "kind": "status", "version": None},
    {"uri": "u2", "kind": "status", "version": None},
    {"uri": "u1", "kind": "edit", "version": "e1"},
    {"uri": "u1", "kind": "delete", "version": None},
]


def test_everything_once_in_order_is_exact() -> None:
    published = [
        _envelope(EventKind.STATUS, "u1"),
        _envelope(EventKind.STATUS, "u2"),
        _envelope(EventKind.EDIT, "u1", "e1"),
        _envelope(EventKind.DELETE, "u1"),
        _envelope(EventKind.UNKNOWN, "x"),
    ]
    verdict = judge(EXPECTED, published)
    verdict.unknown_expected, verdict.dead_letters_expected = 1, 0
    assert verdict.exact and verdict.found == 4 and verdict.unknown_kept == 1
    verdict.dead_letters_expected = 2  # two malformed events sent, none dead-lettered
    assert not verdict.exact


def test_missing_duplicated_unexpected_and_reordered_are_each_reported() -> None:
    published = [
        _envelope(EventKind.EDIT, "u1", "e1"),
        _envelope(EventKind.STATUS, "u1"),
        _envelope(EventKind.STATUS, "u1"),
        _envelope(EventKind.STATUS, "u3"),
    ]
    verdict = judge(EXPECTED, published)
    assert verdict.missing == [("u2", "status", None), ("u1", "delete", None)]
    assert verdict.duplicated == [("u1", "status", None)]
    assert verdict.unexpected == [("u3", "status", None)]
    assert verdict.out_of_order == ["u1"]
    assert not verdict.exact


def test_a_delete_of_a_status_never_seen_is_counted_apart() -> None:
    unseen = Envelope(EventKind.DELETE, "http://a", "public", "delete", T, None, None, "77", "77")
    verdict = judge(
        EXPECTED[:2], [_envelope(EventKind.STATUS, "u1"), _envelope(EventKind.STATUS, "u2"), unseen]
    )
    verdict.unknown_expected, verdict.dead_letters_expected = 0, 0
    assert verdict.exact and verdict.unresolved_deletes == 1
