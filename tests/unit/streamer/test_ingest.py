"""The ingestor on a real spool and state: dedup by uri, deletes across instances, recovery."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedilake.contracts import Envelope, EventKind, Topics
from streamer.ingest import IngestClosed, Ingestor
from streamer.optouts import OptOutPolicy
from streamer.sources import Source
from streamer.spool import Spool
from streamer.sse import StreamEvent
from streamer.state import StreamerState

A = Source("https://a.example", "public")
B = Source("https://b.example", "public")


def _status(local_id: str, uri: str, **changes: Any) -> StreamEvent:
    status: dict[str, Any] = {
        "id": local_id,
        "uri": uri,
        "created_at": "2026-11-23T10:00:00.000Z",
        "edited_at": None,
        "content": "<p>hello #rust</p>",
        "tags": [{"name": "rust"}],
        "account": {"id": "9", "acct": "bob", "discoverable": True, "note": ""},
        "reblog": None,
    }
    status.update(changes)
    return StreamEvent("update", json.dumps(status).encode())


def _open(tmp_path: Path, policy: OptOutPolicy = OptOutPolicy.ANONYMIZE) -> Ingestor:
    spool = Spool(tmp_path / "spool")
    state = StreamerState(tmp_path / "state.sqlite3", window_s=3600)
    return Ingestor(spool, state, max_event_bytes=4096, optout_policy=policy)


@pytest.fixture
def ingestor(tmp_path: Path) -> Iterator[Ingestor]:
    ingestor = _open(tmp_path)
    yield ingestor
    ingestor.close()
    ingestor.spool.close()
    ingestor.state.close()


def _published(ingestor: Ingestor) -> list[Envelope]:
    ingestor.sync()
    records = ingestor.spool.read(0, max_records=10_000)
    return [Envelope.from_bytes(r.value) for r in records if r.topic == Topics.EVENTS.name]


def test_a_status_seen_on_two_instances_and_twice_is_published_once(ingestor: Ingestor) -> None:
    uri = "https://a.example/users/bob/statuses/1"
    assert ingestor.offer(A, _status("100", uri)) == "published"
    assert ingestor.offer(A, _status("100", uri)) == "duplicate"
    assert ingestor.offer(B, _status("555", uri)) == "duplicate"
    assert [e.uri for e in _published(ingestor)] == [uri]


def test_a_delete_reaches_the_status_first_seen_through_another_instance(
    ingestor: Ingestor,
) -> None:
    uri = "https://a.example/users/bob/statuses/1"
    ingestor.offer(A, _status("100", uri))
    ingestor.offer(B, _status("555", uri))  # the copy on b, dropped, but its id is remembered
    assert ingestor.offer(B, StreamEvent("delete", b"555")) == "published"
    assert ingestor.offer(A, StreamEvent("delete", b"100")) == "duplicate"
    status, delete = _published(ingestor)
    assert delete.kind is EventKind.DELETE and delete.uri == uri
    assert delete.kafka_key() == status.kafka_key()  # same partition, after the status


def test_a_delete_finds_its_status_after_the_state_committed_and_reopened(
    tmp_path: Path,
) -> None:
    uri = "https://a.example/users/bob/statuses/1"
    first = _open(tmp_path)
    first.offer(A, _status("100", uri))
    first.offer(B, _status("555", uri))
    first.sync()  # the local ids now live in SQLite only, not in memory
    assert first.offer(B, StreamEvent("delete", b"555")) == "published"
    first.close()
    first.spool.close()
    first.state.close()
    again = _open(tmp_path)
    try:
        assert again.state.uri_of(A.instance_url, "100") == uri
        assert again.state.uri_of(B.instance_url, "555") == uri
        assert again.state.uri_of(B.instance_url, "556") is None
    finally:
        again.close()
        again.spool.close()
        again.state.close()


def test_a_local_id_keeps_its_first_seen_time(tmp_path: Path) -> None:
    state = StreamerState(tmp_path / "state.sqlite3", window_s=3600)
    try:
        state.map_id("https://a.example", "1", "https://a.example/s/1")
        state.commit(0)
        (first,) = state.recent_ids("https://a.example", 0)
        state.map_id("https://a.example", "1", "https://a.example/s/1")  # seen again
        state.commit(0)
        assert state.recent_ids("https://a.example", 0) == [first]
    finally:
        state.close()


def test_edits_are_published_once_per_version(ingestor: Ingestor) -> None:
    uri = "https://a.example/s/1"
    ingestor.offer(A, _status("1", uri))
    edit = _status("1", uri, edited_at="2026-11-23T10:05:00.000Z")
    edit = StreamEvent("status.update", edit.data)
    assert ingestor.offer(A, edit) == "published"
    assert ingestor.offer(B, edit) == "duplicate"


def _edit(local_id: str, uri: str, edited_at: str) -> StreamEvent:
    return StreamEvent("status.update", _status(local_id, uri, edited_at=edited_at).data)


def _versions(ingestor: Ingestor) -> list[str]:
    return [
        e.kind.value
        + (f"@{e.payload_json['edited_at'][14:16]}" if e.kind is EventKind.EDIT else "")
        for e in _published(ingestor)
    ]


def test_a_backfilled_status_edited_during_the_gap_becomes_an_edit(ingestor: Ingestor) -> None:
    uri = "https://a.example/s/1"
    ingestor.offer(A, _status("1", uri))
    changed = _status("1", uri, edited_at="2026-11-23T10:05:00.000Z")
    assert ingestor.offer(A, changed, backfilled=True) == "held"
    assert ingestor.offer(A, changed, backfilled=True) == "held"
    assert _versions(ingestor) == ["status"]  # waiting for the stream
    assert ingestor.release_held(everything=True) == 1
    assert ingestor.offer(A, changed, backfilled=True) == "duplicate"
    assert _versions(ingestor) == ["status", "edit@05"]


def test_a_held_edit_goes_out_by_itself_once_its_time_is_up(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    state = StreamerState(tmp_path / "state.sqlite3", window_s=3600)
    ingestor = Ingestor(spool, state, max_event_bytes=4096, edit_hold_s=0.0)
    uri = "https://a.example/s/1"
    ingestor.offer(A, _status("1", uri))
    changed = _status("1", uri, edited_at="2026-11-23T10:05:00.000Z")
    assert ingestor.offer(A, changed, backfilled=True) == "held"
    assert _versions(ingestor) == ["status"]  # the backfill goes on: the stream is unread
    ingestor.backfill_done(B)
    assert _versions(ingestor) == ["status"]  # another source's stream tells nothing
    ingestor.backfill_done(A)
    assert _versions(ingestor) == ["status", "edit@05"]  # the periodic sync released it
    ingestor.close()
    spool.close()
    state.close()


def test_older_edits_the_stream_held_go_out_before_the_backfilled_version(
    ingestor: Ingestor,
) -> None:
    """Stream opened, status edited at :03 and :05, backfill fetched the :05 version, then the
    stream's queued edits are read: Kafka gets :03 then :05, each once."""
    uri = "https://a.example/s/1"
    ingestor.offer(A, _status("1", uri))
    changed = _status("1", uri, edited_at="2026-11-23T10:05:00.000Z")
    assert ingestor.offer(A, changed, backfilled=True) == "held"
    assert ingestor.offer(A, _edit("1", uri, "2026-11-23T10:03:00.000Z")) == "published"
    assert ingestor.offer(A, _edit("1", uri, "2026-11-23T10:05:00.000Z")) == "published"
    assert ingestor.release_held(everything=True) == 0  # the stream brought it
    assert _versions(ingestor) == ["status", "edit@03", "edit@05"]


