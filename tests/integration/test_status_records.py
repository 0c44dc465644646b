"""The speed layer's status records against real Kafka: a fold's deletes reach the
changelog, and a database too old to trust is rebuilt from it."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from aiokafka.errors import ProducerFenced

from fedilake.settings import KafkaSettings
from fedilake.stack.control import LocalStack
from processors.records import (
    OWNER_KEY,
    STALE_AFTER_S,
    WRITTEN_AT_KEY,
    RecordTable,
    ensure_changelog,
)

pytestmark = pytest.mark.integration


def _state(table: RecordTable, partition: int) -> dict[bytes, bytes]:
    return dict(table.items(partition)) | dict(table.items_under(partition, b"\x00settled:"))


def _opened(table: RecordTable, partition: int) -> dict[bytes, bytes]:
    """What the partition's database holds once opened (then closed again)."""

    async def open_and_read() -> dict[bytes, bytes]:
        await table.open(partition)
        try:
            return _state(table, partition)
        finally:
            await table.close_all()

    return asyncio.run(open_and_read())


def test_a_fold_step_lands_whole_and_replays(stack: LocalStack, tmp_path: Path) -> None:
    kafka = KafkaSettings()
    changelog = f"fedilake-test-records-{uuid.uuid4().hex[:8]}"
    ensure_changelog(kafka, changelog, partitions=1)

    async def write() -> dict[bytes, bytes]:
        table = RecordTable(tmp_path / "first", changelog, kafka)
        await table.open(0)
        for n in range(5):
            table.put(0, f"https://a.example/s/{n}".encode(), f"[{n},1]".encode())
        await table.commit()
        # A fold step: two records out, the totals that take them in.
        await table.write_now(
            0,
            {
                b"\x00settled:horizon": b"2",
                b"\x00settled:total:hashtag\x00aall\x00rust": b"2",
                b"https://a.example/s/0": None,
                b"https://a.example/s/1": None,
            },
        )
        state = _state(table, 0)
        await table.stop()
        return state

    written = asyncio.run(write())
    assert sorted(k for k in written if not k.startswith(b"\x00")) == [
        f"https://a.example/s/{n}".encode() for n in (2, 3, 4)
    ]
    assert written[b"\x00settled:total:hashtag\x00aall\x00rust"] == b"2"

    # Another worker's empty database, caught up from the changelog, has the same state.
    other = RecordTable(tmp_path / "second", changelog, kafka)
    assert _opened(other, 0) == written

    # So has one not written for longer than a tombstone is sure to stay in the changelog,
    # whatever it held: it is rebuilt from the whole changelog, not caught up.
    stale = RecordTable(tmp_path / "first", changelog, kafka)
    db = stale.recover(0)
    db[b"https://a.example/s/0"] = b"[0,1]"  # as if its tombstone had been cleaned away
    db[WRITTEN_AT_KEY] = str(time.time() - STALE_AFTER_S - 60).encode()
    db.close()
    assert _opened(stale, 0) == written


def test_a_database_another_worker_wrote_past_forgets_its_written_watermark(
    stack: LocalStack, tmp_path: Path
) -> None:
    """What a database's worker last wrote to HBase says nothing of windows another owner
    changed since: its rebuild must write them again."""
    kafka = KafkaSettings()
    changelog = f"fedilake-test-records-{uuid.uuid4().hex[:8]}"
    ensure_changelog(kafka, changelog, partitions=1)

    async def own_for_a_while(directory: str, uri: str, watermark_ms: int) -> None:
        table = RecordTable(tmp_path / directory, changelog, kafka)
        await table.open(0)
        table.put(0, uri.encode(), b"[1,1]")
        await table.commit()
        table.set_flushed_watermark(0, watermark_ms)
        await table.stop()

    asyncio.run(own_for_a_while("a", "https://a.example/s/1", 1_000))
    asyncio.run(own_for_a_while("b", "https://a.example/s/2", 2_000))  # the next owner

    async def watermark_after_opening(directory: str) -> int | None:
        table = RecordTable(tmp_path / directory, changelog, kafka)
        await table.open(0)
        try:
            if directory == "a":
                assert table.get(0, b"https://a.example/s/2") == b"[1,1]"
            return table.flushed_watermark(0)
        finally:
            await table.close_all()

    assert asyncio.run(watermark_after_opening("a")) is None
    # The last owner's own database: nobody wrote past it, so its watermark stands.
    assert asyncio.run(watermark_after_opening("b")) == 2_000


def test_a_paused_owner_cannot_write_the_changelog_once_the_partition_is_reopened(
    stack: LocalStack, tmp_path: Path
) -> None:
    """A worker sends a batch of records and is paused before committing it; the next owner
    opens the partition (fencing it) and writes newer records. The paused worker's batch
    never becomes part of the changelog, its commit fails, and a later replay has the next
    owner's records only."""
    kafka = KafkaSettings()
    changelog = f"fedilake-test-records-{uuid.uuid4().hex[:8]}"
    ensure_changelog(kafka, changelog, partitions=1)
    uri = b"https://a.example/s/1"

    async def race() -> None:
        paused = RecordTable(tmp_path / "paused", changelog, kafka)
        await paused.open(0)
        paused_fence = paused.fence_of(0)
        paused.put(0, uri, b"[1,1]")
        await paused.commit()
        # The pause comes between sending the records and committing them.
        producer, resume, sent = paused._producers[0], asyncio.Event(), asyncio.Event()
        commit_transaction = producer.commit_transaction

        async def paused_commit() -> None:
            sent.set()
            await resume.wait()
            await commit_transaction()

        producer.commit_transaction = paused_commit  # type: ignore[method-assign]
        paused.put(0, uri, b"[1,2]")
        stalled = asyncio.ensure_future(paused.commit())
        await sent.wait()

        overtaken = RecordTable(tmp_path / "overtaken", changelog, kafka)
        await overtaken.open(0)  # a fence of its own, older than the next one
        taker = RecordTable(tmp_path / "taker", changelog, kafka)
        await taker.open(0)  # the fence: the paused worker's transaction is aborted
        resume.set()
        with pytest.raises(ProducerFenced):  # Kafka tells a fenced owner, producer and all
            await overtaken.confirm_fence(0)
        await overtaken.close_all()
        # The order Kafka fenced them in, which orders their HBase leases too.
        taker_fence = taker.fence_of(0)
        assert paused_fence is not None and taker_fence is not None
        assert taker_fence[0] == paused_fence[0] and taker_fence[1] > paused_fence[1]
        await taker.confirm_fence(0)  # the newest owner's fence stands
        assert taker.get(0, OWNER_KEY) is not None and OWNER_KEY not in dict(taker.items(0))
        assert taker.get(0, uri) == b"[1,1]"
        taker.put(0, uri, b"[1,3]")
        await taker.commit()

        with pytest.raises(ProducerFenced):
            await stalled
        paused.put(0, uri, b"[1,4]")  # and anything after
        with pytest.raises(RuntimeError, match="fenced by its next owner"):
            await paused.commit()
        assert paused.fence_of(0) is None
        with pytest.raises(RuntimeError, match="no changelog fence"):
            await paused.confirm_fence(0)
        await paused.close_all()
        await taker.close_all()

    asyncio.run(race())
    assert _opened(RecordTable(tmp_path / "later", changelog, kafka), 0)[uri] == b"[1,3]"
