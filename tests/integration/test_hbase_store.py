"""The HBase metric store through the real Thrift server: idempotent tables, absolute writes, prefix scans."""

from __future__ import annotations

import uuid

import pytest

from fedilake.contracts import Granularity, Metric, MetricRow, Tables
from fedilake.settings import HBaseSettings
from fedilake.stack.control import LocalStack
from sinks.hbase import MetricStore, connect, init_tables

pytestmark = pytest.mark.integration


def test_tables_are_created_once_with_their_families(stack: LocalStack) -> None:
    connection = connect(HBaseSettings())
    try:
        assert init_tables(connection) == []  # the stack fixture created them already
        families = connection.table(Tables.METRICS.name).families()
        assert set(families) == {b"l", b"b"}
        assert families[b"l"]["bloom_filter_type"] == b"ROW"
        assert families[b"l"]["compression"] == b"GZ"
        assert families[b"l"]["max_versions"] == 1
    finally:
        connection.close()


def test_live_values_are_absolute_per_partition_and_summed_on_read(stack: LocalStack) -> None:
    bucket = "19990101" + f"{uuid.uuid4().int % 24:02d}"
    tag = f"t{uuid.uuid4().hex[:8]}"
    row = MetricRow(Metric.HASHTAG, Granularity.HOUR, bucket, tag)
    connection = connect(HBaseSettings())
    try:
        store = MetricStore(connection)
        store.write_live(0, {row: 5})
        store.write_live(0, {row: 5})  # a replayed flush writes the same absolute value
        store.write_live(3, {row: 2})
        store.write_batch({row: 7})
        [value] = [
            v for v in store.scan_bucket(Metric.HASHTAG, Granularity.HOUR, bucket) if v.row == row
        ]
        assert (value.live, value.batch) == (7, 7)
    finally:
        connection.close()


def test_top_reads_one_hour_by_prefix_scan_only(stack: LocalStack) -> None:
    day = "1998" + f"{uuid.uuid4().int % 12 + 1:02d}" + "01"
    hour, next_hour = f"{day}10", f"{day}11"
    connection = connect(HBaseSettings())
    try:
        store = MetricStore(connection)
        store.write_live(
            1,
            {
                MetricRow(Metric.HASHTAG, Granularity.HOUR, hour, f"tag{n:02d}"): n
                for n in range(30)
            },
        )
        store.write_live(1, {MetricRow(Metric.HASHTAG, Granularity.HOUR, next_hour, "other"): 1000})
        top = store.top(Metric.HASHTAG, Granularity.HOUR, hour, limit=20)
        assert [v.row.dimension for v in top] == [f"tag{n:02d}" for n in range(29, 9, -1)]
        assert all(v.row.bucket == hour for v in top)
    finally:
        connection.close()
