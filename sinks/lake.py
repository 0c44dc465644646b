"""The Kafka-to-HDFS lake writer: hourly gzip JSON-lines files by event time, exactly once.

Each flush of a partition covers one offset range [first, last]. Its files (one per
event-time hour) are written under hidden temporary names, then a manifest naming
them is written under `_offsets/`, then they are renamed into place, then the Kafka
offset is committed. On (re)assignment the latest manifest is rolled forward and the
partition resumes right after it, so a crash at any step neither loses nor
duplicates: the offsets are stored with the output.

The manifest is named by the range's first offset and created only where none exists,
and it stands only while no later one does: a member that lost the partition without
knowing it (paused past a rebalance) is fenced there, so two members never both land
an offset.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import posixpath
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

from hdfs import HdfsError, InsecureClient
from isal import igzip
from kafka import KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from fedilake.contracts import (
    Envelope,
    EnvelopeError,
    EventKind,
    PartFile,
    Topics,
    dead_letter_record,
    format_time,
    part_file_name,
    raw_day_dir,
    raw_hour_dir,
    tombstone_dir,
)
from fedilake.settings import HdfsSettings, HdfsSinkSettings, KafkaSettings

from .group_consumer import GroupConsumer

log = logging.getLogger(__name__)

# The longest a rebalance callback waits for a flush in flight: the group's rebalance
# waits for it (and must end within the consumer's 45 s rebalance timeout).
REBALANCE_WAIT_S = 15.0

# Partitions of one flush landing at once.
LANDING_THREADS = 4


@dataclass
class PartitionBuffer:
    first: int | None = None
    last: int | None = None
    by_hour: dict[datetime, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    newest_event: datetime | None = None
    deletes: list[bytes] = field(default_factory=list)
    # Names this flush's temporary files: a retry rewrites its own, and never touches those
    # of another member holding the same range (their renames could revive merged files).
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def add(
        self,
        offset: int,
        hour: datetime,
        line: bytes,
        event_time: datetime | None = None,
        is_delete: bool = False,
    ) -> None:
        if self.first is None:
            self.first = offset
        self.last = offset
        self.by_hour[hour].append(line)
        moment = event_time or hour
        if self.newest_event is None or moment > self.newest_event:
            self.newest_event = moment
        if is_delete:
            self.deletes.append(line)

    def __len__(self) -> int:
        return sum(len(lines) for lines in self.by_hour.values())

    def size(self) -> int:
        return sum(len(line) + 1 for lines in self.by_hour.values() for line in lines)


def webhdfs_client(hdfs: HdfsSettings) -> InsecureClient:
    """The WebHDFS client every stage uses, with the configured request timeout."""
    return InsecureClient(hdfs.webhdfs_url, user=hdfs.user, timeout=hdfs.request_timeout_s)


def hour_of(moment: datetime) -> datetime:
    """The UTC hour an event-time instant falls in."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def encode_part(lines: Iterable[bytes]) -> bytes:
    """Gzip JSON lines, as any gzip reader (Hadoop's codec included) reads them.

    ISA-L's level 1 is ~4x faster than zlib's and compresses smaller (1.5 against 6.7 us
    for a 2.6 KB envelope here); it lets go of the GIL, like zlib. mtime=0: rewriting the
    same offsets gives the same bytes, not only the same name. One join with a trailing
    empty line: concatenating each line with its newline first cost a third as much as
    the compression."""
    return igzip.compress(b"\n".join([*lines, b""]), compresslevel=1, mtime=0)


@dataclass(frozen=True)
class EncodedFlush:
    """One partition's flush as the bytes of its part files: per event hour, and deletes."""

    parts: list[tuple[datetime, bytes]]
    deletes: bytes | None


def encode_flush(buffer: PartitionBuffer) -> EncodedFlush:
    """Compress a flush."""
    return EncodedFlush(
        [(hour, encode_part(lines)) for hour, lines in sorted(buffer.by_hour.items())],
        encode_part(buffer.deletes) if buffer.deletes else None,
    )


class Landing(Enum):
    """What became of one partition's flush."""

    LANDED = "landed"
    GIVEN_UP = "given up"  # the partition stopped being ours before its manifest
    FENCED = "fenced"  # another member landed a range from the same offset, or later


