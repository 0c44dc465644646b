"""The HDFS lake sink on real Kafka and WebHDFS: hourly files by event time, exactly once across restarts."""

from __future__ import annotations

import gzip
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hdfs import InsecureClient
from kafka import KafkaProducer

import sinks.lake as lake_module
from fedilake.contracts import Envelope, EventKind, PartFile, TopicSpec
from fedilake.kafka_topics import ensure_topics
from fedilake.settings import HdfsSettings, HdfsSinkSettings, KafkaSettings
from fedilake.stack.control import LocalStack
from sinks.lake import HdfsLakeSink, LakeWriter, Landing, PartitionBuffer, build_sink

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


def envelope(n: int, run: str) -> Envelope:
    created = START + timedelta(minutes=7 * n)  # spans several hours
    uri = f"https://sim.example/users/a/statuses/{run}-{n}"
    return Envelope(
        kind=EventKind.STATUS,
        instance="https://sim.example",
        stream="public",
        event="update",
        received_at=datetime.now(UTC),
        created_at=created,
        uri=uri,
        status_id=str(n),
        payload=f'{{"id":"{n}","uri":"{uri}","tags":[]}}',
    )


def produce(topic: str, envelopes: list[Envelope]) -> None:
    producer = KafkaProducer(bootstrap_servers=KafkaSettings().bootstrap_servers, acks="all")
    for env in envelopes:
        producer.send(topic, key=env.kafka_key(), value=env.to_bytes())
    producer.flush()
    producer.close()


def lake_contents(client: InsecureClient, topic: str) -> dict[str, list[str]]:
    """uri -> the `dt=.../hr=..` partitions it was found in, over every part file of the topic."""
    found: dict[str, list[str]] = {}
    for root, _dirs, files in client.walk(f"/fedilake/raw/{topic}"):
        for name in files:
            if name.startswith("."):
                continue
            assert PartFile.parse(name) is not None, name
            with client.read(f"{root}/{name}") as reader:
                for line in gzip.decompress(reader.read()).splitlines():
                    env = Envelope.from_bytes(line)
                    partition = "/".join(root.rsplit("/", 2)[-2:])
                    found.setdefault(env.uri or "", []).append(partition)
    return found


def run_until(sink: HdfsLakeSink, client: InsecureClient, topic: str, count: int) -> None:
    thread = threading.Thread(target=sink.run, kwargs={"topics": [topic]})
    thread.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if sink.written >= count and not sink.buffers:
                break
            time.sleep(0.5)
    finally:
        sink.stop()
        thread.join(60)
    assert sink.written >= count, f"sink wrote {sink.written} of {count}"


def test_every_event_lands_once_in_its_event_hour_across_restarts(stack: LocalStack) -> None:
    run = uuid.uuid4().hex[:8]
    topic = f"lake-test-{run}"
    ensure_topics(KafkaSettings(), [TopicSpec(topic, partitions=2)])
    client = InsecureClient(HdfsSettings().webhdfs_url, user="fedilake")
    settings = HdfsSinkSettings(group_id=f"lake-{run}", flush_events=150, flush_interval_s=1)

    first = [envelope(n, run) for n in range(400)]
    produce(topic, first)
    run_until(build_sink(settings, KafkaSettings(), HdfsSettings()), client, topic, 400)

    # A second sink (as after a restart) must not write anything twice.
    second = [envelope(n, run) for n in range(400, 600)]
    produce(topic, second)
    run_until(build_sink(settings, KafkaSettings(), HdfsSettings()), client, topic, 200)

    everything = first + second
    assert_each_once(client, topic, everything)
    found = lake_contents(client, topic)
    for env in everything:  # event time, not arrival time, decides the partition
        assert found[env.uri or ""] == [f"dt={env.event_time():%Y-%m-%d}/hr={env.event_time():%H}"]


