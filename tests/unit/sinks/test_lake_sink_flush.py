"""The sink's flushing, with a fake consumer and writer: background flushes land every
partition's ranges in offset order, retry what failed, and never leave a gap."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import namedtuple
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import TopicPartition

import sinks.lake as lake_module
from fedilake.settings import HdfsSinkSettings
from sinks.lake import (
    HdfsLakeSink,
    LakeSinkBroken,
    Landing,
    PartitionBuffer,
    _Recovery,
)
from streamer.envelopes import wrap_event

TOPIC = "fedilake.events"
Record = namedtuple("Record", "offset value")


def envelope(n: int) -> bytes:
    status = {
        "id": str(n),
        "uri": f"https://a.example/s/{n}",
        "created_at": "2026-11-23T10:00:00.000Z",
        "account": {"id": "1", "acct": "bob"},
    }
    return wrap_event(
        "update",
        json.dumps(status).encode(),
        instance="https://a.example",
        stream="public",
        received_at=datetime(2026, 11, 23, 10, 1, tzinfo=UTC),
    ).to_bytes()


class FakeConsumer:
    def __init__(self, batches: list[dict[TopicPartition, list[Record]]]) -> None:
        self.batches = batches
        self.commits: dict[TopicPartition, int] = {}
        self.assigned = {tp for batch in batches for tp in batch}
        self.paused: set[TopicPartition] = set()

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    def committed(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        return self.commits.get(tp)

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        return None

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.seek(partitions[0], 0)  # as the fakes see it: from the first offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def rebalance_pending(self) -> bool:
        return False

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        pass

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        if self.batches:
            return self.batches.pop(0)
        time.sleep(0.01)
        return {}

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.update({tp: meta.offset for tp, meta in offsets.items()})

    def close(self, autocommit: bool = False) -> None:
        pass


class FakeWriter:
    """Records the offset ranges it landed; fails the writes it is told to."""

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.landed: list[tuple[int, int, int]] = []  # partition, first, last
        self.failures = failures
        self.error = error or ValueError("WebHDFS answered an HTML error page")

    def write(
        self,
        topic: str,
        partition: int,
        buffer: PartitionBuffer,
        proceed: Any = None,
        commit_lock: Any = None,
    ) -> Landing:
        if self.failures:
            self.failures -= 1
            raise self.error
        assert buffer.first is not None and buffer.last is not None
        with commit_lock or contextlib.nullcontext():
            if proceed is not None and not proceed():
                return Landing.GIVEN_UP
            self.committing(partition)
            self.landed.append((partition, buffer.first, buffer.last))
        return Landing.LANDED

    def committing(self, partition: int) -> None:
        """Called where the manifest is written."""

    def recover(self, topic: str, partition: int) -> int | None:
        ends = [last for p, _, last in self.landed if p == partition]
        return max(ends) + 1 if ends else None


class FakeProducer:
    def send(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def sink_for(consumer: FakeConsumer, writer: FakeWriter) -> HdfsLakeSink:
    settings = HdfsSinkSettings(flush_events=10, flush_interval_s=3600)
    return HdfsLakeSink(settings, consumer, writer, FakeProducer())  # type: ignore[arg-type]


def test_background_flushes_land_in_offset_order_and_retry_any_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(threading.Event, "wait", lambda self, timeout=None: self.is_set())
    tps = [TopicPartition(TOPIC, p) for p in range(2)]
    batches = [
        {tp: [Record(o, envelope(o)) for o in range(start, start + 6)] for tp in tps}
        for start in range(0, 60, 6)
    ]
    consumer, writer = FakeConsumer(batches), FakeWriter(failures=3)
    sink = sink_for(consumer, writer)
    thread = threading.Thread(target=sink.run, kwargs={"topics": [TOPIC]})
    thread.start()
    deadline = time.monotonic() + 10
    while sink.written < 120 and time.monotonic() < deadline:
        time.sleep(0.01)
    sink.stop()
    thread.join(10)
    for tp in tps:
        ranges = [(first, last) for p, first, last in writer.landed if p == tp.partition]
        assert ranges[0][0] == 0 and ranges[-1][1] == 59
        assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
        assert consumer.commits[tp] == 60


def test_nothing_lands_after_a_background_flush_failed() -> None:
    tp = TopicPartition(TOPIC, 0)
    writer = FakeWriter(failures=1, error=OSError("DataNode gone"))
    sink = sink_for(FakeConsumer([]), writer)
    sink.stop_requested.set()  # stopping: the failed flush is not retried
    sink.buffers[tp] = PartitionBuffer()
    sink.buffers[tp].add(0, datetime(2026, 11, 23, 10, tzinfo=UTC), envelope(0))
    sink._flush_in_background()
    sink.buffers[tp] = PartitionBuffer()
    sink.buffers[tp].add(1, datetime(2026, 11, 23, 10, tzinfo=UTC), envelope(1))
    with pytest.raises(OSError):
        sink.flush()
    sink.flush()
    assert writer.landed == []  # offset 1 alone would leave offset 0 out for good


def buffered(sink: HdfsLakeSink, tp: TopicPartition, *offsets: int) -> None:
    buffer = sink.buffers.setdefault(tp, PartitionBuffer())
    for offset in offsets:
        buffer.add(offset, datetime(2026, 11, 23, 10, tzinfo=UTC), envelope(offset))


def test_a_failure_swallowed_by_a_rebalance_callback_still_stops_the_next_hand_off() -> None:
    tp = TopicPartition(TOPIC, 0)
    sink = sink_for(FakeConsumer([]), FakeWriter(failures=1, error=OSError("DataNode gone")))
    sink.stop_requested.set()
    buffered(sink, tp, 0)
    sink._flush_in_background()
    sink.settle_quietly()  # as `on_partitions_assigned` does: logged, not raised
    buffered(sink, tp, 1)
    with pytest.raises(LakeSinkBroken):
        sink._flush_in_background()


class StuckWriter(FakeWriter):
    """HDFS away: a write (of partition `only`, or any) waits until released, as a flush
    retrying through an outage."""

    def __init__(self, only: int | None = None) -> None:
        super().__init__()
        self.only = only
        self.entered, self.release = threading.Event(), threading.Event()

    def write(
        self,
        topic: str,
        partition: int,
        buffer: Any,
        proceed: Any = None,
        commit_lock: Any = None,
    ) -> Landing:
        if self.only is None or partition == self.only:
            self.entered.set()
            self.release.wait(10)
        return super().write(topic, partition, buffer, proceed, commit_lock)


def test_a_partition_lost_during_a_flush_is_not_written_and_callbacks_never_commit() -> None:
    lost, kept = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)

    commit_threads: list[str] = []

    class CommitCounting(FakeConsumer):
        def commit(self, offsets: dict[TopicPartition, Any]) -> None:
            commit_threads.append(threading.current_thread().name)
            super().commit(offsets)

    consumer, writer = CommitCounting([]), StuckWriter(only=lost.partition)
    consumer.assigned = {kept}
    sink = sink_for(consumer, writer)
    buffered(sink, kept, 0, 1)
    buffered(sink, lost, 0, 1)
    sink._flush_in_background()  # `lost` waits on HDFS; `kept` lands beside it
    assert writer.entered.wait(5)
    listener = _Recovery(sink)
    callback = threading.Thread(target=listener.on_partitions_lost, args=([lost],), name="io")
    callback.start()
    callback.join(5)
    writer.release.set()
    sink._settle()
    assert [p for p, _, _ in writer.landed] == [kept.partition]
    sink._commit_landed()
    assert consumer.commits == {kept: 2} and commit_threads == ["MainThread"]


def test_a_revoke_gives_up_a_flush_hdfs_holds_and_nothing_of_it_lands_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lake_module, "REBALANCE_WAIT_S", 0.2)
    revoked, kept = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    writer = StuckWriter()
    sink = sink_for(FakeConsumer([]), writer)
    buffered(sink, revoked, 0, 1)
    buffered(sink, kept, 0, 1)
    sink._flush_in_background()
    assert writer.entered.wait(5)
    buffered(sink, revoked, 2)  # consumed meanwhile
    listener = _Recovery(sink)
    started = time.monotonic()
    listener.on_partitions_revoked([revoked])  # on kafka-python's I/O thread: bounded
    assert time.monotonic() - started < 2
    assert revoked not in sink.buffers
    writer.release.set()
    sink._settle()
    assert [p for p, _, _ in writer.landed] == [kept.partition]  # the next owner has 0


def test_partitions_assigned_during_a_stuck_flush_are_not_written_by_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lake_module, "REBALANCE_WAIT_S", 0.2)
    tp = TopicPartition(TOPIC, 0)
    consumer, writer = SeekingConsumer([]), StuckWriter()
    sink = sink_for(consumer, writer)
    buffered(sink, tp, 0, 1)
    sink._flush_in_background()
    assert writer.entered.wait(5)
    buffered(sink, tp, 2)
    # Ours again after a rebalance: its position is read from the lake now, so the stuck
    # flush must not land its range afterwards (it would be read and written twice).
    _Recovery(sink).on_partitions_assigned([tp])
    assert tp not in sink.buffers
    writer.release.set()
    sink._settle()
    assert writer.landed == []
    consumer.assigned = {tp}
    sink._read_positions()
    assert consumer.seeks == [(0, 0)] and not consumer.paused  # nothing landed: from the start


class SeekingConsumer(FakeConsumer):
    def __init__(self, batches: list[dict[TopicPartition, list[Record]]]) -> None:
        super().__init__(batches)
        self.seeks: list[tuple[int, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))


def test_an_assignment_waits_for_a_manifest_being_written_only_within_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lake_module, "REBALANCE_WAIT_S", 0.2)
    tp = TopicPartition(TOPIC, 0)

    class SlowManifest(FakeWriter):
        def __init__(self) -> None:
            super().__init__()
            self.entered, self.release = threading.Event(), threading.Event()

        def committing(self, partition: int) -> None:  # past the point of no return
            self.entered.set()
            self.release.wait(10)

    consumer, writer = SeekingConsumer([]), SlowManifest()
    sink = sink_for(consumer, writer)
    buffered(sink, tp, 0, 1)
    sink._flush_in_background()
    assert writer.entered.wait(5)
    started = time.monotonic()
    _Recovery(sink).on_partitions_assigned([tp])  # HDFS holds the manifest: not past 0.2 s
    assert time.monotonic() - started < 1
    writer.release.set()
    sink._settle()
    assert writer.landed == [(0, 0, 1)]  # it stands (the fence refuses a second landing)
    consumer.assigned = {tp}
    sink._read_positions()  # the consumer loop's next turn
    assert consumer.seeks == [(0, 2)]  # after the range that landed: none read twice


def test_an_assignment_during_an_hdfs_outage_waits_on_the_consumer_thread_alone() -> None:
    away, other = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)

    class HdfsAway(FakeWriter):
        def __init__(self) -> None:
            super().__init__()
            self.away = True

        def recover(self, topic: str, partition: int) -> int | None:
            if self.away and partition == away.partition:
                raise OSError("Connection refused")
            return 7

    consumer, writer = SeekingConsumer([]), HdfsAway()
    consumer.assigned = {away, other}
    sink = sink_for(consumer, writer)
    started = time.monotonic()
    _Recovery(sink).on_partitions_assigned([away, other])  # on the I/O thread: returns
    sink._read_positions()
    assert time.monotonic() - started < 1
    assert consumer.seeks == [(1, 7)] and consumer.paused == {away}
    sink._add(away, 3, envelope(3))  # fetched before the pause: dropped, read again
    assert away not in sink.buffers
    writer.away = False
    sink._read_positions()  # too early: waits out its delay
    assert consumer.paused == {away}
    sink._unpositioned[away] = (0.0, 2.0)
    sink._read_positions()
    assert consumer.seeks == [(1, 7), (0, 7)] and not consumer.paused
    sink._commit_landed()
    assert consumer.commits == {away: 7, other: 7}


def test_a_fenced_partition_drops_what_it_holds_and_resumes_from_the_lake() -> None:
    fenced, other = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)

    class RivalLandedFirst(FakeWriter):
        """Another member landed offsets 0..9 of partition 0 while we were paused."""

        def write(self, topic: str, partition: int, buffer: Any, *args: Any, **kw: Any) -> Any:
            if partition == fenced.partition and not self.landed:
                self.landed.append((partition, 0, 9))
                return Landing.FENCED
            return super().write(topic, partition, buffer, *args, **kw)

    consumer, writer = SeekingConsumer([]), RivalLandedFirst()
    consumer.assigned = {fenced, other}
    sink = sink_for(consumer, writer)
    buffered(sink, fenced, 0, 1, 2)
    buffered(sink, other, 0, 1)
    sink._flush_in_background()
    sink._settle()
    sink._add(fenced, 3, envelope(3))  # consumed meanwhile: read again from the lake's end
    sink._add(other, 2, envelope(2))
    sink._flush_in_background()  # partition 0 lands nothing until it has resumed
    sink._settle()
    assert [(p, f, last) for p, f, last in writer.landed] == [(0, 0, 9), (1, 0, 1), (1, 2, 2)]
    sink._read_positions()  # on the consumer's thread, at the top of the loop
    assert consumer.seeks == [(0, 10)] and fenced not in sink.buffers
    sink._commit_landed()
    assert consumer.commits == {fenced: 10, other: 3}
    buffered(sink, fenced, 10, 11)
    sink.flush()
    assert writer.landed[-1] == (0, 10, 11)


def test_a_partition_the_lake_has_nothing_of_resumes_from_the_groups_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Never from where the consumer is: a rebalance may have dropped what it held."""
    monkeypatch.setattr(lake_module, "REBALANCE_WAIT_S", 0.2)
    tp, fresh = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    # Nothing of either in the lake, and HDFS away at the rebalance.
    consumer, writer = SeekingConsumer([]), FakeWriter(failures=9, error=OSError("away"))
    consumer.assigned = {tp, fresh}
    consumer.commits = {tp: 40}
    sink = sink_for(consumer, writer)
    buffered(sink, tp, 40, 41)
    _Recovery(sink).on_partitions_revoked([tp, fresh])  # nothing lands
    _Recovery(sink).on_partitions_assigned([tp, fresh])
    sink._add(tp, 42, envelope(42))  # fetched before the pause
    sink._read_positions()
    assert sorted(consumer.seeks) == [(0, 40), (1, 0)] and not sink.buffers
    assert not consumer.paused