class LakeWriter:
    """Writes one partition's flush to HDFS and recovers a partition's position from HDFS."""

    def __init__(self, client: InsecureClient, root: str) -> None:
        self.client = client
        self.root = root

    def manifest_dir(self, topic: str, partition: int) -> str:
        return f"{self.root}/_offsets/{topic}/{partition}"

    def write(
        self,
        topic: str,
        partition: int,
        buffer: PartitionBuffer,
        proceed: Callable[[], bool] | None = None,
        commit_lock: threading.Lock | None = None,
    ) -> Landing:
        """Land one partition's flush: part files under temporary names, the manifest
        naming them, then the renames (compressed here: the sink lands partitions in
        parallel, and ISA-L lets go of the GIL).

        The manifest is the point of no return, and a fence: it is named by the range's
        first offset and created only if no writer has landed a range from that offset,
        nor any range after it. A member that lost the partition without knowing it (a
        paused process) is refused there (FENCED) and its files never appear. If
        `proceed` (asked just before) says no, nothing lands (GIVEN_UP). Both happen under
        `commit_lock`, so whoever takes it after making `proceed` say no knows that no
        manifest of this flush is being written."""
        assert buffer.first is not None and buffer.last is not None
        manifest_path = f"{self.manifest_dir(topic, partition)}/{buffer.first:020d}.json"
        name = part_file_name(topic, partition, buffer.first, buffer.last)
        landed = self._read_manifest(manifest_path)
        if landed is not None:
            if landed.get("token") != buffer.token:
                return Landing.FENCED  # another member landed a range from this offset
            # A retry of this flush, whose manifest is durable: only finish its renames
            # (rewriting the temps could revive files compaction has merged away since).
            if not self._still_latest(topic, partition, manifest_path):
                return Landing.FENCED  # landed, and others went on from it: ask the lake
            self._apply([tuple(move) for move in landed["files"]])
            return Landing.LANDED
        encoded = encode_flush(buffer)
        moves = []
        for hour, data in encoded.parts:
            directory = raw_hour_dir(topic, hour, self.root)
            temp = f"{directory}/{part_temp_name(name, buffer.token)}"
            self.client.write(temp, data=data, overwrite=True)
            moves.append((temp, f"{directory}/{name}"))
        if encoded.deletes is not None:
            # Deletes are also kept apart, so compaction finds every tombstone cheaply.
            directory = tombstone_dir(topic, self.root)
            temp = f"{directory}/{part_temp_name(name, buffer.token)}"
            self.client.write(temp, data=encoded.deletes, overwrite=True)
            moves.append((temp, f"{directory}/{name}"))
        with commit_lock or contextlib.nullcontext():
            if proceed is not None and not proceed():
                outcome = Landing.GIVEN_UP
            else:
                outcome = self._commit(topic, partition, manifest_path, buffer, moves)
        if outcome is not Landing.LANDED:
            self._discard(temp for temp, _final in moves)
            return outcome
        self._rename_all(moves)
        self._prune_manifests(topic, partition, keep=manifest_path)
        return Landing.LANDED

    def _commit(
        self,
        topic: str,
        partition: int,
        manifest_path: str,
        buffer: PartitionBuffer,
        moves: list[tuple[str, str]],
    ) -> Landing:
        manifest = {
            "first": buffer.first,
            "last": buffer.last,
            "newest_event": format_time(buffer.newest_event) if buffer.newest_event else None,
            "files": moves,
            "token": buffer.token,
        }
        if not self.create_once(manifest_path, json.dumps(manifest).encode()):
            # Another member landed a range from this offset first: even the same range
            # is its to finish (our renames could revive files compaction merged since).
            return Landing.FENCED
        if not self._still_latest(topic, partition, manifest_path):
            # Created because the fence of this offset was pruned long ago: a member that
            # was away (a paused process) landing a range that others have landed since.
            self.client.delete(manifest_path)
            return Landing.FENCED
        return Landing.LANDED

    def _still_latest(self, topic: str, partition: int, manifest_path: str) -> bool:
        """No range after this manifest's has landed (manifests are never pruned above
        the newest, and a range starts where the newest one its writer saw ended)."""
        mine = posixpath.basename(manifest_path)
        return not any(
            _is_manifest(n) and n > mine
            for n in self.client.list(self.manifest_dir(topic, partition))
        )

    def _read_manifest(self, path: str) -> dict[str, Any] | None:
        if self.client.status(path, strict=False) is None:
            return None  # the usual case: one request
        with self.client.read(path) as reader:
            manifest: dict[str, Any] = json.loads(reader.read())
            return manifest

    def _discard(self, temps: Iterable[str]) -> None:
        """Best effort: a fenced flush's temporary files (nobody else writes these names)."""
        for temp in temps:
            try:
                self.client.delete(temp)
            except HdfsError as exc:
                log.warning("could not remove %s: %s", temp, exc)

    def count_events(self, topic: str, day: date) -> int:
        """Events in the visible part files of one day (reads them: for checks, not hot paths)."""
        day_dir = raw_day_dir(topic, day, self.root)
        if self.client.status(day_dir, strict=False) is None:
            return 0
        count = 0
        for hour in self.client.list(day_dir):
            for name in self.client.list(f"{day_dir}/{hour}"):
                if PartFile.parse(name) is not None:
                    count += len(self.read_lines(f"{day_dir}/{hour}/{name}"))
        return count

    def read_lines(self, path: str) -> list[bytes]:
        """The JSON lines of one gzip part file."""
        with self.client.read(path) as reader:
            return igzip.decompress(reader.read()).splitlines()

    def recover(self, topic: str, partition: int) -> int | None:
        """Finish the latest flush if a crash interrupted it; return the next offset to read."""
        latest = self.latest_manifest(topic, partition)
        if latest is None:
            return None
        manifest, _written = latest
        self._apply([tuple(move) for move in manifest["files"]])
        return int(manifest["last"]) + 1

    def latest_manifest(self, topic: str, partition: int) -> tuple[dict[str, Any], int] | None:
        """The partition's newest flush manifest and when it was written (ms since epoch)."""
        directory = self.manifest_dir(topic, partition)
        if self.client.status(directory, strict=False) is None:
            return None  # never flushed; any other HDFS error must not look like this
        listing = self.client.list(directory, status=True)
        manifests = sorted((n, st) for n, st in listing if _is_manifest(n))
        if not manifests:
            return None
        name, status = manifests[-1]
        with self.client.read(f"{directory}/{name}") as reader:
            return json.loads(reader.read()), int(status["modificationTime"])

    def sweep_temps(self, directory: str, names: Iterable[str]) -> int:
        """Remove the temporary part files among `names` (in `directory`) that no flush can
        rename any more: those of a range starting at or before the partition's latest
        manifest that the manifest does not name (a flush cut short by a crash, given up
        or fenced). Returns how many went."""
        latest: dict[tuple[str, int], dict[str, Any] | None] = {}
        removed = 0
        for name in names:
            part = parse_part_temp(name)
            if part is None:
                continue
            key = (part.topic, part.partition)
            if key not in latest:
                found = self.latest_manifest(*key)
                latest[key] = found[0] if found is not None else None
            manifest = latest[key]
            if (
                manifest is None  # nothing landed yet: it may be the first flush's
                or part.first_offset > int(manifest["first"])  # a flush may be landing it
                # Its renames (by name: the flush's token makes it that flush's alone).
                or name in {posixpath.basename(temp) for temp, _final in manifest["files"]}
            ):
                continue
            self.client.delete(f"{directory}/{name}")
            removed += 1
        if removed:
            log.info("removed %d temporary part files no flush can land, in %s", removed, directory)
        return removed

    def partitions(self, topic: str) -> list[int]:
        try:
            return sorted(int(n) for n in self.client.list(f"{self.root}/_offsets/{topic}"))
        except HdfsError:
            return []

    def _rename_all(self, moves: Iterable[tuple[str, str]]) -> None:
        """The renames of a fresh flush: new names, so no checks (recovery uses `_apply`)."""
        for temp, final in moves:
            self.client.rename(temp, final)

    def _apply(self, moves: Iterable[tuple[str, str]]) -> None:
        for temp, final in moves:
            if self.client.status(final, strict=False) is not None:
                continue
            if self.client.status(temp, strict=False) is None:
                continue  # renamed already, and since merged away by compaction
            self.client.rename(temp, final)

    def create_once(self, path: str, data: bytes) -> bool:
        """Create `path` whole with `data` unless it exists (then False): HDFS refuses to
        rename onto an existing file, so of two writers exactly one succeeds."""
        directory, base = posixpath.split(path)
        temp = f"{directory}/.{base}.{uuid.uuid4().hex}.tmp"  # never another writer's
        self.client.write(temp, data=data, overwrite=True)
        try:
            self.client.rename(temp, path)
        except HdfsError:
            if self.client.status(path, strict=False) is None:
                raise
            self.client.delete(temp)
            return False
        return True

    def write_atomically(self, path: str, data: bytes) -> None:
        """Readers see the old file or the whole new one, never a part (temp, then rename)."""
        temp = posixpath.join(posixpath.dirname(path), "." + posixpath.basename(path) + ".tmp")
        self.client.write(temp, data=data, overwrite=True)
        self.client.delete(path)  # present only when a failed write is being retried
        self.client.rename(temp, path)

    def _prune_manifests(self, topic: str, partition: int, keep: str) -> None:
        """Remove the manifests before `keep`; never a later one (another member's, landed
        after ours) nor a temporary one (a commit in progress)."""
        directory, kept = posixpath.split(keep)
        for name in self.client.list(directory):
            if _is_manifest(name) and name < kept:
                self.client.delete(f"{directory}/{name}")