def test_a_held_edit_goes_out_before_a_later_edit_or_a_delete(ingestor: Ingestor) -> None:
    uri, other = "https://a.example/s/1", "https://a.example/s/2"
    ingestor.offer(A, _status("1", uri))
    ingestor.offer(A, _status("2", other))
    ingestor.offer(A, _status("1", uri, edited_at="2026-11-23T10:05:00.000Z"), backfilled=True)
    ingestor.offer(A, _status("2", other, edited_at="2026-11-23T10:06:00.000Z"), backfilled=True)
    assert ingestor.offer(A, _edit("1", uri, "2026-11-23T10:07:00.000Z")) == "published"
    assert ingestor.offer(A, StreamEvent("delete", b"2")) == "published"
    assert _versions(ingestor) == ["status", "status", "edit@05", "edit@07", "edit@06", "delete"]


def test_held_edits_stay_held_across_a_shutdown(tmp_path: Path) -> None:
    uri = "https://a.example/s/1"
    first = _open(tmp_path)
    first.offer(A, _status("1", uri))
    first.offer(A, _status("1", uri, edited_at="2026-11-23T10:05:00.000Z"), backfilled=True)
    first.close()  # no stream will settle it now, but the next run's will
    first.spool.close()
    first.state.close()
    again = _open(tmp_path)
    try:
        assert _versions(again) == ["status"]
        assert again.offer(A, _edit("1", uri, "2026-11-23T10:05:00.000Z")) == "published"
        assert again.release_held(everything=True) == 0
        assert _versions(again) == ["status", "edit@05"]
    finally:
        again.close()
        again.spool.close()
        again.state.close()


