"""The HBase metric store through the real Thrift server: idempotent tables, absolute writes, prefix scans."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from fedilake.contracts import (
    HOURLY_TTL_S,
    AccountCell,
    AccountRow,
    Granularity,
    Metric,
    MetricRow,
    RowKeys,
    Tables,
)
from fedilake.settings import HBaseSettings
from fedilake.stack.control import LocalStack
from sinks.hbase import (
    LeaseHeldElsewhere,
    LiveLeases,
    MetricStore,
    PartitionTakenOver,
    connect,
    init_tables,
)

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
    bucket = "19850101" + f"{uuid.uuid4().int % 24:02d}"
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
    day = "1986" + f"{uuid.uuid4().int % 12 + 1:02d}" + "01"
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


def test_hourly_rows_have_their_own_table_with_a_ttl(stack: LocalStack) -> None:
    connection = connect(HBaseSettings())
    try:
        families = connection.table(Tables.HOURLY.name).families()
        assert families[b"l"]["time_to_live"] == HOURLY_TTL_S
        assert connection.table(Tables.METRICS.name).families()[b"l"]["time_to_live"] > 10**9
    finally:
        connection.close()


def test_hbase_init_command_is_idempotent(stack: LocalStack) -> None:
    prefix = f"init{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "FEDILAKE_HBASE_TABLE_PREFIX": prefix}
    runs = [
        subprocess.run(
            [sys.executable, "-m", "fedilake.cli", "hbase", "init"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert "fedilake_metrics_hourly: created" in runs[0]
    assert "fedilake_metrics_hourly: present" in runs[1] and "created" not in runs[1]
    assert "time_to_live=3024000" in runs[1]
    connection = connect(HBaseSettings(table_prefix=prefix))
    try:
        for name in connection.tables():
            connection.delete_table(name, disable=True)
    finally:
        connection.close()


def test_salted_keys_spread_a_bucket_and_read_back_whole(stack: LocalStack) -> None:
    bucket = "19870101" + f"{uuid.uuid4().int % 24:02d}"
    keys = RowKeys(salt_buckets=8)
    rows = {
        MetricRow(Metric.HASHTAG, Granularity.HOUR, bucket, f"s{n:02d}"): n + 1 for n in range(40)
    }
    salted = HBaseSettings(table_prefix=f"salt{uuid.uuid4().hex[:8]}", salt_buckets=8)
    connection = connect(salted)  # tables of its own: salted and plain keys never share one
    try:
        init_tables(connection)
        store = MetricStore(connection, keys)
        store.write_live(2, rows)
        salts = {keys.encode(row)[0] for row in rows}
        assert len(salts) > 4  # the bucket's writes land in several key ranges
        found = {v.row: v.live for v in store.scan_bucket(Metric.HASHTAG, Granularity.HOUR, bucket)}
        assert found == rows
        # Unsalted, the same bucket reads nothing: the salt really is in the stored key.
        plain = MetricStore(connection)
        assert list(plain.scan_bucket(Metric.HASHTAG, Granularity.HOUR, bucket)) == []
    finally:
        for name in connection.tables():
            connection.delete_table(name, disable=True)
        connection.close()


def test_a_zero_count_removes_the_cell(stack: LocalStack) -> None:
    tag = f"z{uuid.uuid4().hex[:8]}"
    row = MetricRow(Metric.HASHTAG, Granularity.ALL, "all", tag)
    connection = connect(HBaseSettings())
    try:
        store = MetricStore(connection)
        store.write_live(0, {row: 3})
        store.write_live(1, {row: 1})
        store.write_live(0, {row: 0})  # the last status of partition 0 left the tag
        values = [
            v for v in store.scan_bucket(Metric.HASHTAG, Granularity.ALL, "all") if v.row == row
        ]
        assert [v.live for v in values] == [1]
    finally:
        connection.close()


def test_an_account_is_one_cell_per_partition_and_bucket(stack: LocalStack) -> None:
    handle = f"a{uuid.uuid4().hex[:8]}@example.social"
    day = "19880102"
    all_time, one_day = (
        AccountRow(Granularity.ALL, "all", handle),
        AccountRow(Granularity.DAY, day, handle),
    )
    connection = connect(HBaseSettings())
    try:
        store = MetricStore(connection)
        # posts, boosts, replies, favourites, reblogs, replies received
        store.write_live(
            0,
            {},
            {
                all_time: AccountCell((2, 0, 0, 5, 0, 0), 2_000, 50, "202402"),
                one_day: AccountCell((2, 0, 0, 5, 0, 0)),
            },
        )
        store.write_live(
            1,
            {},
            {
                all_time: AccountCell((1, 0, 1, 0, 0, 0), 1_000, 90, "202402"),
                one_day: AccountCell((1, 0, 1, 0, 0, 0)),
            },
        )  # an older follower snapshot in another partition
        store.write_live(
            0, {}, {one_day: AccountCell((0,) * 6)}
        )  # partition 0's statuses left the day
        store.write_batch({MetricRow(Metric.POSTS, Granularity.DAY, day, handle): 4})

        def read(
            metric: Metric, granularity: Granularity, bucket: str
        ) -> dict[str, tuple[int | None, int | None]]:
            return {
                v.row.dimension: (v.live, v.batch)
                for v in store.scan_bucket(metric, granularity, bucket)
                if v.row.dimension == handle
            }

        assert read(Metric.POSTS, Granularity.ALL, "all") == {handle: (3, None)}
        assert read(Metric.FAVOURITES, Granularity.ALL, "all") == {handle: (5, None)}
        assert read(Metric.FOLLOWERS, Granularity.ALL, "all") == {handle: (50, None)}
        assert read(Metric.ACCOUNTS_CREATED, Granularity.MONTH, "202402") == {handle: (1, None)}
        assert read(Metric.ACCOUNTS_CREATED, Granularity.MONTH, "202403") == {}
        assert read(Metric.POSTS, Granularity.DAY, day) == {handle: (1, 4)}
        # A batch row is written whole: the replies it was not given are 0.
        assert read(Metric.REPLIES, Granularity.DAY, day) == {handle: (1, 0)}
        assert read(Metric.FAVOURITES, Granularity.DAY, day) == {}
    finally:
        connection.close()


def test_a_paused_owner_writing_late_is_fenced_by_the_next_owner(stack: LocalStack) -> None:
    """A worker claims a write's timestamp, is paused past its session, the partition's
    next owner (fenced later, so a higher epoch) takes it over and writes; then the paused
    worker's write lands (puts and deletes). What the next owner wrote stands, and the
    paused one's next claim fails, as does a take by an owner fenced before the lease's."""
    tag = f"f{uuid.uuid4().hex[:8]}"
    kept, emptied = (
        MetricRow(Metric.HASHTAG, Granularity.ALL, "all", tag),
        MetricRow(Metric.HASHTAG, Granularity.ALL, "all", tag + "x"),
    )
    partition = 100 + uuid.uuid4().int % 1000  # a lease no other test takes
    connection = connect(HBaseSettings())
    try:
        store, leases = MetricStore(connection), LiveLeases(connection)
        paused = leases.take(partition, (77, 5), now_ms=_now_ms())
        paused = leases.claim(partition, paused, _now_ms())
        store.write_live(partition, {kept: 4, emptied: 1}, timestamp=paused.claimed_ms)
        late = leases.claim(partition, paused, _now_ms())  # ... and the pause comes here

        # The next owner's clock may even run behind: its timestamps start above the claims.
        taker = leases.take(partition, (77, 6), now_ms=late.claimed_ms - 60_000)
        assert taker.claimed_ms > late.claimed_ms
        taker = leases.claim(partition, taker, _now_ms() - 60_000)
        store.write_live(partition, {kept: 6, emptied: 2}, timestamp=taker.claimed_ms)

        store.write_live(partition, {kept: 5, emptied: 0}, timestamp=late.claimed_ms)  # lands late
        values = {v.row: v.live for v in store.scan_bucket(Metric.HASHTAG, Granularity.ALL, "all")}
        assert (values.get(kept), values.get(emptied)) == (6, 2)
        with pytest.raises(PartitionTakenOver, match=f"partition {partition}: .*another worker"):
            leases.claim(partition, late, _now_ms())
        with pytest.raises(LeaseHeldElsewhere, match="held by producer:epoch 77:6"):
            leases.take(partition, (77, 5), now_ms=_now_ms())  # it had lost the lease
        assert leases.take(partition, (77, 6), now_ms=0) == taker  # the owner's: kept

        # The owner's own writes go on: a count that drops to 0 and comes back.
        taker = leases.claim(partition, taker, _now_ms())
        store.write_live(partition, {emptied: 0}, timestamp=taker.claimed_ms)
        taker = leases.claim(partition, taker, taker.claimed_ms)  # the same millisecond
        store.write_live(partition, {emptied: 3}, timestamp=taker.claimed_ms)
        values = {v.row: v.live for v in store.scan_bucket(Metric.HASHTAG, Granularity.ALL, "all")}
        assert (values.get(kept), values.get(emptied)) == (6, 3)
    finally:
        connection.close()


@pytest.mark.parametrize(
    "old_fence",
    [(900, 12), (3, 9)],
    ids=["another producer id", "the same id, an epoch above (Kafka reset)"],
)
def test_a_lease_not_known_older_is_taken_only_as_proven(
    stack: LocalStack, old_fence: tuple[int, int]
) -> None:
    """After a Kafka reset (or an expired transactional id) the lease's fence says nothing
    of its order against ours: it is taken over only as the lease read before our fence
    was proven to stand in Kafka, never one changed since."""
    partition = 3000 + uuid.uuid4().int % 1000
    connection = connect(HBaseSettings())
    try:
        leases = LiveLeases(connection)
        old = leases.take(partition, old_fence, _now_ms())
        seen = leases.read(partition)
        with pytest.raises(LeaseHeldElsewhere, match=f"partition {partition}: .*{old_fence[0]}"):
            leases.take(partition, (3, 0), _now_ms())
        leases.claim(partition, old, _now_ms())  # the lease changed after it was read
        with pytest.raises(LeaseHeldElsewhere):
            leases.take(partition, (3, 0), _now_ms(), proven=seen)
        seen = leases.read(partition)
        new = leases.take(partition, (3, 0), _now_ms(), proven=seen)
        assert new.claimed_ms > old.claimed_ms
        with pytest.raises(PartitionTakenOver):
            leases.claim(partition, old, _now_ms())
    finally:
        connection.close()


def test_a_claim_whose_answer_was_lost_is_still_the_owners(stack: LocalStack) -> None:
    partition = 2000 + uuid.uuid4().int % 1000
    connection = connect(HBaseSettings())
    try:
        leases = LiveLeases(connection)
        first = leases.take(partition, (1, 0), _now_ms())
        leases.claim(partition, first, _now_ms())  # applied, but its answer never came back
        again = leases.claim(partition, first, _now_ms())
        assert again.epoch == first.epoch and again.claimed_ms > first.claimed_ms
    finally:
        connection.close()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