def test_a_revoke_lands_what_it_holds_within_the_callbacks_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lake_module, "REBALANCE_WAIT_S", 0.2)
    revoked, kept = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    writer = StuckWriter(only=revoked.partition)  # HDFS holds its landing up
    sink = sink_for(FakeConsumer([]), writer)
    buffered(sink, revoked, 0, 1)
    buffered(sink, kept, 0, 1)
    started = time.monotonic()
    _Recovery(sink).on_partitions_revoked([revoked])
    assert time.monotonic() - started < 2 and writer.entered.is_set()
    assert list(sink.buffers) == [kept]  # still ours, still buffered
    writer.release.set()
    sink._settle()
    assert writer.landed == []  # the next owner reads 0..1 again from Kafka


def test_a_revoke_does_not_wait_past_its_bound_for_a_manifest_hdfs_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lake_module, "REBALANCE_WAIT_S", 0.2)
    release = threading.Event()

    class SlowManifest(FakeWriter):
        def committing(self, partition: int) -> None:  # under the partition's commit lock
            release.wait(5)  # WebHDFS answering slowly: up to a request timeout per call

    tp = TopicPartition(TOPIC, 0)
    sink = sink_for(FakeConsumer([]), SlowManifest())
    buffered(sink, tp, 0, 1)
    started = time.monotonic()
    _Recovery(sink).on_partitions_revoked([tp])  # heartbeats wait on it
    assert time.monotonic() - started < 1
    release.set()
    sink._settle()