def test_an_edit_with_an_absurd_time_beside_a_held_one_is_still_taken(
    ingestor: Ingestor,
) -> None:
    uri = "https://a.example/s/1"
    ingestor.offer(A, _status("1", uri))
    ingestor.offer(A, _status("1", uri, edited_at="2026-11-23T10:05:00.000Z"), backfilled=True)
    odd = _edit("1", uri, "0001-01-01T00:00:00+01:00")  # out of datetime's range in UTC
    assert ingestor.offer(A, odd) == "published"
    bad_created = _status("2", "https://a.example/s/2", created_at="0001-01-01T00:00:00+01:00")
    assert ingestor.offer(A, bad_created) == "dead-lettered"


def test_held_edits_survive_a_crash(tmp_path: Path) -> None:
    uri = "https://a.example/s/1"
    first = _open(tmp_path)
    first.offer(A, _status("1", uri))
    first.offer(A, _status("1", uri, edited_at="2026-11-23T10:05:00.000Z"), backfilled=True)
    first.sync()  # committed with the state; then the process dies (no close)
    first.spool.close()
    first.state.close()
    again = _open(tmp_path)
    try:
        assert again.offer(A, _edit("1", uri, "2026-11-23T10:04:00.000Z")) == "published"
        assert again.release_held(everything=True) == 1
        assert _versions(again) == ["status", "edit@04", "edit@05"]
    finally:
        again.close()
        again.spool.close()
        again.state.close()


def test_checkpoints_follow_the_newest_timeline_id(ingestor: Ingestor) -> None:
    for local_id in ("105", "103", "110"):
        ingestor.offer(A, _status(local_id, f"https://a.example/s/{local_id}"))
    ingestor.offer(A, StreamEvent("delete", b"999"))  # not a timeline position
    assert ingestor.state_checkpoint(A) == "110"
    assert ingestor.state_checkpoint(B) is None


def test_malformed_input_is_dead_lettered_with_its_bytes(ingestor: Ingestor) -> None:
    assert ingestor.offer(A, StreamEvent("update", b"{not json")) == "dead-lettered"
    assert ingestor.offer(A, StreamEvent("update", b"x" * 5000)) == "dead-lettered"
    ingestor.sync()
    letters = [
        json.loads(r.value) for r in ingestor.spool.read(0) if r.topic == Topics.DEAD_LETTER.name
    ]
    assert [letter["original"][:9] for letter in letters] == ["{not json", "xxxxxxxxx"]
    assert "exceeds 4096 bytes" in letters[1]["reason"]


def test_unknown_events_are_kept(ingestor: Ingestor) -> None:
    assert ingestor.offer(A, StreamEvent("fedilake.unknown", b'{"x":1}')) == "published"
    assert ingestor.offer(A, StreamEvent("fedilake.unknown", b'{"x":1}')) == "published"
    assert [e.kind for e in _published(ingestor)] == [EventKind.UNKNOWN] * 2


def test_opted_out_authors_are_counted_anonymously_by_default(ingestor: Ingestor) -> None:
    shy = {"id": "7", "acct": "shy", "note": "<p>#<span>nobot</span></p>"}
    ingestor.offer(A, _status("1", "https://a.example/s/1", account=shy))
    [envelope] = _published(ingestor)
    status = envelope.payload_json
    assert status["account"]["acct"] == "" and status["content"] == ""
    assert status["tags"] == [{"name": "rust"}] and status["fedilake_anonymized"] is True


