"""Compaction planning: merges per partition under a target size, closed hours, watermark, tombstones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fedilake.contracts import Envelope, EventKind, PartFile, part_file_name
from sinks.compaction import (
    STATE_MARKER_PREFIX,
    DeletedStatuses,
    LakeFile,
    Tombstone,
    closed_hours,
    compaction_state,
    covers,
    decode_status_index,
    encode_status_index,
    frontier_doc,
    frontier_of,
    lake_watermark,
    plan_merges,
    status_keys,
    stored_status,
    tombstone_frontier,
    tombstone_of,
    tombstones_beyond,
)

T = "fedilake.events"
NOW = datetime(2026, 11, 23, 12, 30, tzinfo=UTC)


def lake_file(partition: int, first: int, last: int, size: int) -> LakeFile:
    name = part_file_name(T, partition, first, last)
    part = PartFile.parse(name)
    assert part is not None
    return LakeFile(name, part, size)


def test_small_files_of_a_partition_merge_into_one_named_by_their_whole_range() -> None:
    files = [lake_file(0, 10, 19, 100), lake_file(0, 0, 9, 100), lake_file(1, 5, 5, 10)]
    steps = plan_merges(files, target_bytes=1000)
    assert [(s.output, s.sources) for s in steps] == [
        (part_file_name(T, 0, 0, 19), (files[1].name, files[0].name)),
        (part_file_name(T, 1, 5, 5), (files[2].name,)),
    ]


def test_outputs_stay_under_the_target_and_every_file_is_used_once() -> None:
    files = [lake_file(0, n * 10, n * 10 + 9, 400) for n in range(7)]
    steps = plan_merges(files, target_bytes=1000)
    assert [len(s.sources) for s in steps] == [2, 2, 2, 1]
    used = [name for s in steps for name in s.sources]
    assert sorted(used) == sorted(f.name for f in files)


def test_a_file_over_the_target_stays_alone() -> None:
    files = [lake_file(0, 0, 9, 5000), lake_file(0, 10, 19, 10)]
    assert [len(s.sources) for s in plan_merges(files, target_bytes=1000)] == [1, 1]


def test_an_hour_closes_when_the_watermark_passes_its_end_plus_grace() -> None:
    hours = [NOW.replace(hour=h, minute=0) for h in (9, 10, 11, 12)]
    assert closed_hours(hours, NOW, timedelta(minutes=10)) == hours[:3]
    assert closed_hours(hours, NOW, timedelta(minutes=40)) == hours[:2]


def test_the_watermark_is_the_slowest_partitions_and_idle_partitions_follow_the_clock() -> None:
    busy = (NOW - timedelta(hours=3), NOW - timedelta(seconds=5))
    slow = (NOW - timedelta(hours=5), NOW - timedelta(seconds=5))
    idle = (NOW - timedelta(hours=9), NOW - timedelta(hours=1))
    idle_after = timedelta(minutes=5)
    assert lake_watermark({0: busy, 1: slow}, NOW, idle_after) == NOW - timedelta(hours=5)
    assert lake_watermark({0: busy, 1: idle}, NOW, idle_after) == NOW - timedelta(hours=3)
    assert lake_watermark({}, NOW, idle_after) == NOW


def envelope(kind: EventKind, status_id: str, uri: str | None) -> bytes:
    return Envelope(
        kind=kind,
        instance="https://a.example",
        stream="public",
        event="x",
        received_at=NOW,
        created_at=NOW if kind is EventKind.STATUS else None,
        uri=uri,
        status_id=status_id,
        payload="{}",
    ).to_bytes()


def test_deletes_remove_statuses_by_local_id_or_uri_and_keep_themselves() -> None:
    delete = envelope(EventKind.DELETE, "7", None)
    tombstone = tombstone_of(delete)
    assert tombstone == Tombstone("https://a.example", "7", None)
    deleted = DeletedStatuses([tombstone, Tombstone("https://b.example", "1", "https://x/s/9")])
    assert deleted.removes(envelope(EventKind.STATUS, "7", "https://a.example/s/7"))
    assert deleted.removes(envelope(EventKind.EDIT, "7", "https://a.example/s/7"))
    assert deleted.removes(envelope(EventKind.STATUS, "99", "https://x/s/9"))
    assert not deleted.removes(envelope(EventKind.STATUS, "8", "https://a.example/s/8"))
    assert not deleted.removes(delete)
    assert not DeletedStatuses().removes(envelope(EventKind.STATUS, "7", None))
    assert tombstone_of(envelope(EventKind.STATUS, "7", None)) is None
    assert tombstone_of(b"not json") is None


def test_the_compaction_state_changes_with_a_late_file() -> None:
    files = [part_file_name(T, 0, 0, 9), part_file_name(T, 1, 0, 9)]
    state = compaction_state(files)
    assert state.startswith(STATE_MARKER_PREFIX)
    assert compaction_state(list(reversed(files))) == state
    assert compaction_state([*files, part_file_name(T, 0, 10, 12)]) != state


def test_an_hour_sees_only_the_tombstone_files_past_its_frontier() -> None:
    names = [part_file_name(T, 0, 0, 9), part_file_name(T, 0, 10, 19), part_file_name(T, 2, 5, 7)]
    frontier = tombstone_frontier(names)
    assert frontier == {0: 19, 2: 7}
    assert tombstones_beyond(names, frontier) == []
    assert tombstones_beyond(names, {0: 9}) == [names[1], names[2]]
    assert covers({0: 19, 2: 7, 3: 1}, frontier) and not covers({0: 19}, frontier)
    assert frontier_of({"events": 3, "tombstones": frontier_doc(frontier)}) == frontier
    assert frontier_of({"events": 3}) is None  # compacted before frontiers: compact again
    assert frontier_of({"tombstones": {"x": 1}}) is None


def test_the_status_index_tells_which_deletes_concern_an_hour() -> None:
    lines = [
        envelope(EventKind.STATUS, "7", "https://a.example/s/7"),
        envelope(EventKind.EDIT, "8", "https://a.example/s/8"),
        envelope(EventKind.DELETE, "9", None),
    ]
    found = [stored_status(line) for line in lines]
    assert found[2] is None
    index = decode_status_index(
        encode_status_index(k for status in found if status for k in status_keys(*status))
    )
    assert len(index) == 4  # uri and local id of two statuses
    by_id = DeletedStatuses([Tombstone("https://a.example", "7", None)])
    by_uri = DeletedStatuses([Tombstone("https://b.example", "1", "https://a.example/s/8")])
    elsewhere = DeletedStatuses([Tombstone("https://a.example", "70", "https://a.example/s/70")])
    assert not by_id.index_keys().isdisjoint(index)
    assert not by_uri.index_keys().isdisjoint(index)
    assert elsewhere.index_keys().isdisjoint(index)
    assert decode_status_index(b"") == set()


def test_a_delete_removes_every_line_carrying_its_status() -> None:
    deleted = DeletedStatuses([Tombstone("https://a.example", "7", None)])
    about = "https://a.example/s/7"
    assert deleted.removes(envelope(EventKind.REFRESH, "7", about))  # the status as fetched
    assert deleted.removes(envelope(EventKind.NOTIFICATION, "7", about))  # a mention of it
    assert not deleted.removes(envelope(EventKind.NOTIFICATION, "", None))  # a follow
    assert not deleted.removes(envelope(EventKind.REFRESH, "8", "https://a.example/s/8"))
    assert stored_status(envelope(EventKind.NOTIFICATION, "", None)) is None


def test_a_delete_removes_the_conversations_whose_last_status_it_was() -> None:
    deleted = DeletedStatuses([Tombstone("https://a.example", "7", None)])
    assert deleted.removes(envelope(EventKind.CONVERSATION, "7", "https://a.example/s/7"))
    assert not deleted.removes(envelope(EventKind.CONVERSATION, "", None))
