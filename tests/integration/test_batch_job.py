"""The nightly recount: a real Hadoop Streaming job (local runner) over lake files in the stack's HDFS."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from hdfs import InsecureClient

from fedilake.contracts import (
    EventKind,
    Granularity,
    Metric,
    MetricRow,
    Topics,
    bucket_of,
    part_file_name,
    raw_hour_dir,
)
from fedilake.settings import BatchSettings, HBaseSettings, HdfsSettings, StackSettings
from fedilake.stack.control import LocalStack
from processors.batch import HashtagRecount
from processors.metrics import hashtags
from sinks.hbase import MetricStore, connect
from sinks.lake import PartitionBuffer, encode_part, hour_of
from streamer.envelopes import wrap_event
from streamer.generator import StatusGenerator

pytestmark = pytest.mark.integration


def test_recount_from_the_lake_writes_the_batch_values(stack: LocalStack) -> None:
    # 1997-2005: no other test writes live counters there (test_hbase_store keeps to 1985-1988).
    day = date(1997, 1, 1) + timedelta(days=random.randrange(3000))
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    generator = StatusGenerator(
        seed=day.toordinal(), start=start, spread_num=20 * 3600, spread_den=500
    )
    client = InsecureClient(HdfsSettings().webhdfs_url, user="fedilake")
    expected: Counter[tuple[str, str]] = Counter()
    for partition in range(2):
        buffer = PartitionBuffer()
        for offset in range(250):
            status = generator.next_status()
            env = wrap_event(
                "update",
                json.dumps(status).encode(),
                instance="https://sim.example",
                stream="public",
                received_at=datetime.now(UTC),
            )
            assert env.kind is EventKind.STATUS
            for tag in hashtags(status):
                expected[(bucket_of(env.event_time(), Granularity.HOUR), tag)] += 1
            buffer.add(offset, hour_of(env.event_time()), env.to_bytes())
        # Part files only, no flush manifest: these offsets are made up, and a manifest would
        # tell the real sink that partition's offsets 0..249 are already in the lake.
        name = part_file_name(Topics.EVENTS.name, partition, 0, 249)
        for hour, lines in buffer.by_hour.items():
            directory = raw_hour_dir(Topics.EVENTS.name, hour, HdfsSettings().lake_root)
            client.write(f"{directory}/{name}", data=encode_part(lines), overwrite=True)

    # A value an earlier recount left for a hashtag the lake no longer has (its statuses
    # were deleted) must go.
    stale = MetricRow(Metric.HASHTAG, Granularity.HOUR, f"{day:%Y%m%d}05", "gonefromthelake")
    connection = connect(HBaseSettings())
    try:
        MetricStore(connection).write_batch({stale: 9})
    finally:
        connection.close()

    result = HashtagRecount(StackSettings(), HdfsSettings(), HBaseSettings(), BatchSettings()).run(
        day
    )
    assert result.input_files > 2
    assert result.rows == len(expected)

    connection = connect(HBaseSettings())
    try:
        store = MetricStore(connection)
        found: Counter[tuple[str, str]] = Counter()
        for hour in range(24):
            bucket = f"{day:%Y%m%d}{hour:02d}"
            for value in store.scan_bucket(Metric.HASHTAG, Granularity.HOUR, bucket):
                assert value.live is None
                found[(bucket, value.row.dimension)] = value.batch or 0
    finally:
        connection.close()
    assert found == expected

    # Rerunning the same day is idempotent.
    again = HashtagRecount(StackSettings(), HdfsSettings(), HBaseSettings(), BatchSettings()).run(
        day
    )
    assert again.rows == result.rows


def test_a_day_without_lake_files_recounts_nothing(stack: LocalStack) -> None:
    result = HashtagRecount(StackSettings(), HdfsSettings(), HBaseSettings(), BatchSettings()).run(
        date(1970, 1, 2)
    )
    assert (result.input_files, result.rows) == (0, 0)
