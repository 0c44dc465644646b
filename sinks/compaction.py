"""Planning the lake's hourly compaction (pure): which hours are closed, which files merge, what is deleted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

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


def compaction_state(part_names: Iterable[str], tombstone_key: str) -> str:
    """Names the state an hour was compacted in: its part files and the tombstones applied.

    Kept as the name of an empty marker file, so one directory listing tells whether a late
    file or a new delete arrived since (HDFS keeps a file's time across a rename, so times
    cannot tell).
    """
    digest = hashlib.sha256()
    for name in sorted(part_names):
        digest.update(name.encode() + b"\n")
    digest.update(tombstone_key.encode())
    return STATE_MARKER_PREFIX + digest.hexdigest()[:20]


def tombstone_key(tombstone_files: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(tombstone_files)).encode()).hexdigest()[:20]


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
        """True for a status or edit whose status was deleted; deletes themselves are kept."""
        if not self.local_ids:
            return False
        try:
            doc = json.loads(line)
        except ValueError:
            return False
        if doc.get("kind") not in (EventKind.STATUS.value, EventKind.EDIT.value):
            return False
        if doc.get("uri") in self.uris:
            return True
        return (doc.get("instance"), doc.get("status_id")) in self.local_ids
