"""Closing the lake's hours: merge each closed hour's files, drop deleted statuses, mark it `_SUCCESS`.

Crash safety: merged outputs are written under hidden temporary names, then a
`_compaction.json` manifest names (temp, output, sources) for every step, then each step
deletes its sources and renames its temp into place, then `_SUCCESS` is written and the
manifest removed. A compaction interrupted anywhere is rolled forward from its manifest
on the next run; running it again on a compacted hour changes nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hdfs import HdfsError, InsecureClient

from fedilake.contracts import (
    COMPACTION_MANIFEST,
    STATUS_INDEX,
    SUCCESS_MARKER,
    PartFile,
    parse_time,
    raw_hour_dir,
    tombstone_dir,
)
from fedilake.settings import HdfsSettings, HdfsSinkSettings

from .compaction import (
    STATE_MARKER_PREFIX,
    STATUS_INDEX_VERSION,
    DeletedStatuses,
    LakeFile,
    Tombstone,
    TombstoneFrontier,
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
from .lake import LakeWriter, encode_part, webhdfs_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HourSummary:
    """One event-time partition of the lake, as `fedilake lake ls` shows it."""

    topic: str
    hour: datetime
    files: int
    bytes: int
    events: int | None
    closed: bool


@dataclass(frozen=True)
class DayClosure:
    day: date
    closed: bool
    watermark: datetime
    open_hours: tuple[datetime, ...]


@dataclass(frozen=True)
class CompactionResult:
    hour: datetime
    files_before: int
    files_after: int
    events: int
    dropped: int


FRONTIER_PERSIST_S = 600.0


def _stamp(status: dict[str, Any]) -> tuple[int, int]:
    """A file's (modification time, length), from a listing or a status call."""
    return int(status.get("modificationTime", 0)), int(status.get("length", 0))


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class HourlyCompactor:
    def __init__(
        self,
        client: InsecureClient,
        root: str,
        target_bytes: int = 128 * 1024 * 1024,
        grace: timedelta = timedelta(minutes=10),
        idle: timedelta = timedelta(minutes=5),
    ) -> None:
        self.client = client
        self.root = root
        self.target_bytes = target_bytes
        self.grace = grace
        self.idle = idle
        self.writer = LakeWriter(client, root)
        self._tombstones_read: dict[str, list[Tombstone]] = {}  # tombstone files, this run
        # Per hour directory: the (time, size) of the `_SUCCESS` read, and what it says.
        self._success_read: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
        self._last_frontier: dict[str, TombstoneFrontier] = {}  # per topic, of the last run
        # Per hour directory: its `_SUCCESS` stamp, the frontier checked in memory since,
        # and since when (monotonic) that was not written.
        self._checked: dict[str, tuple[tuple[int, int], TombstoneFrontier, float]] = {}
        self._keys_of: dict[tuple[str, ...], set[bytes]] = {}  # tombstone files -> keys, a run

    # ------------------------------------------------------------------ reading the lake

    def hours(self, topic: str) -> list[datetime]:
        base = f"{self.root}/raw/{topic}"
        found = []
        try:
            days = self.client.list(base)
        except HdfsError:
            return []
        for day in days:
            if not day.startswith("dt="):
                continue
            for hour in self.client.list(f"{base}/{day}"):
                if hour.startswith("hr="):
                    found.append(
                        datetime.strptime(f"{day[3:]} {hour[3:]}", "%Y-%m-%d %H").replace(
                            tzinfo=UTC
                        )
                    )
        return sorted(found)

    def part_files(self, directory: str) -> tuple[list[LakeFile], dict[str, dict[str, int]]]:
        listing = dict(self.client.list(directory, status=True))
        files = []
        for name, status in listing.items():
            part = PartFile.parse(name)
            if part is not None:
                files.append(LakeFile(name, part, int(status["length"])))
        return files, listing

    def watermark(self, topic: str, now: datetime) -> datetime:
        marks: dict[int, tuple[datetime | None, datetime]] = {}
        for partition in self.writer.partitions(topic):
            latest = self.writer.latest_manifest(topic, partition)
            if latest is None:
                continue
            manifest, written_ms = latest
            newest = manifest.get("newest_event")
            marks[partition] = (
                parse_time(newest) if newest else None,
                datetime.fromtimestamp(written_ms / 1000, UTC),
            )
        return lake_watermark(marks, now, self.idle)

    def tombstone_files(self, topic: str) -> list[str]:
        directory = tombstone_dir(topic, self.root)
        if self.client.status(directory, strict=False) is None:
            return []
        names = self.client.list(directory)
        self.writer.sweep_temps(directory, names)
        return sorted(n for n in names if PartFile.parse(n) is not None)

    def deleted_statuses(self, topic: str, names: Iterable[str]) -> DeletedStatuses:
        """The statuses the tombstone files `names` delete (read once per file and run)."""
        deleted = DeletedStatuses()
        for name in names:
            tombstones = self._tombstones_read.get(name)
            if tombstones is None:
                tombstones = [
                    t
                    for line in self.writer.read_lines(f"{tombstone_dir(topic, self.root)}/{name}")
                    if (t := tombstone_of(line)) is not None
                ]
                self._tombstones_read[name] = tombstones
            for tombstone in tombstones:
                deleted.add(tombstone)
        return deleted

    # ------------------------------------------------------------------ compaction

    def run(self, topic: str, now: datetime | None = None) -> list[CompactionResult]:
        """Compact every closed hour of `topic` that is not compacted yet, got a late file,
        or holds a status a new delete names.

        A new tombstone file is checked against each compacted hour's `_statuses` index
        (hashes of its statuses' uris and local ids), so only the hours it concerns are
        read and rewritten; the others only record that they have seen it.
        """
        now = now or datetime.now(UTC)
        watermark = self.watermark(topic, now)
        names = self.tombstone_files(topic)
        frontier = tombstone_frontier(names)
        self._last_frontier[topic] = frontier
        self._tombstones_read, self._keys_of = {}, {}
        results = []
        closed = closed_hours(self.hours(topic), watermark, self.grace)
        try:
            for hour in closed:
                result = self._close_hour(topic, hour, names, frontier)
                if result is not None:
                    results.append(result)
        finally:
            self._tombstones_read, self._keys_of = {}, {}
        # Forget hours retention removed (what is kept per hour is small, but adds up).
        live = {raw_hour_dir(topic, hour, self.root) for hour in closed}
        prefix = f"{self.root}/raw/{topic}/"
        for cache in (self._checked, self._success_read):
            for directory in [d for d in cache if d.startswith(prefix) and d not in live]:
                del cache[directory]
        return results

    def _close_hour(
        self, topic: str, hour: datetime, names: list[str], frontier: TombstoneFrontier
    ) -> CompactionResult | None:
        directory = raw_hour_dir(topic, hour, self.root)
        files, listing = self.part_files(directory)
        self.writer.sweep_temps(directory, listing)
        seen = self._applied(directory, listing)
        if seen is None:  # never compacted, a late file, or a compaction cut short
            return self.compact_hour(topic, hour, self.deleted_statuses(topic, names), frontier)
        applied, success = seen
        new = tombstones_beyond(names, applied)
        if not new:
            return None
        deleted = self.deleted_statuses(topic, new)
        keys = self._keys_of.get(tuple(new))
        if keys is None:  # most hours have seen the same tombstones: once per run
            keys = self._keys_of[tuple(new)] = deleted.index_keys()
        index = self._status_index(directory, listing)
        if index is None or not keys.isdisjoint(index):
            # Only the new deletes: the hour is compacted with every earlier one. Should a
            # late file land meanwhile, it is left for a whole compaction (`only`).
            return self.compact_hour(topic, hour, deleted, frontier, only={f.name for f in files})
        self._note_checked(directory, listing, success, frontier)
        return None

    def _note_checked(
        self,
        directory: str,
        listing: dict[str, dict[str, int]],
        success: dict[str, Any],
        frontier: TombstoneFrontier,
    ) -> None:
        """Remember that the hour holds no status of the tombstones up to `frontier`; write
        it to its `_SUCCESS` at most every `FRONTIER_PERSIST_S` (deletes land with nearly
        every flush: writing every hour's `_SUCCESS` every run would be most of the work).
        A restart re-checks what was not written, against the index."""
        stamp = _stamp(listing[SUCCESS_MARKER])
        entry = self._checked.get(directory)
        since = entry[2] if entry is not None and entry[0] == stamp else time.monotonic()
        if time.monotonic() - since < FRONTIER_PERSIST_S:
            self._checked[directory] = (stamp, frontier, since)
            return
        self._checked.pop(directory, None)
        # Not if `_SUCCESS` changed since it was read (another compactor, e.g. the nightly
        # `lake close`, compacted the hour meanwhile): the next run checks again.
        path = f"{directory}/{SUCCESS_MARKER}"
        now = self.client.status(path, strict=False)
        if now is None or _stamp(now) != stamp:
            return
        self.writer.write_atomically(
            path, json.dumps({**success, "tombstones": frontier_doc(frontier)}).encode()
        )
        self._success_read.pop(directory, None)

    def _applied(
        self, directory: str, listing: dict[str, dict[str, int]]
    ) -> tuple[TombstoneFrontier, dict[str, Any]] | None:
        """The tombstone frontier a compacted hour has seen, and its `_SUCCESS`; None if it
        must be compacted (whatever the tombstones): not yet, or files changed since."""
        if SUCCESS_MARKER not in listing or COMPACTION_MANIFEST in listing:
            return None
        parts = [name for name in listing if PartFile.parse(name) is not None]
        if compaction_state(parts) not in listing:
            return None
        stamp = _stamp(listing[SUCCESS_MARKER])
        cached = self._success_read.get(directory)
        if cached is not None and cached[0] == stamp:
            success = cached[1]  # every run lists each closed hour; `_SUCCESS` rarely changes
        else:
            success = self._read_json(f"{directory}/{SUCCESS_MARKER}")
            self._success_read[directory] = (stamp, success)
        applied = frontier_of(success)
        if applied is None or success.get("index") != STATUS_INDEX_VERSION:
            return None
        checked = self._checked.get(directory)
        if checked is not None and checked[0] == stamp:  # checked since, not yet written
            for partition, last in checked[1].items():
                applied[partition] = max(applied.get(partition, -1), last)
        return applied, success

    def _read_json(self, path: str) -> dict[str, Any]:
        with self.client.read(path) as reader:
            try:
                found = json.loads(reader.read() or b"{}")
            except ValueError:
                return {}
        return found if isinstance(found, dict) else {}

    def _is_current(
        self, directory: str, listing: dict[str, dict[str, int]], frontier: TombstoneFrontier
    ) -> bool:
        """Compacted, and neither a late file nor an unchecked tombstone arrived since."""
        seen = self._applied(directory, listing)
        return seen is not None and covers(seen[0], frontier)

    def _status_index(
        self, directory: str, listing: dict[str, dict[str, int]]
    ) -> set[bytes] | None:
        if STATUS_INDEX not in listing:
            return None
        with self.client.read(f"{directory}/{STATUS_INDEX}") as reader:
            return decode_status_index(reader.read())  # None when torn: compact again

    def compact_hour(
        self,
        topic: str,
        hour: datetime,
        deleted: DeletedStatuses,
        frontier: TombstoneFrontier,
        only: set[str] | None = None,
    ) -> CompactionResult | None:
        """Merge the hour's files, leaving out what `deleted` names: the deletes up to
        `frontier`, or (with `only`, the part files the hour was compacted into) those
        beyond what it had seen; then the hour is left alone if its files are not `only`."""
        directory = raw_hour_dir(topic, hour, self.root)
        manifest_path = f"{directory}/{COMPACTION_MANIFEST}"
        if self.client.status(manifest_path, strict=False) is not None:
            self._roll_forward(directory, manifest_path, frontier)
        files, _listing = self.part_files(directory)
        if not files or (only is not None and {f.name for f in files} != only):
            return None
        steps = []
        events = dropped = 0
        keys: list[bytes] = []
        result: list[str] = []  # the part files the hour will have: what was read, merged
        for step in plan_merges(files, self.target_bytes):
            lines: list[bytes] = []
            for source in step.sources:  # offset order: plan_merges sorts them
                lines.extend(self.writer.read_lines(f"{directory}/{source}"))
            kept = []
            for line in lines:
                status = stored_status(line)
                if status is not None:
                    if deleted.removes_status(*status):
                        continue
                    keys.extend(status_keys(*status))
                kept.append(line)
            events += len(kept)
            dropped += len(lines) - len(kept)
            result.append(step.output)  # a lone file's own name, whether rewritten or not
            if len(step.sources) == 1 and len(kept) == len(lines):
                continue  # already one file, nothing deleted: leave it as it is
            temp = f"{directory}/.{step.output}.compacting"
            self.client.write(temp, data=encode_part(kept), overwrite=True)
            steps.append({"temp": temp, "output": step.output, "sources": list(step.sources)})
        self.writer.write_atomically(manifest_path, json.dumps({"steps": steps}).encode())
        self._roll_forward(
            directory, manifest_path, frontier, events, encode_status_index(keys), result
        )
        files_after, _ = self.part_files(directory)
        log.info(
            "compacted %s %s: %d -> %d files, %d events, %d deleted",
            topic,
            f"{hour:%Y-%m-%dT%H}",
            len(files),
            len(files_after),
            events,
            dropped,
        )
        return CompactionResult(hour, len(files), len(files_after), events, dropped)

    def _roll_forward(
        self,
        directory: str,
        manifest_path: str,
        frontier: TombstoneFrontier,
        events: int | None = None,
        index: bytes | None = None,
        result: list[str] | None = None,
    ) -> None:
        """Finish the steps of a manifest, then seal the hour. The marker names `result`,
        the files this compaction read or wrote: one landed meanwhile leaves it stale, so
        the next run compacts the hour again (it was read by no one)."""
        with self.client.read(manifest_path) as reader:
            manifest = json.loads(reader.read())
        for step in manifest["steps"]:
            if self.client.status(step["temp"], strict=False) is None:
                continue  # this step finished before the crash
            for source in step["sources"]:
                self.client.delete(f"{directory}/{source}")
            self.client.rename(step["temp"], f"{directory}/{step['output']}")
        files, listing = self.part_files(directory)
        if result is not None:
            files = [f for f in files if f.name in set(result)]
        if events is None or index is None:
            # Rolled forward after a crash: count what is there now. Which deletes the cut
            # short run applied, and which statuses are left, is not known: no frontier and
            # no index, so the hour is compacted whole (`compact_hour` goes on to do it).
            events = sum(len(self.writer.read_lines(f"{directory}/{f.name}")) for f in files)
            success: dict[str, Any] = {"events": events}
            if STATUS_INDEX in listing:
                self.client.delete(f"{directory}/{STATUS_INDEX}")
        else:
            # The index first: a `_SUCCESS` with a frontier vouches for it.
            self.writer.write_atomically(f"{directory}/{STATUS_INDEX}", index)
            success = {
                "events": events,
                "tombstones": frontier_doc(frontier),
                "index": STATUS_INDEX_VERSION,
            }
        success.update(files=len(files), bytes=sum(f.size for f in files))
        self.client.write(
            f"{directory}/{SUCCESS_MARKER}", data=json.dumps(success).encode(), overwrite=True
        )
        for name in listing:
            if name.startswith(STATE_MARKER_PREFIX):
                self.client.delete(f"{directory}/{name}")
        state = compaction_state(result if result is not None else [f.name for f in files])
        self.client.write(f"{directory}/{state}", data=b"", overwrite=True)
        self.client.delete(manifest_path)

    def close_day(self, topic: str, day: date, now: datetime | None = None) -> DayClosure:
        """Compact what is closed, then say whether all of `day` is closed and compacted:
        what the nightly batch must wait for before it reads the day."""
        now = now or datetime.now(UTC)
        self.run(topic, now)
        watermark = self.watermark(topic, now)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        # The tombstones `run` saw: deletes landed since are the next run's (and the next
        # night's batch), not a reason to keep the day open.
        frontier = self._last_frontier.get(topic, {})
        open_hours = []
        for hour in self.hours(topic):
            if start <= hour < start + timedelta(days=1):
                directory = raw_hour_dir(topic, hour, self.root)
                _files, listing = self.part_files(directory)
                if not self._is_current(directory, listing, frontier):
                    open_hours.append(hour)
        day_over = start + timedelta(days=1) + self.grace <= watermark
        return DayClosure(day, day_over and not open_hours, watermark, tuple(open_hours))

    # ------------------------------------------------------------------ ls, retention

    def summaries(self, topic: str, now: datetime | None = None) -> list[HourSummary]:
        now = now or datetime.now(UTC)
        closed = set(closed_hours(self.hours(topic), self.watermark(topic, now), self.grace))
        result = []
        for hour in self.hours(topic):
            directory = raw_hour_dir(topic, hour, self.root)
            files, listing = self.part_files(directory)
            events: int | None = None
            # Compacted with the files it has (deletes landed since are the sink's next
            # minutes of work, not an open hour).
            seen = self._applied(directory, listing)
            current = seen is not None
            if seen is not None:
                events = seen[1].get("events")
            if not isinstance(events, int):
                events = sum(len(self.writer.read_lines(f"{directory}/{f.name}")) for f in files)
            result.append(
                HourSummary(
                    topic,
                    hour,
                    len(files),
                    sum(f.size for f in files),
                    events,
                    hour in closed and current,
                )
            )
        return result

    def expired_days(self, topic: str, days: int, now: datetime | None = None) -> list[str]:
        """The `dt=` directories entirely older than `days` days."""
        now = now or datetime.now(UTC)
        cutoff = (now - timedelta(days=days)).date()
        base = f"{self.root}/raw/{topic}"
        try:
            names = self.client.list(base)
        except HdfsError:
            return []
        return [
            f"{base}/{name}"
            for name in sorted(names)
            if name.startswith("dt=") and date.fromisoformat(name[3:]) < cutoff
        ]

    def expired_tombstones(self, topic: str, days: int, now: datetime | None = None) -> list[str]:
        """The tombstone files no longer needed once `expired_days(topic, days)` are gone.

        A delete comes after its status, so a tombstone file last written before the first
        kept day (one day's margin, for clocks) can only name statuses of removed days.
        """
        now = now or datetime.now(UTC)
        first_kept = (now - timedelta(days=days)).date()
        before = datetime(first_kept.year, first_kept.month, first_kept.day, tzinfo=UTC)
        before_ms = (before - timedelta(days=1)).timestamp() * 1000
        directory = tombstone_dir(topic, self.root)
        if self.client.status(directory, strict=False) is None:
            return []
        return [
            f"{directory}/{name}"
            for name, status in sorted(self.client.list(directory, status=True))
            if PartFile.parse(name) is not None and status["modificationTime"] < before_ms
        ]


def build_compactor(settings: HdfsSinkSettings, hdfs: HdfsSettings) -> HourlyCompactor:
    return HourlyCompactor(
        webhdfs_client(hdfs),
        hdfs.lake_root,
        target_bytes=settings.compact_target_bytes,
        grace=timedelta(seconds=settings.close_grace_s),
        idle=timedelta(seconds=settings.idle_after_s),
    )


def compact_periodically(
    compactor: HourlyCompactor, topics: list[str], interval_s: float, stop: threading.Event
) -> None:
    """The sink's companion loop: close hours as the watermark passes them."""
    while not stop.wait(interval_s):
        for topic in topics:
            try:
                compactor.run(topic)
            except Exception:
                log.exception("compaction of %s failed; retrying next tick", topic)
