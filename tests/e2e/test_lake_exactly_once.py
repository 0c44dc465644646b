"""The lake under crashes: kill -9 of the sink, a DataNode restart, late events and deletes; after
compaction every event is in exactly one file of its event-time hour and deleted statuses are gone."""

from __future__ import annotations

import gzip
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hdfs import InsecureClient
from kafka import KafkaProducer

from fedilake.contracts import (
    SUCCESS_MARKER,
    Envelope,
    EventKind,
    PartFile,
    Topics,
    raw_hour_dir,
)
from fedilake.pipeline import spawn_cli
from fedilake.settings import HdfsSettings, HdfsSinkSettings, KafkaSettings
from fedilake.stack.control import LocalStack
from sinks.compactor import build_compactor
from sinks.lake import LakeWriter

pytestmark = pytest.mark.e2e

EVENTS = 6000
HOURS = 6
KILL_EVERY = 1500
DELETED = 40


def status(day: date, n: int) -> Envelope:
    created = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
        seconds=n * HOURS * 3600 // EVENTS
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


def start_sink(log: Path) -> subprocess.Popen[bytes]:
    env = {
        "FEDILAKE_SINK_FLUSH_EVENTS": "400",
        "FEDILAKE_SINK_FLUSH_INTERVAL_S": "1",
        "FEDILAKE_SINK_COMPACT_INTERVAL_S": "0",
    }
    return spawn_cli(["sink", "hdfs"], log, env)


def day_uris(client: InsecureClient, day: date) -> tuple[Counter[str], dict[str, list[str]]]:
    """uri -> copies in the lake, and hour dir -> its visible part files."""
    seen: Counter[str] = Counter()
    files: dict[str, list[str]] = {}
    for hour in range(HOURS):
        directory = raw_hour_dir(
            Topics.EVENTS.name, datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
        )
        if client.status(directory, strict=False) is None:
            continue
        names = [n for n in client.list(directory) if PartFile.parse(n)]
        files[directory] = names
        for name in names:
            with client.read(f"{directory}/{name}") as reader:
                for line in gzip.decompress(reader.read()).splitlines():
                    env = Envelope.from_bytes(line)
                    assert env.created_at is not None
                    assert f"dt={env.created_at:%Y-%m-%d}/hr={env.created_at:%H}" in directory
                    seen[env.uri or ""] += 1
    return seen, files


def test_every_event_once_in_its_hour_after_kills_and_a_datanode_restart(
    stack: LocalStack, tmp_path: Path
) -> None:
    day = date(2024, 1, 1) + timedelta(days=int(time.time() / 60) % 300)
    client = InsecureClient(HdfsSettings().webhdfs_url, user=HdfsSettings().user)
    statuses = [status(day, n) for n in range(EVENTS)]
    # Late arrivals: the first hour's first 300 statuses are sent last.
    order = statuses[300:] + statuses[:300]
    deleted = statuses[1000 : 1000 + DELETED]
    producer = KafkaProducer(bootstrap_servers=KafkaSettings().bootstrap_servers, acks="all")
    log = tmp_path / "sink.log"
    sink = start_sink(log)
    kills = 0
    try:
        for n, env in enumerate(order, 1):
            producer.send(Topics.EVENTS.name, key=env.kafka_key(), value=env.to_bytes())
            if n % KILL_EVERY == 0:
                producer.flush()
                time.sleep(2.5)  # let it land part of the batch, then pull the plug
                sink.send_signal(signal.SIGKILL)
                sink.wait()
                kills += 1
                if n == 3 * KILL_EVERY:
                    stack.kill("datanode")
                    sink = start_sink(log)  # it must ride out HDFS being away
                    time.sleep(3)
                    stack.up(["datanode"])
                else:
                    sink = start_sink(log)
        for env in deleted:
            gone = delete(env)
            producer.send(Topics.EVENTS.name, key=gone.kafka_key(), value=gone.to_bytes())
        producer.flush()

        lake = LakeWriter(client, HdfsSettings().lake_root)
        deadline = time.monotonic() + 300
        while lake.count_events(Topics.EVENTS.name, day) < EVENTS and time.monotonic() < deadline:
            time.sleep(2)
        time.sleep(3)  # the deletes land in today's hour, after the statuses
    finally:
        sink.terminate()
        sink.wait(30)
        producer.close()
    assert kills == EVENTS // KILL_EVERY

    before, files_before = day_uris(client, day)
    assert sum(before.values()) == EVENTS and set(before.values()) == {1}, "lost or doubled"

    compactor = build_compactor(
        HdfsSinkSettings(compact_target_bytes=64 * 1024 * 1024), HdfsSettings()
    )
    far_future = datetime.now(UTC) + timedelta(days=400)  # every hour of that day is closed
    compactor.run(Topics.EVENTS.name, now=far_future)
    assert compactor.run(Topics.EVENTS.name, now=far_future) == []  # idempotent

    after, files_after = day_uris(client, day)
    expected = {e.uri for e in statuses} - {e.uri for e in deleted}
    assert set(after) == expected
    assert set(after.values()) == {1}
    for directory, names in files_after.items():
        assert client.status(f"{directory}/{SUCCESS_MARKER}", strict=False) is not None
        partitions = Counter(PartFile.parse(n).partition for n in names)  # type: ignore[union-attr]
        assert set(partitions.values()) == {1}, f"{directory} has {names}"
    assert sum(len(v) for v in files_before.values()) > sum(len(v) for v in files_after.values())