class Group:
    """Sink members of one consumer group, each run by a thread of this process."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.members: list[tuple[HdfsLakeSink, threading.Thread]] = []

    def join(self, sink: HdfsLakeSink) -> HdfsLakeSink:
        thread = threading.Thread(target=sink.run, kwargs={"topics": [self.topic]})
        thread.start()
        self.members.append((sink, thread))
        return sink

    def stop(self) -> None:
        for sink, thread in self.members:
            sink.stop()
            thread.join(60)


def landed(client: InsecureClient, topic: str) -> int:
    """Copies of events in the topic's visible part files."""
    if client.status(f"/fedilake/raw/{topic}", strict=False) is None:
        return 0
    return sum(len(hours) for hours in lake_contents(client, topic).values())


def assert_each_once(client: InsecureClient, topic: str, everything: list[Envelope]) -> None:
    found = lake_contents(client, topic)
    assert set(found) == {e.uri for e in everything}
    assert Counter(len(partitions) for partitions in found.values()) == {1: len(everything)}


def test_members_joining_and_leaving_mid_stream_land_every_event_once(stack: LocalStack) -> None:
    """Rebalances while events flow: revoked partitions are handed over (landed or given
    up within the callback's bound), assigned ones resume from where the lake ends."""
    run = uuid.uuid4().hex[:8]
    topic = f"lake-group-{run}"
    ensure_topics(KafkaSettings(), [TopicSpec(topic, partitions=4)])
    client = InsecureClient(HdfsSettings().webhdfs_url, user="fedilake")
    settings = HdfsSinkSettings(group_id=f"lake-{run}", flush_events=40, flush_interval_s=0.5)
    everything = [envelope(n, run) for n in range(900)]
    group = Group(topic)

    def member() -> HdfsLakeSink:
        return group.join(build_sink(settings, KafkaSettings(), HdfsSettings()))

    try:
        first = member()
        produce(topic, everything[:300])
        assert wait_for(lambda: first.written > 0, 60)
        member()  # a rebalance while the first member holds unlanded events
        produce(topic, everything[300:600])
        time.sleep(3)
        member()
        first.stop()  # leaves: another rebalance
        produce(topic, everything[600:])
        count = len(everything)
        assert wait_for(lambda: landed(client, topic) >= count, 120), landed(client, topic)
        time.sleep(2)  # anything landing twice would land by now
    finally:
        group.stop()
    assert_each_once(client, topic, everything)