_PART_TEMP = re.compile(r"^\.(?P<part>[^/]+\.json\.gz)(?:\.[0-9a-f]+)?\.tmp$")


def part_temp_name(name: str, token: str) -> str:
    """A flush's hidden temporary name for the part file `name`."""
    return f".{name}.{token}.tmp"


def parse_part_temp(name: str) -> PartFile | None:
    """The part file a flush's temporary file (this version's or the last's) stands for."""
    match = _PART_TEMP.match(name)
    return PartFile.parse(match["part"]) if match else None


def _is_manifest(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


def _not_in(tp: TopicPartition, skip: set[TopicPartition]) -> bool:
    return tp not in skip


# Per partition, the offset consumption resumes at once a flush has landed.
Commits = dict[TopicPartition, int]


class LakeSinkBroken(RuntimeError):
    """A flush failed for good: the sink must stop, and a restart resume from the lake."""


class _Recovery(ConsumerRebalanceListener):
    """The consumer calls these inside `poll`, on the consumer loop's thread, while the
    group's rebalance waits for them (`GroupConsumer`): they commit nothing (a commit
    fails in the middle of a rebalance), landed offsets are committed by the loop."""

    def __init__(self, sink: HdfsLakeSink) -> None:
        self.sink = sink

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.sink.hand_over(revoked)

    def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        # Another member owns them now: the flush in flight lands nothing more of them
        # (a manifest HDFS is still writing may land; the fence keeps one copy).
        self.sink.abandon(lost)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Positions are read from the lake: the flush in flight lands first or, if HDFS
        # keeps it longer than a callback may take, lands nothing more of these
        # partitions (a manifest it is still writing may land; the fence keeps one copy).
        # The reading itself happens on the consumer's thread, where an HDFS outage holds
        # up nothing but these partitions.
        deadline = time.monotonic() + REBALANCE_WAIT_S
        if not self.sink.settle_quietly(REBALANCE_WAIT_S):
            # Read again from the lake's position.
            self.sink.abandon(assigned, max(0.0, deadline - time.monotonic()))
        self.sink.position_from_lake(assigned)


class HdfsLakeSink:
    """Consumes the event topics and lands every event in the lake exactly once."""

    def __init__(
        self,
        settings: HdfsSinkSettings,
        consumer: GroupConsumer,
        writer: LakeWriter,
        dead_letters: KafkaProducer,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.writer = writer
        self.dead_letters = dead_letters
        self.buffers: dict[TopicPartition, PartitionBuffer] = {}
        self.written = 0
        self.buffered_bytes = 0
        self.stop_requested = threading.Event()
        self._lander: ThreadPoolExecutor | None = None  # lands partitions in parallel
        self._flusher: ThreadPoolExecutor | None = None  # lands a flush while we consume
        self._in_flight: Future[Commits] | None = None
        self._broken = False  # a background flush failed: nothing more may land
        # Partitions the flush in flight must not write (lost, or handed over meanwhile);
        # each flush has its own set, so a partition taken back is written by the next.
        self._skip: set[TopicPartition] = set()
        self._commit_locks: dict[TopicPartition, threading.Lock] = {}
        self._commit_locks_guard = threading.Lock()
        self._landed: Commits = {}  # for the consumer loop to commit to Kafka
        self._held_back = False  # fetching paused: full buffers wait for a slow flush
        # Partitions consumed only once the consumer loop has read their position from
        # the lake (just assigned, or fenced off by another member's landing), with when
        # to try next and how long to wait after that if HDFS does not answer.
        self._unpositioned: dict[TopicPartition, tuple[float, float]] = {}
        self._landed_lock = threading.Lock()

    def run(self, topics: Iterable[str] = (Topics.EVENTS.name,)) -> None:
        self.consumer.subscribe(list(topics), listener=_Recovery(self))
        last_flush = time.monotonic()
        try:
            while not self.stop_requested.is_set():
                # Short: a partition assigned during a poll is paused until the loop reads
                # its position, and a poll with everything paused sleeps out its timeout.
                poll_ms = 100
                in_flight = self._in_flight
                if self._held_back and in_flight is not None:
                    # Nothing to fetch until the flush lands: wait for it, not for a poll.
                    futures_wait([in_flight], timeout=0.5)
                    poll_ms = 0
                batches = self.consumer.poll(timeout_ms=poll_ms, max_records=5000)
                for tp, records in batches.items():
                    for record in records:
                        self._add(tp, record.offset, record.value)
                        self.buffered_bytes += len(record.value) + 1
                self._settle(wait=False)
                if self._in_flight is None:
                    self._hold_back(False)
                self._read_positions()
                self._commit_landed()
                pending = sum(len(b) for b in self.buffers.values())
                due = time.monotonic() - last_flush >= self.settings.flush_interval_s
                full = (
                    pending >= self.settings.flush_events
                    or self.buffered_bytes >= self.settings.flush_bytes
                )
                if full and self._in_flight is not None:
                    # A moment for the last flush (fetching goes on meanwhile)...
                    futures_wait([self._in_flight], timeout=0.5)
                if full or (due and pending):
                    if self._in_flight is not None and not self._in_flight.done():
                        # The last flush is still landing (HDFS slow or away): go on
                        # polling, so that heartbeats and rebalances never wait for HDFS,
                        # and stop fetching while the buffers are full.
                        if full:
                            self._hold_back(True)
                    else:
                        self._settle()  # one flush at a time: partitions land in order
                        self._hold_back(False)
                        self._flush_in_background()
                        last_flush = time.monotonic()
                elif due:
                    last_flush = time.monotonic()
        finally:
            try:
                # A background flush that failed leaves an earlier range unwritten: nothing
                # later may land then (a restart resumes from the lake, after the last range).
                self._settle()
                self.flush()
                self._commit_landed()
            finally:
                for pool in (self._flusher, self._lander):
                    if pool is not None:
                        pool.shutdown(wait=False, cancel_futures=True)
                self._flusher = self._lander = None
                try:
                    self.consumer.close(autocommit=False)
                finally:
                    self.dead_letters.close()

    def stop(self) -> None:
        self.stop_requested.set()

    def _hold_back(self, on: bool) -> None:
        """Pause (or resume) fetching the partitions we consume."""
        if on == self._held_back:
            return
        self._held_back = on
        partitions = [tp for tp in self.consumer.assignment() if tp not in self._unpositioned]
        if on:
            log.warning("the buffers are full and the last flush is still landing: fetching waits")
            self.consumer.pause(*partitions)
        else:
            self.consumer.resume(*partitions)

    def position_from_lake(self, partitions: Iterable[TopicPartition]) -> None:
        """Consume `partitions` again only from where the lake ends (in a rebalance
        callback: records of them that the poll still returns are dropped, and the
        paused partitions fetch nothing until the loop has read their position)."""
        partitions = list(partitions)
        for tp in partitions:
            self._unpositioned[tp] = (0.0, 1.0)
            self.buffers.pop(tp, None)
        self.consumer.pause(*partitions)

    def _flush_in_background(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Hand the buffers (of `partitions`, default all) to the flush thread and go on
        consuming into new ones."""
        if self._broken:
            raise LakeSinkBroken(
                "an earlier lake flush failed; stopping so that a restart resumes from the lake"
            )
        if partitions is None:
            taken, self.buffers, self.buffered_bytes = self.buffers, {}, 0
        else:
            taken = {tp: self.buffers.pop(tp) for tp in partitions if tp in self.buffers}
            self.buffered_bytes = sum(b.size() for b in self.buffers.values())
        for tp in self._unpositioned.copy():
            taken.pop(tp, None)
        if self._flusher is None:
            self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-flush")
        self._skip = set()
        self._in_flight = self._flusher.submit(self._land_until_done, taken, self._skip)

    def abandon(self, lost: Iterable[TopicPartition], wait_s: float | None = None) -> None:
        """The flush in flight must not write these (another member may own them, or we
        are about to read their position from the lake), and their buffers go (they are
        read again from that position). Waits (at most `wait_s`, default the rebalance
        bound) for a manifest of these being written: after that, nothing of them lands
        here. Should HDFS hold one longer it may still land, and the manifest fence then
        refuses whichever of it and the next landing of the same offsets comes second."""
        lost = list(lost)
        for tp in lost:
            self._skip.add(tp)
            self.buffers.pop(tp, None)
        self.buffered_bytes = sum(b.size() for b in self.buffers.values())
        deadline = time.monotonic() + (REBALANCE_WAIT_S if wait_s is None else wait_s)
        for tp in lost:
            lock = self._commit_lock(tp)
            if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                lock.release()
            else:
                log.warning(
                    "%s[%d]: a manifest is still being written at a rebalance; the lake's "
                    "fence decides whether it or the next landing of its offsets stands",
                    tp.topic,
                    tp.partition,
                )

    def hand_over(self, revoked: Iterable[TopicPartition]) -> None:
        """Land what we hold of `revoked` for its next owner, within what a rebalance
        callback may take (it holds up the consumer's heartbeats): if HDFS keeps the flush
        in flight longer, nothing more of these lands here, and the next owner reads it
        again from Kafka, from where the lake ends."""
        revoked = list(revoked)
        deadline = time.monotonic() + REBALANCE_WAIT_S
        try:
            settled = self.settle_quietly(REBALANCE_WAIT_S)
            if settled and not self._broken and any(tp in self.buffers for tp in revoked):
                # Landed like any flush, in the background, so that the wait has a bound.
                self._flush_in_background(revoked)
                settled = self.settle_quietly(max(0.0, deadline - time.monotonic()))
            if not settled:
                log.warning(
                    "a lake flush is still running after %.0fs at a rebalance: %s left to "
                    "their next owner, who reads them again from Kafka",
                    REBALANCE_WAIT_S,
                    ", ".join(f"{tp.topic}[{tp.partition}]" for tp in revoked),
                )
        except Exception as exc:  # noqa: BLE001 - what did not land is read again
            log.warning("could not land the revoked partitions' events: %s", exc)
        finally:
            self.abandon(revoked, max(0.0, deadline - time.monotonic()))

    def settle_quietly(self, wait_s: float | None = None) -> bool:
        """Wait (at most `wait_s`) for the background flush; False if it is still running.
        A failure is only logged (a rebalance callback: what did not land is read again
        from Kafka by whoever owns the partition next)."""
        in_flight = self._in_flight
        if in_flight is not None and wait_s is not None:
            done, _ = futures_wait([in_flight], timeout=wait_s)
            if not done:
                return False
        try:
            self._settle()
        except Exception as exc:  # noqa: BLE001 - logged; the lake's manifests decide
            log.warning("the background lake flush failed: %s", exc)
        return True

    def _settle(self, wait: bool = True) -> None:
        """Commit the offsets of the background flush once it is done (waiting for it unless
        told not to); raises what made it fail."""
        in_flight = self._in_flight
        if in_flight is None or not (wait or in_flight.done()):
            return
        self._in_flight = None
        try:
            commits = in_flight.result()
        except BaseException:
            # Its range is not in the lake: landing a later one would leave a gap that a
            # restart (resuming after the newest manifest) skips.
            self._broken = True
            raise
        self._note_landed(commits)

    def _land_until_done(
        self, buffers: dict[TopicPartition, PartitionBuffer], skip: set[TopicPartition]
    ) -> Commits:
        """HDFS may be away for a while (a DataNode restart): keep the buffers, retry.

        A retried flush rewrites the same temporary files and names, so nothing doubles.
        """
        commits: Commits = {}
        delay = 1.0
        while True:
            if all(tp in skip for tp in buffers):
                return commits  # given up while HDFS was away (a rebalance): nothing to do
            try:
                self._land(buffers, list(buffers), commits, skip)
                return commits
            except Exception as exc:  # HDFS away, or answering garbage while it restarts: retry
                if self.stop_requested.is_set():
                    raise
                log.warning(
                    "lake flush failed (%s: %s); retrying in %.0fs",
                    exc.__class__.__name__,
                    exc,
                    delay,
                )
                self.stop_requested.wait(delay)
                delay = min(delay * 2, 30.0)

    def _read_positions(self) -> None:
        """On the consumer's thread: partitions waiting for their position read it from the
        lake (finishing a flush a crash interrupted) and resume there, dropping whatever
        was consumed of them meanwhile. While HDFS does not answer they stay paused, tried
        again with a growing delay, and the other partitions go on."""
        if not self._unpositioned:
            return
        assignment = self.consumer.assignment()
        turn_started = time.monotonic()
        for tp, (due, delay) in self._unpositioned.copy().items():
            if time.monotonic() - turn_started > 5.0 or self.consumer.rebalance_pending():
                # HDFS answering slowly, or the group waiting for our poll: the loop must
                # go on polling; the others next turn.
                break
            if tp not in assignment:
                del self._unpositioned[tp]
                self.buffers.pop(tp, None)
                continue
            self.consumer.pause(tp)
            if time.monotonic() < due:
                continue
            try:
                self._resume_from_lake(tp)
            except (HdfsError, OSError, KafkaError) as exc:
                if tp not in self.consumer.assignment():
                    # Revoked meanwhile (rebalances run on the consumer's own thread):
                    # its next owner reads its position.
                    del self._unpositioned[tp]
                    self.buffers.pop(tp, None)
                    continue
                log.warning(
                    "cannot read %s[%d]'s position (%s); it stays paused, retrying in %.0fs",
                    tp.topic,
                    tp.partition,
                    exc,
                    delay,
                )
                self._unpositioned[tp] = (time.monotonic() + delay, min(delay * 2, 30.0))
                continue
            self.buffers.pop(tp, None)
            del self._unpositioned[tp]
            if not self._held_back:
                self.consumer.resume(tp)  # else with the others, once the flush has landed
        self.buffered_bytes = sum(b.size() for b in self.buffers.values())

    def _resume_from_lake(self, tp: TopicPartition) -> None:
        """Seek `tp` to where the lake ends (finishing a flush a crash interrupted)."""
        # The consumer first settles its own position (a committed offset, or a reset by
        # the group's policy): a reset still in flight could otherwise land after, and
        # over, the seek below.
        self.consumer.position(tp, timeout_ms=10000)
        position = self.writer.recover(tp.topic, tp.partition)
        if position is not None:
            self.consumer.seek(tp, position)
            # Committed by the consumer loop: the group's offset follows the lake even
            # when the previous owner could not commit its last flush.
            self.note_resumed(tp, position)
            log.info(
                "%s[%d] resumes at offset %d (from the lake)", tp.topic, tp.partition, position
            )
            return
        # Nothing of it in the lake yet: from the group's committed offset (which only
        # ever follows the lake), else from the start, as a new group does. Never from
        # where the consumer happens to be: what it held of the partition may have been
        # dropped unlanded (a rebalance, a fence).
        committed = self.consumer.committed(tp, timeout_ms=10000)
        if committed is None:
            self.consumer.seek_to_beginning(tp)
        else:
            self.consumer.seek(tp, committed)

    def _add(self, tp: TopicPartition, offset: int, value: bytes) -> None:
        if tp in self._unpositioned:
            return  # read again from the lake's position
        try:
            envelope = Envelope.from_bytes(value)
        except EnvelopeError as exc:
            self.dead_letters.send(
                Topics.DEAD_LETTER.name,
                value=dead_letter_record(str(exc), value, f"{tp.topic}[{tp.partition}]@{offset}"),
            )
            return
        buffer = self.buffers.get(tp)
        if buffer is None:  # not setdefault: a new buffer draws a random token
            buffer = self.buffers[tp] = PartitionBuffer()
        moment = envelope.event_time()
        buffer.add(offset, hour_of(moment), value, moment, envelope.kind is EventKind.DELETE)

    def flush(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Land the buffers of `partitions` (default: all) now, after the background flush."""
        self._settle()
        if self._broken:
            log.warning(
                "not landing more: an earlier flush failed; a restart resumes from the lake"
            )
            return
        chosen = list(partitions) if partitions is not None else list(self.buffers)
        chosen = [tp for tp in chosen if tp not in self._unpositioned]
        commits: Commits = {}
        try:
            self._land(self.buffers, chosen, commits, set())
        finally:
            self.buffered_bytes = sum(b.size() for b in self.buffers.values())
            self._note_landed(commits)

    def _land(
        self,
        buffers: dict[TopicPartition, PartitionBuffer],
        chosen: Iterable[TopicPartition],
        commits: Commits,
        skip: set[TopicPartition],
    ) -> None:
        """Write the `chosen` buffers, taking each out of `buffers` once it is durable (a
        failed write is retried whole) and noting the offset its partition resumes at."""
        ready: list[tuple[TopicPartition, PartitionBuffer, int]] = []
        for tp in chosen:
            buffer = buffers.get(tp)
            if buffer is None or buffer.last is None or tp in skip or tp in self._unpositioned:
                buffers.pop(tp, None)
            else:
                ready.append((tp, buffer, buffer.last))
        if not ready:
            return
        # Partitions land in parallel, each compressed and written by one thread (ISA-L and
        # HTTP let go of the GIL): a write costs the DataNode ~20 ms however small it is,
        # and a flush writes three files per partition. One flush at a time still runs,
        # so each partition's ranges land in offset order.
        if self._lander is None:
            self._lander = ThreadPoolExecutor(
                max_workers=LANDING_THREADS, thread_name_prefix="lake-land"
            )
        landing = [
            (tp, buffer, last, self._lander.submit(self._land_one, tp, buffer, skip))
            for tp, buffer, last in ready
        ]
        failure: Exception | None = None
        for tp, buffer, last, future in landing:
            try:
                landing_of_tp = future.result()
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others count
                failure = failure or exc
                continue
            if landing_of_tp is Landing.FENCED:
                log.warning(
                    "%s[%d]: another member landed offsets %d.. first (it or we were "
                    "paused past a rebalance); reading our position from the lake again",
                    tp.topic,
                    tp.partition,
                    buffer.first,
                )
                self._unpositioned[tp] = (0.0, 1.0)
            if landing_of_tp is not Landing.LANDED:
                buffers.pop(tp, None)  # lost, handed over or fenced while this flush ran
                continue
            del buffers[tp]
            self.written += len(buffer)
            commits[tp] = last + 1
        if failure is not None:
            raise failure

    def _land_one(
        self, tp: TopicPartition, buffer: PartitionBuffer, skip: set[TopicPartition]
    ) -> Landing:
        still_ours = functools.partial(_not_in, tp, skip)
        if not still_ours():
            return Landing.GIVEN_UP
        return self.writer.write(
            tp.topic,
            tp.partition,
            buffer,
            proceed=still_ours,
            commit_lock=self._commit_lock(tp),
        )

    def _commit_lock(self, tp: TopicPartition) -> threading.Lock:
        """Held while a flush writes `tp`'s manifest (one per partition: they land at once)."""
        with self._commit_locks_guard:
            return self._commit_locks.setdefault(tp, threading.Lock())

    def _note_landed(self, commits: Commits) -> None:
        """Remember where landed partitions resume, for `_commit_landed` (any thread)."""
        if not commits:
            return
        log.info(
            "landed events up to offsets %s (%d events so far)",
            {f"{tp.topic}[{tp.partition}]": o for tp, o in commits.items()},
            self.written,
        )
        with self._landed_lock:
            self._landed.update(commits)

    def note_resumed(self, tp: TopicPartition, position: int) -> None:
        with self._landed_lock:
            self._landed[tp] = position

    def _commit_landed(self) -> None:
        """Commit what landed to Kafka, from the consumer's own thread (it is not
        thread-safe). Advisory only: the lake's manifests are where a restart resumes."""
        if self.consumer.rebalance_pending():
            return  # poll first (a commit would fail in the rebalance anyway); next turn
        with self._landed_lock:
            landed, self._landed = self._landed, {}
        owned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in landed.items() if tp in owned}
        if not offsets:
            return
        from kafka.structs import OffsetAndMetadata

        try:
            self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except KafkaError as exc:
            log.warning("could not commit offsets to Kafka: %s", exc)


def build_sink(
    settings: HdfsSinkSettings, kafka: KafkaSettings, hdfs: HdfsSettings
) -> HdfsLakeSink:
    consumer = GroupConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=settings.group_id,
        client_id=f"{kafka.client_id}-hdfs-sink",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=settings.fetch_bytes_per_partition,
        # As kafka-python's: a rebalance callback may wait REBALANCE_WAIT_S for a flush,
        # and a JoinGroup may wait out the rebalance timeout (a member killed), so its
        # request outlasts it (aiokafka's 40 s request timeout alone did not).
        session_timeout_ms=45_000,
        heartbeat_interval_ms=3_000,
        rebalance_timeout_ms=45_000,
        request_timeout_ms=50_000,
    )
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    client = webhdfs_client(hdfs)
    return HdfsLakeSink(settings, consumer, LakeWriter(client, hdfs.lake_root), producer)
