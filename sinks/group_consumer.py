"""The lake sink's Kafka consumer: aiokafka on an event loop of its own, behind the blocking
calls the sink makes, in kafka-python's names and shapes.

aiokafka decodes record batches in C: a bare loop over the streamer's topic reads about
twice as fast as kafka-python, whose pure-Python decoding was most of the time of the
sink's consumer thread. The loop's thread fetches and heartbeats. Rebalance callbacks
run as kafka-python runs them: on the caller's thread, inside `poll`, never beside the
caller's own code; the group's rebalance waits for them meanwhile (aiokafka sends no
heartbeats while it waits for the assignment's callback, so the caller must poll well
within the rebalance timeout: see `rebalance_pending`).

A poll never returns records fetched before a revoke or a seek of their partition (each
partition has an epoch, moved on the loop's thread by both, and every fetch is stamped
with the epochs it was fetched under): the sink drops no offset it has not been given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
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

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bounds on calls that aiokafka would otherwise retry until Kafka answers (kafka-python's
# own calls time out too): the sink's loop must go on, and SIGTERM be heard.
START_TIMEOUT_MS = 60_000
COMMIT_TIMEOUT_MS = 10_000
STOP_TIMEOUT_MS = 30_000

Callback = Callable[[list[TopicPartition]], None]
# A fetch's records, and the epoch of each of their partitions when they were fetched.
Fetched = tuple[dict[AsyncTopicPartition, list[Any]], dict[AsyncTopicPartition, int]]


def _ours(partitions: Iterable[Any]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in partitions]


def _release(done: concurrent.futures.Future[None]) -> None:
    """Let the coordinator awaiting `done` go on (unless it gave up waiting)."""
    if done.set_running_or_notify_cancel():
        done.set_result(None)


def _theirs(tp: TopicPartition) -> AsyncTopicPartition:
    """aiokafka checks for its own TopicPartition (equal, and hashed alike, to ours)."""
    return AsyncTopicPartition(tp.topic, tp.partition)


class _Relay(AsyncRebalanceListener):
    """aiokafka's callbacks, queued for the caller's thread; the coordinator awaits them."""

    def __init__(self, owner: GroupConsumer, listener: ConsumerRebalanceListener) -> None:
        self.owner = owner
        self.listener = listener

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self.owner.moved(revoked)  # what was fetched of them is not for the caller any more
        await self.owner.hand_to_caller(self.listener.on_partitions_revoked, _ours(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        await self.owner.hand_to_caller(self.listener.on_partitions_assigned, _ours(assigned))


class GroupConsumer:
    """A consumer group member: `subscribe` joins, `close` leaves the group.

    Used from one thread at a time. aiokafka's errors are raised as kafka-python's
    `KafkaError`, a timeout as `KafkaTimeoutError`."""

    def __init__(self, **config: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lake-kafka", daemon=True
        )
        self._thread.start()
        self._callbacks: queue.SimpleQueue[
            tuple[Callback, list[TopicPartition], concurrent.futures.Future[None]]
        ] = queue.SimpleQueue()
        self._wakeup = threading.Event()  # a callback queued, or the fetch done
        self._fetching: concurrent.futures.Future[Fetched] | None = None
        # Per partition, moved by each revoke and seek; read and moved on the loop only.
        self._epochs: dict[AsyncTopicPartition, int] = {}
        self._closing = False  # set on the loop, where callbacks are handed over
        self._closed = False

        async def create() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(**config)  # binds to the running loop

        try:
            self._consumer: AIOKafkaConsumer = self._wait(create())
        except BaseException:
            self._stop_loop()
            raise

    # ------------------------------------------------------------------ the loop

    def _submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if threading.current_thread() is self._thread:
            work.close()
            raise RuntimeError("a blocking consumer call from the consumer's own loop")
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    def _wait(self, work: Coroutine[Any, Any, T], timeout_ms: int | None = None) -> T:
        """Run `work` on the loop and wait for it, at most `timeout_ms`."""
        future = self._submit(work)
        done, _ = concurrent.futures.wait(
            [future], timeout=None if timeout_ms is None else timeout_ms / 1000
        )
        if not done:
            future.cancel()
            raise KafkaTimeoutError(f"no answer from Kafka in {timeout_ms} ms")
        return self._result(future)

    @staticmethod
    def _result(future: concurrent.futures.Future[T]) -> T:
        try:
            return future.result()
        except AsyncKafkaError as exc:
            raise KafkaError(f"{exc.__class__.__name__}: {exc}") from exc

    def _on_loop(self, call: Callable[[], T]) -> T:
        """A plain aiokafka call, made on the loop's thread (aiokafka is not thread-safe)."""

        async def run() -> T:
            return call()

        return self._wait(run())

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # ------------------------------------------------------------------ rebalances

    async def hand_to_caller(self, callback: Callback, partitions: list[TopicPartition]) -> None:
        """On the loop: have the caller's thread run `callback` at its next `poll`, and wait."""
        if self._closing:
            return  # leaving: the caller has landed what it had, nothing to hand over
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._callbacks.put((callback, partitions, done))
        self._wakeup.set()
        await asyncio.wrap_future(done)

    def _run_callbacks(self, run: bool = True) -> None:
        """Run the queued callbacks on this thread, or (`run` False, when closing) only let
        the coordinator go on (see hand_to_caller)."""
        while True:
            try:
                callback, partitions, done = self._callbacks.get_nowait()
            except queue.Empty:
                return
            try:
                if run:
                    callback(partitions)
            except Exception:  # as kafka-python and aiokafka do: logged, the group goes on
                log.exception("a rebalance callback failed for %s", partitions)
            finally:
                _release(done)

    def rebalance_pending(self) -> bool:
        """A rebalance waits for the next poll: the caller should poll now (aiokafka sends
        no heartbeats while it waits for an assignment's callback)."""
        return not self._callbacks.empty()

    def moved(self, partitions: Iterable[Any]) -> None:
        """On the loop: what was fetched of `partitions` until now is stale."""
        for tp in partitions:
            key = _theirs(tp)
            self._epochs[key] = self._epochs.get(key, 0) + 1

    async def _fetch(self, timeout_ms: int, max_records: int) -> Fetched:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        # In the same step as the fetch: no revoke nor seek comes in between.
        return batches, {tp: self._epochs.get(tp, 0) for tp in batches}

    async def _current(self, fetched: Fetched) -> dict[TopicPartition, list[Any]]:
        batches, epochs = fetched
        return {
            TopicPartition(tp.topic, tp.partition): records
            for tp, records in batches.items()
            if self._epochs.get(tp, 0) == epochs[tp]
        }

    # ------------------------------------------------------------------ the consumer

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        # Started first: aiokafka's start() waits for an assignment when already
        # subscribed, and the assignment's callback waits for our next poll.
        self._wait(self._consumer.start(), START_TIMEOUT_MS)
        self._on_loop(lambda: self._consumer.subscribe(topics, listener=_Relay(self, listener)))

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        """Records fetched within `timeout_ms` (none if a rebalance takes longer: the fetch
        goes on, and the next poll returns what it brings), after running the rebalance
        callbacks due; none fetched before a revoke or a seek of their partition."""
        if self._fetching is None:
            self._fetching = self._submit(self._fetch(timeout_ms, max_records))
            self._fetching.add_done_callback(lambda _: self._wakeup.set())
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self._wakeup.clear()
            self._run_callbacks()
            if self._fetching.done():
                fetched, self._fetching = self._fetching, None
                batches = self._result(fetched)
                self._run_callbacks()  # a rebalance that came with them goes first
                if not batches[0]:
                    return {}
                return self._wait(self._current(batches))
            left = deadline - time.monotonic()
            if left <= 0:
                return {}
            self._wakeup.wait(left)

    def assignment(self) -> set[TopicPartition]:
        return set(_ours(self._on_loop(self._consumer.assignment)))

    def pause(self, *partitions: TopicPartition) -> None:
        """Those of `partitions` still assigned (the others have nothing to pause)."""
        self._on_loop(lambda: self._consumer.pause(*self._assigned(partitions)))

    def resume(self, *partitions: TopicPartition) -> None:
        self._on_loop(lambda: self._consumer.resume(*self._assigned(partitions)))

    def _assigned(self, partitions: Iterable[TopicPartition]) -> list[AsyncTopicPartition]:
        assigned = self._consumer.assignment()  # on the loop's thread
        return [p for p in map(_theirs, partitions) if p in assigned]

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        return self._wait(self._consumer.position(_theirs(tp)), timeout_ms)

    def committed(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        offset: int | None = self._wait(self._consumer.committed(_theirs(tp)), timeout_ms)
        return offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        def seek() -> None:
            self._consumer.seek(_theirs(tp), offset)
            self.moved([tp])

        self._on_loop(seek)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        async def seek() -> None:
            # Moved first: aiokafka drops what it holds of them at once, and the reset goes
            # on even if this call times out.
            self.moved(partitions)
            if not await self._consumer.seek_to_beginning(*map(_theirs, partitions)):
                raise KafkaTimeoutError("Kafka gave no first offsets (or a rebalance began)")

        self._wait(seek(), COMMIT_TIMEOUT_MS)

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self._wait(
            self._consumer.commit({_theirs(tp): meta.offset for tp, meta in offsets.items()}),
            COMMIT_TIMEOUT_MS,
        )

    def close(self, autocommit: bool = False) -> None:
        """Leave the group (never committing: the sink commits what landed) and stop."""
        if self._closed:
            return
        self._closed = True

        async def closing() -> None:
            self._closing = True  # on the loop: no callback is handed over after this

        try:
            try:
                self._wait(closing(), STOP_TIMEOUT_MS)
            except KafkaTimeoutError:
                self._closing = True  # the loop is stuck: it hands nothing over anyway
            self._run_callbacks(run=False)
            if self._fetching is not None:
                self._fetching.cancel()
            self._wait(self._consumer.stop(), STOP_TIMEOUT_MS)
        except (KafkaError, OSError) as exc:
            log.warning("could not leave the consumer group cleanly: %s", exc)
        finally:
            self._run_callbacks(run=False)
            self._stop_loop()
