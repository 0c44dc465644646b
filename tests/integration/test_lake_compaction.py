"""Compaction on the real HDFS: crash-safe roll forward, late files and new deletes reopen an hour."""

from __future__ import annotations

import gzip
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hdfs import InsecureClient

from fedilake.contracts import COMPACTION_MANIFEST, SUCCESS_MARKER, Envelope, EventKind, PartFile
from fedilake.settings import HdfsSettings
from fedilake.stack.control import LocalStack
from sinks.compactor import HourlyCompactor
from sinks.lake import LakeWriter, PartitionBuffer, hour_of

pytestmark = pytest.mark.integration

HOUR = datetime(2023, 5, 6, 7, tzinfo=UTC)
LATER = datetime.now(UTC) + timedelta(days=400)


def status(n: int) -> Envelope:
    return Envelope(
        kind=EventKind.STATUS,
        instance="https://c.example",
        stream="public",
        event="update",
        received_at=HOUR,
        created_at=HOUR + timedelta(seconds=n),
        uri=f"https://c.example/s/{n}",
        status_id=str(n),
        payload="{}",
    )


def delete(n: int) -> Envelope:
    return Envelope(
        kind=EventKind.DELETE,
        instance="https://c.example",
        stream="public",
        event="delete",
        received_at=HOUR + timedelta(minutes=30),
        created_at=None,
        uri=None,
        status_id=str(n),
        payload=str(n),
    )


def flush(
    writer: LakeWriter, topic: str, partition: int, first: int, envelopes: list[Envelope]
) -> None:
    buffer = PartitionBuffer()
    for offset, env in enumerate(envelopes, first):
        moment = env.event_time()
        buffer.add(offset, hour_of(moment), env.to_bytes(), moment, env.kind is EventKind.DELETE)
    writer.write(topic, partition, buffer)


def uris(client: InsecureClient, directory: str) -> list[str]:
    found = []
    for name in client.list(directory):
        if PartFile.parse(name):
            with client.read(f"{directory}/{name}") as reader:
                for line in gzip.decompress(reader.read()).splitlines():
                    env = Envelope.from_bytes(line)
                    if env.kind is EventKind.STATUS:
                        found.append(env.uri or "")
    return sorted(found)


def test_compaction_rolls_forward_and_reopens_for_late_files_and_deletes(stack: LocalStack) -> None:
    topic = f"compact-{uuid.uuid4().hex[:8]}"
    client = InsecureClient(HdfsSettings().webhdfs_url, user="fedilake")
    writer = LakeWriter(client, "/fedilake")
    compactor = HourlyCompactor(client, "/fedilake", target_bytes=1 << 20)
    directory = f"/fedilake/raw/{topic}/dt=2023-05-06/hr=07"
    for n in range(3):  # three flushes of partition 0, one of partition 1
        flush(writer, topic, 0, n * 10, [status(n * 10 + k) for k in range(10)])
    flush(writer, topic, 1, 0, [status(100 + k) for k in range(5)])
    expected = sorted(f"https://c.example/s/{n}" for n in [*range(30), *range(100, 105)])

    class CrashAfterManifest(HourlyCompactor):
        def _roll_forward(self, *args: object, **kwargs: object) -> None:
            if kwargs or len(args) > 3:  # the call that follows writing the manifest
                raise RuntimeError("killed after the manifest")

    with pytest.raises(RuntimeError):
        CrashAfterManifest(client, "/fedilake").run(topic, now=LATER)
    assert COMPACTION_MANIFEST in client.list(directory)
    assert uris(client, directory) == expected  # sources untouched until the roll forward

    [result] = compactor.run(topic, now=LATER)
    assert (result.files_after, result.events) == (2, 35)
    names = client.list(directory)
    assert SUCCESS_MARKER in names and COMPACTION_MANIFEST not in names
    assert sorted(PartFile.parse(n).partition for n in names if PartFile.parse(n)) == [0, 1]  # type: ignore[union-attr]
    assert uris(client, directory) == expected
    assert compactor.run(topic, now=LATER) == []  # nothing changed: nothing to do

    flush(writer, topic, 0, 30, [status(30)])  # a late event of the same hour
    [late] = compactor.run(topic, now=LATER)
    assert (late.files_before, late.files_after, late.events) == (3, 2, 36)

    flush(writer, topic, 1, 5, [delete(3), delete(101)])  # deletes arriving later
    results = compactor.run(topic, now=LATER)
    assert any(r.hour == HOUR and r.dropped == 2 for r in results)
    assert uris(client, directory) == sorted(
        (set(expected) | {"https://c.example/s/30"})
        - {"https://c.example/s/3", "https://c.example/s/101"}
    )
    [summary] = [s for s in compactor.summaries(topic, now=LATER) if s.hour == HOUR]
    assert summary.closed and summary.files == 2


def test_a_new_delete_reopens_only_the_hour_of_its_status(stack: LocalStack) -> None:
    topic = f"compact-{uuid.uuid4().hex[:8]}"
    client = InsecureClient(HdfsSettings().webhdfs_url, user="fedilake")
    writer = LakeWriter(client, "/fedilake")
    compactor = HourlyCompactor(client, "/fedilake", target_bytes=1 << 20)
    seven, eight, nine = (HOUR + timedelta(hours=h) for h in range(3))
    flush(writer, topic, 0, 0, [status(k) for k in range(5)])  # 07:00
    flush(writer, topic, 0, 5, [replace(status(k), created_at=eight) for k in range(10, 15)])
    assert {r.hour for r in compactor.run(topic, now=LATER)} == {seven, eight}
    assert compactor.run(topic, now=LATER) == []

    def later_delete(n: int) -> Envelope:  # received, and so landed, in the 09:00 hour
        return replace(delete(n), received_at=nine)

    flush(writer, topic, 1, 0, [later_delete(2)])
    results = {r.hour: r for r in compactor.run(topic, now=LATER)}
    assert set(results) == {seven, nine}  # 08:00 holds no status of it: not read again
    assert results[seven].dropped == 1
    eight_dir = f"/fedilake/raw/{topic}/dt=2023-05-06/hr=08"
    another = HourlyCompactor(client, "/fedilake", target_bytes=1 << 20)  # e.g. `lake close`
    assert another.run(topic, now=LATER) == []  # it checks 08:00 against its index too

    flush(writer, topic, 1, 1, [later_delete(12)])
    results = {r.hour: r for r in compactor.run(topic, now=LATER)}
    assert set(results) == {eight, nine}  # 07:00 is left alone this time
    assert results[eight].dropped == 1
    assert compactor.run(topic, now=LATER) == []
    closure = compactor.close_day(topic, HOUR.date(), now=LATER)
    assert closure.closed and not closure.open_hours
    assert uris(client, eight_dir) == sorted(f"https://c.example/s/{n}" for n in (10, 11, 13, 14))
