"""The lake sink's Kafka consumer: aiokafka on an event loop of its own, behind the blocking
calls the sink makes, in kafka-python's names and shapes.

aiokafka decodes record batches in C: a bare loop over the streamer's topic reads about
twice as fast as kafka-python, whose pure-Python decoding was most of the time of the
sink's consumer thread. The loop thread plays the part of kafka-python's I/O thread: it
fetches, heartbeats and runs the rebalance callbacks, which may block it (as they block
kafka-python's) within the session timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener as AsyncRebalanceListener
from aiokafka.errors import KafkaError as AsyncKafkaError
from aiokafka.structs import TopicPartition as AsyncTopicPartition
from kafka import TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

T = TypeVar("T")


def _ours(partitions: Iterable[Any]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in partitions]


def _theirs(tp: TopicPartition) -> AsyncTopicPartition:
    """aiokafka checks for its own TopicPartition (equal, and hashed alike, to ours)."""
    return AsyncTopicPartition(tp.topic, tp.partition)


class _Relay(AsyncRebalanceListener):
    """aiokafka's callbacks, handed to a kafka-python listener on the loop's thread."""

    def __init__(self, listener: ConsumerRebalanceListener) -> None:
        self.listener = listener

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self.listener.on_partitions_revoked(_ours(revoked))

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        self.listener.on_partitions_assigned(_ours(assigned))


class GroupConsumer:
    """A consumer group member: `subscribe` starts it, `close` leaves the group.

    Thread-safe in the way the sink needs: its loop's thread (rebalance callbacks) may
    pause and resume; every other call comes from one thread at a time. aiokafka's errors
    are raised as kafka-python's `KafkaError`, a timeout as `KafkaTimeoutError`."""

    def __init__(self, **config: Any) -> None:
        self._config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lake-kafka", daemon=True
        )
        self._thread.start()
        self._consumer: AIOKafkaConsumer = self._wait(self._create())
        self._closed = False

    async def _create(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(**self._config)  # binds to the running loop

    def _wait(self, work: Coroutine[Any, Any, T], timeout_ms: int | None = None) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking consumer call from a rebalance callback")
        if timeout_ms is not None:
            work = asyncio.wait_for(work, timeout_ms / 1000)
        try:
            return asyncio.run_coroutine_threadsafe(work, self._loop).result()
        except TimeoutError as exc:
            raise KafkaTimeoutError(f"no answer from Kafka in {timeout_ms} ms") from exc
        except AsyncKafkaError as exc:
            raise KafkaError(f"{exc.__class__.__name__}: {exc}") from exc

    def _on_loop(self, call: Callable[[], T]) -> T:
        """A plain aiokafka call, made on the loop's thread (aiokafka is not thread-safe)."""
        if threading.current_thread() is self._thread:
            return call()

        async def run() -> T:
            return call()

        return self._wait(run())

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        self._on_loop(lambda: self._consumer.subscribe(topics, listener=_Relay(listener)))
        self._wait(self._consumer.start())

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        batches = self._wait(self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records))
        return {TopicPartition(tp.topic, tp.partition): records for tp, records in batches.items()}

    def assignment(self) -> set[TopicPartition]:
        return set(_ours(self._on_loop(self._consumer.assignment)))

    def pause(self, *partitions: TopicPartition) -> None:
        """Those of `partitions` still assigned (the others have nothing to pause)."""
        self._on_loop(lambda: self._consumer.pause(*self._assigned(partitions)))

    def resume(self, *partitions: TopicPartition) -> None:
        self._on_loop(lambda: self._consumer.resume(*self._assigned(partitions)))

    def _assigned(self, partitions: Iterable[TopicPartition]) -> list[AsyncTopicPartition]:
        # On the loop's thread, where the assignment changes: no revoke in between.
        assigned = self._consumer.assignment()
        return [p for p in map(_theirs, partitions) if p in assigned]

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        return self._wait(self._consumer.position(_theirs(tp)), timeout_ms)

    def committed(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        offset: int | None = self._wait(self._consumer.committed(_theirs(tp)), timeout_ms)
        return offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._on_loop(lambda: self._consumer.seek(_theirs(tp), offset))

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._wait(self._consumer.seek_to_beginning(*map(_theirs, partitions)))

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self._wait(
            self._consumer.commit({_theirs(tp): meta.offset for tp, meta in offsets.items()})
        )

    def close(self, autocommit: bool = False) -> None:
        """Leave the group (never committing: the sink commits what landed) and stop."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wait(self._consumer.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()
