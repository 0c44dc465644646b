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
    script: ClassVar[list[Step]] = []  # the next instance's steps

    def __init__(self, **config: Any) -> None:
        self.assigned: set[AsyncTopicPartition] = set()
        self.paused: set[AsyncTopicPartition] = set()
        self.listener: Any = None
        self.stopped = False

    async def start(self) -> None:
        pass

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    def assignment(self) -> set[AsyncTopicPartition]:
        return set(self.assigned)

    def pause(self, *partitions: AsyncTopicPartition) -> None:
        assert all(isinstance(p, AsyncTopicPartition) for p in partitions)
        self.paused.update(partitions)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        if not self.script:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        return await self.script.pop(0)(self)

    async def rebalance(self, assigned: set[AsyncTopicPartition]) -> None:
        await self.listener.on_partitions_revoked(set(self.assigned))
        self.assigned = assigned
        await self.listener.on_partitions_assigned(set(assigned))

    async def stop(self) -> None:
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


def test_a_rebalance_runs_on_the_polling_thread_before_its_records(consumer: Any) -> None:
    async def rebalance_then_records(fake: ScriptedAiokafka) -> dict[Any, list[Any]]:
        await fake.rebalance({TP0})
        return {TP0: ["r0"], TP1: ["r1"]}  # TP1: fetched before it was revoked

    c = consumer(rebalance_then_records)
    listener = Recorder(c)
    c.subscribe(["t"], listener)
    assert listener.calls == []  # nothing runs beside the caller's own code
    records = c.poll(timeout_ms=2000, max_records=10)
    me = threading.current_thread().name
    assert listener.calls == [
        ("revoked", [], me),
        ("assigned", [TopicPartition("t", 0)], me),
    ]
    assert records == {TopicPartition("t", 0): ["r0"]}  # only partitions still assigned
    assert c._consumer.paused == {TP0}


def test_a_poll_returns_at_its_timeout_and_the_next_gets_the_fetch(consumer: Any) -> None:
    async def slow(fake: ScriptedAiokafka) -> dict[Any, list[Any]]:
        fake.assigned = {TP0}
        await asyncio.sleep(0.3)
        return {TP0: ["late"]}

    c = consumer(slow)
    c.subscribe(["t"], Recorder())
    started = time.monotonic()
    assert c.poll(timeout_ms=50, max_records=10) == {}
    assert time.monotonic() - started < 0.25
    assert c.poll(timeout_ms=2000, max_records=10) == {TopicPartition("t", 0): ["late"]}


def test_close_releases_a_rebalance_nobody_polls_for(consumer: Any) -> None:
    async def rebalance(fake: ScriptedAiokafka) -> dict[Any, list[Any]]:
        await fake.rebalance({TP1})
        return {}

    c = consumer(rebalance)
    listener = Recorder()
    c.subscribe(["t"], listener)
    assert c.poll(timeout_ms=0, max_records=10) == {}  # the fetch starts, and waits
    time.sleep(0.1)
    started = time.monotonic()
    c.close()
    assert time.monotonic() - started < 5
    assert listener.calls == []  # leaving: nothing is handed over after the last flush
    assert c._consumer.stopped