def test_a_flush_stalled_past_a_rebalance_lands_no_offset_twice(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's flush is stuck writing its manifest (HDFS answering slowly) when a
    second member joins: the rebalance gives its partitions up after the bound, the next
    owner lands the same offsets from the lake's position, and then the stuck manifest
    goes through. The manifest fence keeps exactly one copy of every offset."""
    monkeypatch.setattr(lake_module, "REBALANCE_WAIT_S", 1.0)
    run = uuid.uuid4().hex[:8]
    topic = f"lake-stall-{run}"
    ensure_topics(KafkaSettings(), [TopicSpec(topic, partitions=2)])
    client = InsecureClient(HdfsSettings().webhdfs_url, user="fedilake")
    settings = HdfsSinkSettings(group_id=f"lake-{run}", flush_events=30, flush_interval_s=0.5)
    everything = [envelope(n, run) for n in range(500)]
    stall, stalled, release = threading.Event(), threading.Event(), threading.Event()

    class StallingWriter(LakeWriter):
        def create_once(self, path: str, data: bytes) -> bool:
            if stall.is_set() and "/_offsets/" in path:  # every partition's: the one
                stalled.set()  # the next owner gets is stuck for sure
                release.wait(30)
            return super().create_once(path, data)

    group = Group(topic)
    try:
        first = build_sink(settings, KafkaSettings(), HdfsSettings())
        first.writer = StallingWriter(client, "/fedilake")
        group.join(first)
        produce(topic, everything[:200])
        assert wait_for(lambda: landed(client, topic) >= 200, 60)
        stall.set()
        produce(topic, everything[200:400])
        assert stalled.wait(30)  # inside a manifest's commit, its partition's lock held
        second = group.join(build_sink(settings, KafkaSettings(), HdfsSettings()))
        assert wait_for(lambda: second.written > 0, 60)  # the next owner lands meanwhile
        release.set()  # the stuck manifest goes through now, or is refused
        produce(topic, everything[400:])
        count = len(everything)
        assert wait_for(lambda: landed(client, topic) >= count, 90), landed(client, topic)
        time.sleep(2)  # anything landing twice would land by now
    finally:
        release.set()
        group.stop()
    assert_each_once(client, topic, everything)


def wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return check()


def test_a_flush_interrupted_before_its_renames_is_finished_on_recovery(stack: LocalStack) -> None:
    run = uuid.uuid4().hex[:8]
    topic = f"lake-crash-{run}"
    client = InsecureClient(HdfsSettings().webhdfs_url, user="fedilake")
    writer = LakeWriter(client, "/fedilake")
    buffer = PartitionBuffer()
    for offset in range(10):
        env = envelope(offset, run)
        buffer.add(
            offset, env.event_time().replace(minute=0, second=0, microsecond=0), env.to_bytes()
        )

    class CrashBeforeRename(LakeWriter):
        def _rename_all(self, moves: object) -> None:
            raise RuntimeError("killed between the manifest and the renames")

    with pytest.raises(RuntimeError):
        CrashBeforeRename(client, "/fedilake").write(topic, 0, buffer)
    assert all(
        not n.endswith(".json.gz")
        for _r, _d, files in client.walk(f"/fedilake/raw/{topic}")
        for n in files
    )

    assert writer.recover(topic, 0) == 10
    names = [n for _r, _d, files in client.walk(f"/fedilake/raw/{topic}") for n in files]
    assert names and all(n == f"{topic}+0+{0:020d}+{9:020d}.json.gz" for n in names)
    assert sum(1 for _ in lake_contents(client, topic)) == 10
    assert writer.recover(topic, 1) is None


def test_a_member_paused_past_a_rebalance_is_fenced_by_webhdfs(stack: LocalStack) -> None:
    """The fence relies on HDFS refusing to rename onto an existing file; checked here on
    the real WebHDFS (the unit tests use an in-memory double)."""
    run = uuid.uuid4().hex[:8]
    topic = f"lake-fence-{run}"
    client = InsecureClient(HdfsSettings().webhdfs_url, user="fedilake")
    writer = LakeWriter(client, "/fedilake")

    def flush(first: int, last: int) -> Landing:
        buffer = PartitionBuffer()
        for offset in range(first, last + 1):
            env = envelope(offset, run)
            buffer.add(
                offset, env.event_time().replace(minute=0, second=0, microsecond=0), env.to_bytes()
            )
        return writer.write(topic, 0, buffer)

    assert flush(0, 4) is Landing.LANDED
    assert flush(5, 9) is Landing.LANDED  # the next owner, while the old one was paused
    assert flush(5, 7) is Landing.FENCED  # the old one, at its manifest's name
    assert flush(10, 11) is Landing.LANDED  # prunes the manifest named 5
    assert flush(5, 7) is Landing.FENCED  # by the newer manifest
    names = [n for _r, _d, files in client.walk(f"/fedilake/raw/{topic}") for n in files]
    parts = [part for part in map(PartFile.parse, names) if part is not None]
    assert sorted({(p.first_offset, p.last_offset) for p in parts}) == [(0, 4), (5, 9), (10, 11)]
    assert not [n for n in names if n.startswith(".")]  # the fenced flushes' temps are gone
    assert writer.recover(topic, 0) == 12
    assert Counter(len(hours) for hours in lake_contents(client, topic).values()) == {1: 12}
