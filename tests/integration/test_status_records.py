"""The speed layer's status records against real Kafka: a fold's deletes reach the
changelog, and a database too old to trust is rebuilt from it."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from fedilake.settings import KafkaSettings
from fedilake.stack.control import LocalStack
from processors.records import (
    STALE_AFTER_S,
    WRITTEN_AT_KEY,
    RecordTable,
    ensure_changelog,
)

pytestmark = pytest.mark.integration


def _state(table: RecordTable, partition: int) -> dict[bytes, bytes]:
    return dict(table.items(partition)) | dict(table.items_under(partition, b"\x00settled:"))


def _open(table: RecordTable, partition: int) -> None:
    table.install(partition, table.recover(partition))


def test_a_fold_step_lands_whole_and_replays(stack: LocalStack, tmp_path: Path) -> None:
    kafka = KafkaSettings()
    changelog = f"fedilake-test-records-{uuid.uuid4().hex[:8]}"
    ensure_changelog(kafka, changelog, partitions=1)

    async def write() -> dict[bytes, bytes]:
        table = RecordTable(tmp_path / "first", changelog, kafka)
        _open(table, 0)
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
    _open(other, 0)
    assert _state(other, 0) == written
    other.close_all()

    # So has one not written for longer than a tombstone is sure to stay in the changelog,
    # whatever it held: it is rebuilt from the whole changelog, not caught up.
    stale = RecordTable(tmp_path / "first", changelog, kafka)
    db = stale.recover(0)
    db[b"https://a.example/s/0"] = b"[0,1]"  # as if its tombstone had been cleaned away
    db[WRITTEN_AT_KEY] = str(time.time() - STALE_AFTER_S - 60).encode()
    db.close()
    _open(stale, 0)
    assert _state(stale, 0) == written
    stale.close_all()


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
        _open(table, 0)
        table.put(0, uri.encode(), b"[1,1]")
        await table.commit()
        table.set_flushed_watermark(0, watermark_ms)
        await table.stop()

    asyncio.run(own_for_a_while("a", "https://a.example/s/1", 1_000))
    asyncio.run(own_for_a_while("b", "https://a.example/s/2", 2_000))  # the next owner

    back = RecordTable(tmp_path / "a", changelog, kafka)
    _open(back, 0)
    assert back.get(0, b"https://a.example/s/2") == b"[1,1]"
    assert back.flushed_watermark(0) is None
    back.close_all()
    # The last owner's own database: nobody wrote past it, so its watermark stands.
    last = RecordTable(tmp_path / "b", changelog, kafka)
    _open(last, 0)
    assert last.flushed_watermark(0) == 2_000
    last.close_all()
