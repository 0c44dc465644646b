"""GroupConsumer: aiokafka behind blocking calls, rebalance callbacks on the polling thread.

aiokafka is replaced by a scripted fake: each `getmany` runs the next step, which may
rebalance (awaiting the listener as aiokafka's coordinator does) and return records."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest
from aiokafka.structs import TopicPartition as AsyncTopicPartition
from kafka import TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener

import sinks.group_consumer as group_consumer
from sinks.group_consumer import GroupConsumer

TP0, TP1 = AsyncTopicPartition("t", 0), AsyncTopicPartition("t", 1)
Step = Callable[["ScriptedAiokafka"], Awaitable[dict[Any, list[Any]]]]


class ScriptedAiokafka:
    """aiokafka as the adapter sees it: during a rebalance the old assignment stands
    until the revoke callback has run; a fetch returns what was drained before."""

    script: ClassVar[list[Step]] = []  # the next instance's steps, one per getmany

    def __init__(self, **config: Any) -> None:
        self.assigned: set[AsyncTopicPartition] = {TP0, TP1}
        self.paused: set[AsyncTopicPartition] = set()
        self.seeks: list[tuple[AsyncTopicPartition, int]] = []
        self.listener: Any = None
        self.stopped = False
        self.release = asyncio.Event()  # lets a held fetch go on
        self.coordination: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pass

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    def assignment(self) -> set[AsyncTopicPartition]:
        return set(self.assigned)

    def pause(self, *partitions: AsyncTopicPartition) -> None:
        assert all(isinstance(p, AsyncTopicPartition) for p in partitions)
        self.paused.update(partitions)

    def seek(self, tp: AsyncTopicPartition, offset: int) -> None:
        assert isinstance(tp, AsyncTopicPartition)
        self.seeks.append((tp, offset))

    async def seek_to_beginning(self, *partitions: AsyncTopicPartition) -> bool:
        self.seeks.extend((tp, 0) for tp in partitions)
        return True

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        if not self.script:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        return await self.script.pop(0)(self)

    async def rebalance(self, assigned: set[AsyncTopicPartition]) -> None:
        await self.listener.on_partitions_revoked(set(self.assigned))
        self.assigned = assigned
        await self.listener.on_partitions_assigned(set(assigned))

    def start_rebalance(self, assigned: set[AsyncTopicPartition]) -> None:
        """As aiokafka's coordinator task does it, beside the fetches."""
        self.coordination = asyncio.ensure_future(self.rebalance(assigned))

    async def stop(self) -> None:
        if self.coordination is not None:
            await self.coordination  # aiokafka's stop() waits for its coordination task
        self.stopped = True


class Recorder(ConsumerRebalanceListener):
    def __init__(self, consumer: GroupConsumer | None = None) -> None:
        self.consumer = consumer
        self.calls: list[tuple[str, list[TopicPartition], str]] = []

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.calls.append(("revoked", sorted(revoked), threading.current_thread().name))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.calls.append(("assigned", sorted(assigned), threading.current_thread().name))
        if self.consumer is not None:
            self.consumer.pause(*assigned)  # as the sink does, from the callback


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(group_consumer, "AIOKafkaConsumer", ScriptedAiokafka)
    made: list[GroupConsumer] = []

    def make(*script: Step) -> GroupConsumer:
        ScriptedAiokafka.script = list(script)
        made.append(GroupConsumer(group_id="g"))
        return made[-1]

    yield make
    for c in made:
        c.close()


def fake(c: GroupConsumer) -> ScriptedAiokafka:
    return c._consumer  # type: ignore[return-value]