class Firehose(FakeConsumer):
    """Five new records of each assigned partition per poll, unless it is paused."""

    def __init__(self, tps: list[TopicPartition]) -> None:
        super().__init__([])
        self.assigned = set(tps)
        self.next = dict.fromkeys(tps, 0)

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        batch = {}
        for tp in sorted(self.assigned - self.paused):
            first = self.next[tp]
            batch[tp] = [Record(o, envelope(o)) for o in range(first, first + 5)]
            self.next[tp] = first + 5
        if not batch:
            time.sleep(timeout_ms / 1000)
        return batch


def test_a_flush_hdfs_holds_up_pauses_fetching_but_never_the_loop() -> None:
    tp = TopicPartition(TOPIC, 0)
    consumer, writer = Firehose([tp]), StuckWriter()
    sink = sink_for(consumer, writer)  # a flush every 10 events
    thread = threading.Thread(target=sink.run, kwargs={"topics": [TOPIC]})
    thread.start()
    try:
        assert writer.entered.wait(5)  # the first flush is stuck on HDFS
        deadline = time.monotonic() + 5
        while not consumer.paused and time.monotonic() < deadline:
            time.sleep(0.01)
        assert consumer.paused == {tp}  # full buffers: fetching waits...
        held = consumer.next[tp]
        time.sleep(0.3)
        assert consumer.next[tp] == held  # ...and stays bounded
        assert sum(len(b) for b in sink.buffers.values()) < 20
        writer.release.set()  # HDFS is back
        deadline = time.monotonic() + 5
        while consumer.next[tp] < held + 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert consumer.next[tp] >= held + 50  # fetching again
    finally:
        sink.stop()
        writer.release.set()
        thread.join(10)
    ranges = [(first, last) for _p, first, last in writer.landed]
    assert ranges[0][0] == 0
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
