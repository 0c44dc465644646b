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
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from hdfs import HdfsError, InsecureClient

from fedilake.contracts import (
    COMPACTION_MANIFEST,
    SUCCESS_MARKER,
    PartFile,
    parse_time,
    raw_hour_dir,
    tombstone_dir,
)
from fedilake.settings import HdfsSettings, HdfsSinkSettings

from .compaction import (
    STATE_MARKER_PREFIX,
    DeletedStatuses,
    LakeFile,
    closed_hours,
    compaction_state,
    lake_watermark,
    plan_merges,
    tombstone_key,
    tombstone_of,
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
        return sorted(n for n in self.client.list(directory) if PartFile.parse(n) is not None)

    def deleted_statuses(self, topic: str) -> tuple[DeletedStatuses, str]:
        """Every tombstone of the topic, and the key naming that set of tombstone files."""
        deleted = DeletedStatuses()
        names = self.tombstone_files(topic)
        for name in names:
            for line in self.writer.read_lines(f"{tombstone_dir(topic, self.root)}/{name}"):
                tombstone = tombstone_of(line)
                if tombstone is not None:
                    deleted.add(tombstone)
        return deleted, tombstone_key(names)

    # ------------------------------------------------------------------ compaction

    def run(self, topic: str, now: datetime | None = None) -> list[CompactionResult]:
        """Compact every closed hour of `topic` that is not compacted yet (or changed since)."""
        now = now or datetime.now(UTC)
        watermark = self.watermark(topic, now)
        deleted, key = self.deleted_statuses(topic)
        results = []
        for hour in closed_hours(self.hours(topic), watermark, self.grace):
            directory = raw_hour_dir(topic, hour, self.root)
            _files, listing = self.part_files(directory)
            if self._is_current(listing, key):
                continue
            result = self.compact_hour(topic, hour, deleted, key)
            if result is not None:
                results.append(result)
        return results

    @staticmethod
    def _is_current(listing: dict[str, dict[str, int]], key: str) -> bool:
        """Compacted, and neither a late file nor a new tombstone arrived since."""
        if SUCCESS_MARKER not in listing or COMPACTION_MANIFEST in listing:
            return False
        parts = [name for name in listing if PartFile.parse(name) is not None]
        return compaction_state(parts, key) in listing

    def compact_hour(
        self, topic: str, hour: datetime, deleted: DeletedStatuses, key: str
    ) -> CompactionResult | None:
        directory = raw_hour_dir(topic, hour, self.root)
        manifest_path = f"{directory}/{COMPACTION_MANIFEST}"
        if self.client.status(manifest_path, strict=False) is not None:
            self._roll_forward(directory, manifest_path, key)
        files, _listing = self.part_files(directory)
        if not files:
            return None
        steps = []
        events = dropped = 0
        for step in plan_merges(files, self.target_bytes):
            lines: list[bytes] = []
            for source in step.sources:  # offset order: plan_merges sorts them
                lines.extend(self.writer.read_lines(f"{directory}/{source}"))
            kept = [line for line in lines if not deleted.removes(line)]
            events += len(kept)
            dropped += len(lines) - len(kept)
            if len(step.sources) == 1 and len(kept) == len(lines):
                continue  # already one file, nothing deleted: leave it as it is
            temp = f"{directory}/.{step.output}.compacting"
            self.client.write(temp, data=encode_part(kept), overwrite=True)
            steps.append({"temp": temp, "output": step.output, "sources": list(step.sources)})
        self.writer.write_atomically(manifest_path, json.dumps({"steps": steps}).encode())
        self._roll_forward(directory, manifest_path, key, events)
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
        self, directory: str, manifest_path: str, key: str, events: int | None = None
    ) -> None:
        with self.client.read(manifest_path) as reader:
            manifest = json.loads(reader.read())
        for step in manifest["steps"]:
            if self.client.status(step["temp"], strict=False) is None:
                continue  # this step finished before the crash
            for source in step["sources"]:
                self.client.delete(f"{directory}/{source}")
            self.client.rename(step["temp"], f"{directory}/{step['output']}")
        files, listing = self.part_files(directory)
        if events is None:  # rolled forward after a crash: count what is there now
            events = sum(len(self.writer.read_lines(f"{directory}/{f.name}")) for f in files)
        success = {"events": events, "files": len(files), "bytes": sum(f.size for f in files)}
        self.client.write(
            f"{directory}/{SUCCESS_MARKER}", data=json.dumps(success).encode(), overwrite=True
        )
        for name in listing:
            if name.startswith(STATE_MARKER_PREFIX):
                self.client.delete(f"{directory}/{name}")
        state = compaction_state([f.name for f in files], key)
        self.client.write(f"{directory}/{state}", data=b"", overwrite=True)
        self.client.delete(manifest_path)

    def close_day(self, topic: str, day: date, now: datetime | None = None) -> DayClosure:
        """Compact what is closed, then say whether all of `day` is closed and compacted:
        what the nightly batch must wait for before it reads the day."""
        now = now or datetime.now(UTC)
        self.run(topic, now)
        watermark = self.watermark(topic, now)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        key = tombstone_key(self.tombstone_files(topic))
        open_hours = []
        for hour in self.hours(topic):
            if start <= hour < start + timedelta(days=1):
                _files, listing = self.part_files(raw_hour_dir(topic, hour, self.root))
                if not self._is_current(listing, key):
                    open_hours.append(hour)
        day_over = start + timedelta(days=1) + self.grace <= watermark
        return DayClosure(day, day_over and not open_hours, watermark, tuple(open_hours))

    # ------------------------------------------------------------------ ls, retention

    def summaries(self, topic: str, now: datetime | None = None) -> list[HourSummary]:
        now = now or datetime.now(UTC)
        closed = set(closed_hours(self.hours(topic), self.watermark(topic, now), self.grace))
        key = tombstone_key(self.tombstone_files(topic))
        result = []
        for hour in self.hours(topic):
            directory = raw_hour_dir(topic, hour, self.root)
            files, listing = self.part_files(directory)
            events: int | None = None
            if self._is_current(listing, key):
                with self.client.read(f"{directory}/{SUCCESS_MARKER}") as reader:
                    events = json.loads(reader.read() or b"{}").get("events")
            if events is None:
                events = sum(len(self.writer.read_lines(f"{directory}/{f.name}")) for f in files)
            result.append(
                HourSummary(
                    topic,
                    hour,
                    len(files),
                    sum(f.size for f in files),
                    events,
                    hour in closed and self._is_current(listing, key),
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
