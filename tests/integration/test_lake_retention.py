"""`fedilake lake retain` on the real HDFS: a dry run by default; old days go, then the
tombstones only they needed; recent days and tombstones stay."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hdfs import InsecureClient

from fedilake.contracts import part_file_name, raw_hour_dir, tombstone_dir
from fedilake.settings import HdfsSettings
from fedilake.stack.control import LocalStack
from sinks.lake import encode_part

pytestmark = pytest.mark.integration


def retain(topic: str, *flags: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "fedilake.cli", "lake", "retain", "--topic", topic, *flags],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_retention_removes_old_days_then_their_tombstones(stack: LocalStack) -> None:
    hdfs = HdfsSettings()
    client = InsecureClient(hdfs.webhdfs_url, user=hdfs.user)
    topic = f"retain-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    old_hour, new_hour = datetime(2001, 2, 3, 4, tzinfo=UTC), now - timedelta(days=2)
    data = encode_part([b'{"v": 1}'])
    old_day = raw_hour_dir(topic, old_hour, hdfs.lake_root)
    new_day = raw_hour_dir(topic, new_hour, hdfs.lake_root)
    for directory in (old_day, new_day):
        client.write(f"{directory}/{part_file_name(topic, 0, 0, 0)}", data=data)
    tombstones = tombstone_dir(topic, hdfs.lake_root)
    old_tombstone = f"{tombstones}/{part_file_name(topic, 0, 0, 0)}"
    new_tombstone = f"{tombstones}/{part_file_name(topic, 0, 1, 1)}"
    client.write(old_tombstone, data=data)
    client.write(new_tombstone, data=data)
    client.set_times(old_tombstone, modification_time=int(old_hour.timestamp() * 1000))
    old_dt = old_day.rsplit("/", 1)[0]
    try:
        dry = retain(topic, "--days", "30")
        assert f"would delete {old_dt}" in dry and f"would delete {old_tombstone}" in dry
        assert "dry run: 1 day partitions" in dry and "1 tombstone files" in dry
        assert client.status(old_dt, strict=False) is not None  # nothing deleted yet

        retain(topic, "--days", "30", "--apply")
        assert client.status(old_dt, strict=False) is None
        assert client.status(old_tombstone, strict=False) is None
        assert client.status(new_day, strict=False) is not None
        assert client.status(new_tombstone, strict=False) is not None
    finally:
        client.delete(f"{hdfs.lake_root}/raw/{topic}", recursive=True)
        client.delete(tombstones, recursive=True)
