"""Planning the lake's hourly compaction (pure): which hours are closed, which files merge, what is deleted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fedilake.contracts import Envelope, EnvelopeError, EventKind, PartFile, part_file_name


@dataclass(frozen=True)
class LakeFile:
    name: str
    part: PartFile
    size: int


@dataclass(frozen=True)
class MergeStep:
    """Files of one topic-partition-hour that become one output file."""

    output: str
    sources: tuple[str, ...]


def plan_merges(files: Iterable[LakeFile], target_bytes: int) -> list[MergeStep]:
    """Per partition, in offset order, pack files into outputs of at most `target_bytes`
    (a file larger than the target stays alone). Every file belongs to exactly one step."""
    by_partition: dict[tuple[str, int], list[LakeFile]] = {}
    for lake_file in files:
        by_partition.setdefault((lake_file.part.topic, lake_file.part.partition), []).append(
            lake_file
        )
    steps: list[MergeStep] = []
    for (topic, partition), group in sorted(by_partition.items()):
        group.sort(key=lambda f: f.part.first_offset)
        chunk: list[LakeFile] = []
        size = 0
        for lake_file in group:
            if chunk and size + lake_file.size > target_bytes:
                steps.append(_step(topic, partition, chunk))
                chunk, size = [], 0
            chunk.append(lake_file)
            size += lake_file.size
        if chunk:
            steps.append(_step(topic, partition, chunk))
    return steps


def _step(topic: str, partition: int, chunk: list[LakeFile]) -> MergeStep:
    first = min(f.part.first_offset for f in chunk)
    last = max(f.part.last_offset for f in chunk)
    return MergeStep(part_file_name(topic, partition, first, last), tuple(f.name for f in chunk))


def closed_hours(
    hours: Iterable[datetime], watermark: datetime, grace: timedelta
) -> list[datetime]:
    """Hours whose end plus the grace period the watermark has passed."""
    return sorted(h for h in hours if h + timedelta(hours=1) + grace <= watermark)


def lake_watermark(
    partition_marks: Mapping[int, tuple[datetime | None, datetime]],
    now: datetime,
    idle: timedelta,
) -> datetime:
    """The event time below which no more events are expected.

    Per partition: the newest event time it landed, or the wall clock once it has been
    idle for `idle` (so a quiet topic still closes its hours). The lake's watermark is the
    slowest partition's. `partition_marks` maps partition -> (newest event time, when its
    last flush was written).
    """
    marks = []
    for newest_event, flushed_at in partition_marks.values():
        if newest_event is None or now - flushed_at >= idle:
            marks.append(now)
        else:
            marks.append(newest_event)
    return min(marks) if marks else now


STATE_MARKER_PREFIX = "_compacted-"


def compaction_state(part_names: Iterable[str]) -> str:
    """Names the part files an hour was compacted into.

    Kept as the name of an empty marker file, so one directory listing tells whether a late
    file arrived since (HDFS keeps a file's time across a rename, so times cannot tell).
    Which deletes the hour has seen is in its `_SUCCESS` (`tombstones`, a frontier).
    """
    digest = hashlib.sha256()
    for name in sorted(part_names):
        digest.update(name.encode() + b"\n")
    return STATE_MARKER_PREFIX + digest.hexdigest()[:20]


# Per partition of the topic, the last offset of the newest tombstone file seen.
TombstoneFrontier = dict[int, int]


def tombstone_frontier(names: Iterable[str]) -> TombstoneFrontier:
    """How far the tombstone files named go. A partition's files appear in offset order
    (the sink lands one flush at a time), so a file past an hour's frontier is one the
    hour has not been checked against."""
    frontier: TombstoneFrontier = {}
    for name in names:
        part = PartFile.parse(name)
        if part is not None:
            frontier[part.partition] = max(frontier.get(part.partition, -1), part.last_offset)
    return frontier


def tombstones_beyond(names: Iterable[str], applied: Mapping[int, int]) -> list[str]:
    """The tombstone files an hour checked up to `applied` has not seen."""
    return [
        name
        for name in names
        if (part := PartFile.parse(name)) is not None
        and part.last_offset > applied.get(part.partition, -1)
    ]


def covers(applied: Mapping[int, int], frontier: Mapping[int, int]) -> bool:
    return all(applied.get(p, -1) >= last for p, last in frontier.items())


def frontier_doc(frontier: Mapping[int, int]) -> dict[str, int]:
    return {str(p): last for p, last in sorted(frontier.items())}


def frontier_of(doc: Mapping[str, Any] | None) -> TombstoneFrontier | None:
    """The frontier kept in a `_SUCCESS`; None when it has none (written before it had)."""
    found = (doc or {}).get("tombstones")
    if not isinstance(found, dict):
        return None
    try:
        return {int(p): int(last) for p, last in found.items()}
    except (TypeError, ValueError):
        return None


_KEY_BYTES = 8


def _index_key(kind: bytes, *parts: str) -> bytes:
    text = kind + b"\0" + "\0".join(parts).encode()
    return hashlib.blake2b(text, digest_size=_KEY_BYTES).digest()


def status_keys(uri: str | None, instance: str | None, status_id: str | None) -> list[bytes]:
    """What a delete may name a stored status by: its uri, or its instance-local id."""
    keys = []
    if uri is not None:
        keys.append(_index_key(b"uri", uri))
    if instance is not None and status_id is not None:
        keys.append(_index_key(b"id", instance, status_id))
    return keys


def encode_status_index(keys: Iterable[bytes]) -> bytes:
    """8-byte hashes, sorted: ~16 bytes a status (uri and local id). A collision only
    makes compaction read an hour it did not need to."""
    return b"".join(sorted(set(keys)))


def decode_status_index(data: bytes) -> set[bytes] | None:
    """The keys of an index; None if it is not whole (its hour is compacted again)."""
    if len(data) % _KEY_BYTES:
        return None
    return {data[i : i + _KEY_BYTES] for i in range(0, len(data), _KEY_BYTES)}


@dataclass(frozen=True)
class Tombstone:
    """A delete: it names an instance-local id, and the uri when the streamer knew it."""

    instance: str
    status_id: str
    uri: str | None


def tombstone_of(line: bytes) -> Tombstone | None:
    try:
        envelope = Envelope.from_bytes(line)
    except EnvelopeError:
        return None
    if envelope.kind is not EventKind.DELETE or envelope.status_id is None:
        return None
    return Tombstone(envelope.instance, envelope.status_id, envelope.uri)


class DeletedStatuses:
    """Which stored statuses a set of deletes removes (by instance-local id, or by uri)."""

    def __init__(self, tombstones: Iterable[Tombstone] = ()) -> None:
        self.local_ids: set[tuple[str, str]] = set()
        self.uris: set[str] = set()
        for tombstone in tombstones:
            self.add(tombstone)

    def add(self, tombstone: Tombstone) -> None:
        self.local_ids.add((tombstone.instance, tombstone.status_id))
        if tombstone.uri:
            self.uris.add(tombstone.uri)

    def __len__(self) -> int:
        return len(self.local_ids)

    def removes(self, line: bytes) -> bool:
        """True for a line carrying a deleted status (the status, its edits, refreshes and
        notifications); deletes themselves are kept."""
        found = stored_status(line) if self.local_ids else None
        return found is not None and self.removes_status(*found)

    def removes_status(self, uri: str | None, instance: str | None, status_id: str | None) -> bool:
        return uri in self.uris or (instance, status_id) in self.local_ids

    def index_keys(self) -> set[bytes]:
        """The `status_keys` of every status these deletes name."""
        keys = {_index_key(b"uri", uri) for uri in self.uris}
        keys.update(_index_key(b"id", instance, local) for instance, local in self.local_ids)
        return keys


# Every kind of line that carries a status (its text, its author): a delete removes them
# all. Refreshes hold the whole status as fetched, notifications the status they are about,
# conversations their last status. An hour whose `_SUCCESS` names another version of this
# rule (or none) was compacted by an older one: it is compacted again, whole, with every
# tombstone kept.
STATUS_INDEX_VERSION = 3
_ABOUT_A_STATUS = frozenset(
    kind.value
    for kind in (
        EventKind.STATUS,
        EventKind.EDIT,
        EventKind.REFRESH,
        EventKind.NOTIFICATION,
        EventKind.CONVERSATION,
    )
)


def stored_status(line: bytes) -> tuple[str | None, str | None, str | None] | None:
    """(uri, instance, instance-local id) of the status a line carries; None for lines that
    carry none (deletes, announcements, ...)."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("kind") not in _ABOUT_A_STATUS:
        return None
    if not doc.get("uri") and not doc.get("status_id"):
        return None  # a notification without a status (a follow)
    return doc.get("uri"), doc.get("instance"), doc.get("status_id")