def test_the_drop_policy_publishes_nothing_of_opted_out_authors(tmp_path: Path) -> None:
    ingestor = _open(tmp_path, OptOutPolicy.DROP)
    shy = {"id": "7", "acct": "shy", "indexable": False}
    assert ingestor.offer(A, _status("1", "https://a.example/s/1", account=shy)) == "withheld"
    assert _published(ingestor) == []


def test_state_and_spool_agree_after_a_crash_between_fsync_and_commit(tmp_path: Path) -> None:
    ingestor = _open(tmp_path)
    ingestor.offer(A, _status("1", "https://a.example/s/1"))
    ingestor.sync()
    ingestor.offer(A, _status("2", "https://a.example/s/2"))
    ingestor.spool.sync()  # durable in the spool, but the state never committed: a crash
    ingestor.spool.close()
    ingestor.state.close()

    reopened = _open(tmp_path)
    assert reopened.recover() == 1
    assert reopened.offer(A, _status("2", "https://a.example/s/2")) == "duplicate"
    assert reopened.state_checkpoint(A) == "2"
    reopened.close()
    with pytest.raises(IngestClosed):
        reopened.offer(A, _status("3", "https://a.example/s/3"))


def test_a_failed_state_commit_is_carried_into_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When a commit fails, the next one, whose spool position covers its rows, must still
    # store them.
    ingestor = _open(tmp_path)
    ingestor.offer(A, _status("1", "https://a.example/s/1"))
    db = ingestor.state._db

    class FullDisk:
        def __getattr__(self, name: str) -> Any:
            return getattr(db, name)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT":
                raise sqlite3.OperationalError("database or disk is full")
            return db.execute(sql, *args)

    monkeypatch.setattr(ingestor.state, "_db", FullDisk())
    with pytest.raises(sqlite3.OperationalError):
        ingestor.sync()
    monkeypatch.setattr(ingestor.state, "_db", db)
    ingestor.offer(A, _status("2", "https://a.example/s/2"))
    ingestor.sync()
    ingestor.spool.close()
    ingestor.state.close()

    reopened = _open(tmp_path)
    assert reopened.recover() == 0  # nothing beyond the last commit: it held both
    assert reopened.offer(A, _status("1", "https://a.example/s/1")) == "duplicate"
    assert reopened.state_checkpoint(A) == "2"
    reopened.close()


def test_a_failed_periodic_sync_stops_the_streamer_without_trusting_disk_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingestor = _open(tmp_path)
    ingestor.offer(A, _status("1", "https://a.example/s/1"))
    ingestor.sync()
    ingestor.offer(A, _status("2", "https://a.example/s/2"))
    told: list[BaseException] = []
    ingestor.on_failure = told.append

    def failing_fsync() -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ingestor.spool, "sync", failing_fsync)
    stop = threading.Event()
    ingestor.sync_periodically(0.01, stop)  # returns on the failure, not on `stop`
    assert isinstance(ingestor.failure, OSError) and told == [ingestor.failure]
    ingestor.close()  # no further commit: the state stays at the last good sync
    monkeypatch.undo()
    ingestor.spool.close()
    ingestor.state.close()

    reopened = _open(tmp_path)
    assert reopened.state.spool_seq == 1
    reopened.close()


def test_gotosocial_ulid_ids_are_statuses_and_checkpoints_like_any_other(
    ingestor: Ingestor,
) -> None:
    gts = Source("https://gts.example", "public")
    for ulid in ("01HF7YAT31JZZ2T0KX6QJXKK5S", "01HF7YAT31JZZ2T0KX6QJXKK5T"):
        assert ingestor.offer(gts, _status(ulid, f"https://gts.example/s/{ulid}")) == "published"
    assert ingestor.state_checkpoint(gts) == "01HF7YAT31JZZ2T0KX6QJXKK5T"
    assert ingestor.offer(gts, StreamEvent("delete", b"01HF7YAT31JZZ2T0KX6QJXKK5S")) == "published"
    assert _published(ingestor)[-1].uri == "https://gts.example/s/01HF7YAT31JZZ2T0KX6QJXKK5S"
