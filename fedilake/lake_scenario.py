"""The lake under crashes, judged event by event: `fedilake scenario lake` and the e2e test.

Statuses spread over a few event-time hours of one day go to `fedilake.events`, the
first hour's first statuses last (late arrivals), some deleted at the end. The sink
(`fedilake sink hdfs`) is killed with SIGKILL every so many events and restarted, and
once the DataNode is killed and restarted under it. Then every status must be in the
lake exactly once, in its event-time hour; after compaction the deleted ones are gone,
every hour has `_SUCCESS`, and each partition has one file per hour.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from hdfs import InsecureClient
from kafka import KafkaAdminClient

from fedilake.contracts import (
    SUCCESS_MARKER,
    Envelope,
    EventKind,
    PartFile,
    Topics,
    raw_day_dir,
    raw_hour_dir,
    tombstone_dir,
)
from fedilake.kafka_topics import end_offsets, ensure_topics
from fedilake.pipeline import spawn_cli
from fedilake.settings import HdfsSettings, HdfsSinkSettings, KafkaSettings, StackSettings
from fedilake.stack.control import LocalStack
from sinks.compactor import build_compactor
from sinks.lake import LakeWriter, parse_part_temp, webhdfs_client
from streamer.delivery import make_producer


@dataclass(frozen=True)
class LakeScenario:
    events: int = 200_000
    hours: int = 6
    kills: int = 10  # kill -9 of the sink, evenly spread
    datanode_restart_after_kill: int = 3  # the DataNode goes down with this kill, then comes back
    deleted: int = 400
    late: int = 300  # the first hour's first statuses, sent last

    @property
    def flush_events(self) -> int:
        """Small flushes, so that the kills land mid-stream between many part files."""
        return max(400, self.events // 50)


@dataclass
class LakeVerdict:
    events: int
    kills: int
    lost: int = 0  # statuses in no file before compaction
    doubled: int = 0  # statuses in more than one file, or twice in one
    misplaced: int = 0  # statuses outside their event-time hour
    foreign: int = 0  # statuses in the day that the run did not send
    missing_after: int = 0  # live statuses gone after compaction
    deleted_kept: int = 0  # deleted statuses still there after compaction
    hours_unsealed: list[str] = field(default_factory=list)  # without _SUCCESS
    hours_split: list[str] = field(default_factory=list)  # a partition with several files
    files_before: int = 0
    files_after: int = 0
    temps_left: int = 0  # temporary part files of cut-short flushes after compaction
    compaction_idempotent: bool = True

    @property
    def exact(self) -> bool:
        return (
            not (
                self.lost
                or self.doubled
                or self.misplaced
                or self.foreign
                or self.missing_after
                or self.deleted_kept
                or self.hours_unsealed
                or self.hours_split
                or self.temps_left
            )
            and self.compaction_idempotent
        )

    def summary(self) -> str:
        return (
            f"{self.events} events, {self.kills} kill -9 of the sink: {self.lost} lost, "
            f"{self.doubled} doubled, {self.misplaced} outside their hour, {self.foreign} not "
            f"sent by this run; after compaction "
            f"{self.missing_after} missing, {self.deleted_kept} deleted ones kept, "
            f"{len(self.hours_unsealed)} hours without {SUCCESS_MARKER}, "
            f"{len(self.hours_split)} hours with a partition in several files, "
            f"{self.temps_left} temporary files left; "
            f"files {self.files_before} -> {self.files_after}"
            + ("" if self.compaction_idempotent else "; a second compaction changed something")
        )


def scenario_day(client: InsecureClient, root: str) -> date:
    """A day of 2010-2019 that the lake has nothing of yet, drawn at random."""
    for _ in range(100):
        day = date(2010, 1, 1) + timedelta(days=uuid.uuid4().int % 3650)
        if client.status(raw_day_dir(Topics.EVENTS.name, day, root), strict=False) is None:
            return day
    raise RuntimeError("no free day of 2010-2019 left in the lake: remove old scenario days")


def wait_committed(kafka: KafkaSettings, group: str, topic: str, timeout_s: float) -> bool:
    """Wait until the sink's group has committed every partition up to its end offset (the
    sink commits after each durable flush); False if it has not within `timeout_s`."""
    ends = end_offsets(kafka, topic)
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            offsets = admin.list_group_offsets(group).get(group, {})
            done = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
            if all(done.get(partition, 0) >= end for partition, end in ends.items()):
                return True
            time.sleep(1.0)
    finally:
        admin.close()
    return False


def status(day: date, n: int, events: int, hours: int) -> Envelope:
    created = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
        seconds=n * hours * 3600 // events
    )
    return Envelope(
        kind=EventKind.STATUS,
        instance="https://lake.example",
        stream="public",
        event="update",
        received_at=datetime.now(UTC),
        created_at=created,
        uri=f"https://lake.example/s/{day:%Y%m%d}-{n}",
        status_id=f"{day:%Y%m%d}{n}",
        payload='{"tags": []}',
    )


def delete(original: Envelope) -> Envelope:
    return Envelope(
        kind=EventKind.DELETE,
        instance=original.instance,
        stream="public",
        event="delete",
        received_at=datetime.now(UTC),
        created_at=None,
        uri=None,
        status_id=original.status_id,
        payload=original.status_id or "",
    )


def stranded_temps(lake: LakeWriter, day: date, hours: int) -> int:
    """Temporary part files in the day's hours and the tombstones (after compaction, every
    one a flush can no longer land should be gone)."""
    directories = [
        raw_hour_dir(
            Topics.EVENTS.name, datetime(day.year, day.month, day.day, hour, tzinfo=UTC), lake.root
        )
        for hour in range(hours)
    ]
    directories.append(tombstone_dir(Topics.EVENTS.name, lake.root))
    return sum(
        1
        for directory in directories
        if lake.client.status(directory, strict=False) is not None
        for name in lake.client.list(directory)
        if parse_part_temp(name) is not None
    )


def read_day(
    lake: LakeWriter, day: date, hours: int
) -> tuple[Counter[str], int, dict[str, list[str]]]:
    """uri -> copies in the day's visible part files, copies outside their hour, and
    hour dir -> its part files."""
    seen: Counter[str] = Counter()
    misplaced = 0
    files: dict[str, list[str]] = {}
    for hour in range(hours):
        directory = raw_hour_dir(
            Topics.EVENTS.name, datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
        )
        if lake.client.status(directory, strict=False) is None:
            continue
        names = [n for n in lake.client.list(directory) if PartFile.parse(n)]
        files[directory] = names
        for name in names:
            for line in lake.read_lines(f"{directory}/{name}"):
                envelope = Envelope.from_bytes(line)
                moment = envelope.created_at
                if moment is None or f"dt={moment:%Y-%m-%d}/hr={moment:%H}" not in directory:
                    misplaced += 1
                seen[envelope.uri or ""] += 1
    return seen, misplaced, files


def run_lake_scenario(
    scenario: LakeScenario,
    workdir: Path,
    out: Callable[[str], None],
    stack: LocalStack | None = None,
) -> LakeVerdict:
    """Run the scenario on the local stack (Kafka and HDFS are started if needed), judge it."""
    stack = stack or LocalStack(StackSettings())
    stack.up(["kafka", "namenode", "datanode"])
    kafka, hdfs = KafkaSettings(), HdfsSettings()
    ensure_topics(kafka)
    client = webhdfs_client(hdfs)
    lake = LakeWriter(client, hdfs.lake_root)
    day = scenario_day(client, hdfs.lake_root)
    statuses = [status(day, n, scenario.events, scenario.hours) for n in range(scenario.events)]
    order = statuses[scenario.late :] + statuses[: scenario.late]
    deleted = statuses[len(statuses) // 6 :][: scenario.deleted]
    kill_every = max(1, scenario.events // (scenario.kills + 1))
    datanode = (
        f", the DataNode down and up with kill {scenario.datanode_restart_after_kill}"
        if scenario.kills >= scenario.datanode_restart_after_kill
        else ""
    )
    out(
        f"scenario: {scenario.events} statuses over {scenario.hours} hours of {day}, "
        f"{scenario.late} late, {len(deleted)} deleted; kill -9 of the sink every "
        f"{kill_every} events ({scenario.kills} in all){datanode}"
    )
    env = {
        "FEDILAKE_SINK_FLUSH_EVENTS": str(scenario.flush_events),
        "FEDILAKE_SINK_FLUSH_INTERVAL_S": "1",
        "FEDILAKE_SINK_COMPACT_INTERVAL_S": "0",
    }
    log = workdir / "sink.log"

    def start_sink() -> subprocess.Popen[bytes]:
        return spawn_cli(["sink", "hdfs"], log, env)

    producer = make_producer(kafka)
    sink = start_sink()
    kills = 0
    started = time.monotonic()
    try:
        for n, envelope in enumerate(order, 1):
            producer.send(Topics.EVENTS.name, key=envelope.kafka_key(), value=envelope.to_bytes())
            if n % kill_every == 0 and kills < scenario.kills:
                producer.flush()
                time.sleep(2.5)  # let it land part of what it has, then pull the plug
                sink.send_signal(signal.SIGKILL)
                sink.wait()
                kills += 1
                if kills == scenario.datanode_restart_after_kill:
                    stack.kill("datanode")
                    try:
                        sink = start_sink()  # it must ride out HDFS being away
                        time.sleep(3)
                    finally:
                        stack.up(["datanode"])
                else:
                    sink = start_sink()
                out(f"  {n} events sent, kill -9 number {kills} done")
        for original in deleted:
            gone = delete(original)
            producer.send(Topics.EVENTS.name, key=gone.kafka_key(), value=gone.to_bytes())
        producer.flush()
        group = HdfsSinkSettings().group_id
        timeout_s = 300 + scenario.events / 500
        landed = wait_committed(kafka, group, Topics.EVENTS.name, timeout_s)
        out(
            f"  every event and delete landed in {time.monotonic() - started:.0f}s"
            if landed
            else f"  the sink had not committed everything after {timeout_s:.0f}s; judging now"
        )
    finally:
        sink.terminate()
        try:
            sink.wait(30)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()
        producer.close()

    verdict = LakeVerdict(scenario.events, kills)
    before, verdict.misplaced, files_before = read_day(lake, day, scenario.hours)
    verdict.lost = sum(1 for s in statuses if before[s.uri or ""] == 0)
    verdict.doubled = sum(copies - 1 for copies in before.values() if copies > 1)
    sent = {s.uri for s in statuses}
    verdict.foreign = len(set(before) - sent)
    verdict.files_before = sum(len(names) for names in files_before.values())

    compactor = build_compactor(HdfsSinkSettings(compact_target_bytes=64 * 1024 * 1024), hdfs)
    far_future = datetime.now(UTC) + timedelta(days=400)  # every hour of that day is closed
    compactor.run(Topics.EVENTS.name, now=far_future)
    verdict.compaction_idempotent = compactor.run(Topics.EVENTS.name, now=far_future) == []

    after, misplaced_after, files_after = read_day(lake, day, scenario.hours)
    verdict.misplaced += misplaced_after
    verdict.foreign += len(set(after) - sent)
    deleted_uris = {s.uri for s in deleted}
    verdict.missing_after = sum(
        1 for s in statuses if s.uri not in deleted_uris and not after[s.uri or ""]
    )
    verdict.deleted_kept = sum(1 for uri in deleted_uris if after[uri or ""])
    verdict.doubled += sum(copies - 1 for copies in after.values() if copies > 1)
    verdict.files_after = sum(len(names) for names in files_after.values())
    verdict.temps_left = stranded_temps(lake, day, scenario.hours)
    for directory, names in files_after.items():
        if client.status(f"{directory}/{SUCCESS_MARKER}", strict=False) is None:
            verdict.hours_unsealed.append(directory)
        partitions = Counter(PartFile.parse(n).partition for n in names)  # type: ignore[union-attr]
        if set(partitions.values()) - {1}:
            verdict.hours_split.append(directory)
    return verdict