def until(what: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def release(c: GroupConsumer) -> None:
    """Let the held fetch return, and wait until it has."""
    c._loop.call_soon_threadsafe(fake(c).release.set)
    until(lambda: c._fetching is not None and c._fetching.done())


async def held(f: ScriptedAiokafka) -> None:
    await f.release.wait()
    f.release.clear()


def test_callbacks_run_on_the_polling_thread_before_the_records(consumer: Any) -> None:
    async def rebalance_then_records(f: ScriptedAiokafka) -> dict[Any, list[Any]]:
        await f.rebalance({TP0})  # aiokafka's fetch waits out a rebalance
        return {TP0: ["r0"]}

    c = consumer(rebalance_then_records)
    listener = Recorder(c)
    c.subscribe(["t"], listener)
    assert listener.calls == []  # nothing runs beside the caller's own code
    records = c.poll(timeout_ms=2000, max_records=10)
    me = threading.current_thread().name
    assert listener.calls == [
        ("revoked", [TopicPartition("t", 0), TopicPartition("t", 1)], me),
        ("assigned", [TopicPartition("t", 0)], me),
    ]
    assert records == {TopicPartition("t", 0): ["r0"]}
    assert fake(c).paused == {TP0}  # the callback's pause reached aiokafka


def test_records_fetched_before_a_revoke_are_not_returned(consumer: Any) -> None:
    async def drained_then_rebalanced(f: ScriptedAiokafka) -> dict[Any, list[Any]]:
        await held(f)
        # The group rebalances after this fetch drained them (aiokafka keeps the old
        # assignment until the revoke callback has run).
        asyncio.get_running_loop().call_soon(f.start_rebalance, {TP0})
        return {TP0: ["r0"], TP1: ["r1"]}

    c = consumer(drained_then_rebalanced)
    listener = Recorder()
    c.subscribe(["t"], listener)
    assert c.poll(timeout_ms=0, max_records=10) == {}  # the fetch is held
    release(c)
    until(c.rebalance_pending)
    # TP1 is another member's now, and TP0 is read again from wherever its owner
    # positions it: neither batch is for the caller.
    assert c.poll(timeout_ms=0, max_records=10) == {}
    assert listener.calls[0][0] == "revoked"
    # The assignment follows, in this poll or a next one.
    until(lambda: c.poll(timeout_ms=0, max_records=10) == {} and len(listener.calls) == 2)
    assert [call[:2] for call in listener.calls] == [
        ("revoked", [TopicPartition("t", 0), TopicPartition("t", 1)]),
        ("assigned", [TopicPartition("t", 0)]),
    ]
    assert not c.rebalance_pending()


def test_records_fetched_before_a_seek_are_not_returned(consumer: Any) -> None:
    async def old(f: ScriptedAiokafka) -> dict[Any, list[Any]]:
        await held(f)
        return {TP0: ["from 0"], TP1: ["t1"]}

    async def new(f: ScriptedAiokafka) -> dict[Any, list[Any]]:
        return {TP0: ["from 5"]}

    c = consumer(old, new)
    c.subscribe(["t"], Recorder())
    assert c.poll(timeout_ms=0, max_records=10) == {}
    release(c)
    c.seek(TopicPartition("t", 0), 5)
    assert fake(c).seeks == [(TP0, 5)]
    assert c.poll(timeout_ms=0, max_records=10) == {TopicPartition("t", 1): ["t1"]}
    assert c.poll(timeout_ms=2000, max_records=10) == {TopicPartition("t", 0): ["from 5"]}


def test_records_fetched_before_a_seek_to_the_beginning_are_not_returned(
    consumer: Any,
) -> None:
    async def old(f: ScriptedAiokafka) -> dict[Any, list[Any]]:
        await held(f)
        return {TP0: ["from 7"]}

    c = consumer(old)
    c.subscribe(["t"], Recorder())
    assert c.poll(timeout_ms=0, max_records=10) == {}
    release(c)
    c.seek_to_beginning(TopicPartition("t", 0))
    assert fake(c).seeks == [(TP0, 0)]
    assert c.poll(timeout_ms=0, max_records=10) == {}


def test_a_poll_returns_at_its_timeout_and_the_next_gets_the_fetch(consumer: Any) -> None:
    async def slow(f: ScriptedAiokafka) -> dict[Any, list[Any]]:
        await asyncio.sleep(2)
        return {TP0: ["late"]}

    c = consumer(slow)
    c.subscribe(["t"], Recorder())
    started = time.monotonic()
    assert c.poll(timeout_ms=50, max_records=10) == {}
    assert time.monotonic() - started < 1.5
    assert c.poll(timeout_ms=5000, max_records=10) == {TopicPartition("t", 0): ["late"]}


def test_close_releases_a_rebalance_nobody_polls_for(consumer: Any) -> None:
    async def rebalance(f: ScriptedAiokafka) -> dict[Any, list[Any]]:
        await held(f)  # until the poll below has returned: it must not run the revoke
        f.start_rebalance({TP1})
        await held(f)  # aiokafka's fetch waits out the rebalance
        return {}

    c = consumer(rebalance)
    listener = Recorder()
    c.subscribe(["t"], listener)
    assert c.poll(timeout_ms=0, max_records=10) == {}
    c._loop.call_soon_threadsafe(fake(c).release.set)  # the fetch starts a rebalance
    until(c.rebalance_pending)
    started = time.monotonic()
    c.close()
    assert time.monotonic() - started < 5
    assert listener.calls == []  # leaving: nothing is handed over after the last flush
    assert fake(c).stopped
