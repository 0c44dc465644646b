"""Status records in RocksDB (rocksdict), one database per partition, backed by a compacted changelog topic.

This is the table of the speed layer, written the way Kafka Streams writes a cached
state store: the changes of a batch of events go to the changelog topic as one
transaction per partition, and only once Kafka has committed them (acks=all) are they
written to RocksDB, together with the changelog offset they reach. The events of the
batch are acknowledged to Faust after that, so a committed offset never runs ahead
of the changelog. After a crash, or when a partition moves to this worker, its
database is brought up to date by reading the changelog from the stored offset.

Fencing: a partition's changelog is written by a transactional producer whose id is
the partition's own. Opening a partition starts one, before the replay, which fences
every earlier owner's: Kafka aborts what it had sent and not committed, and its next
send or commit fails. The replay reads committed records only, so a worker paused
past its session (a "zombie") cannot put older records over the new owner's.

Faust's own tables send one changelog message per key change through a per-message
buffer; measured here, that path alone caps a worker at about 3,300 events/s.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from rocksdict import Options, Rdict, WriteBatch

from fedilake.settings import KafkaSettings

from .settled import HORIZON_KEY

log = logging.getLogger(__name__)

# Keys of our own in each partition's database (status uris never start with a NUL byte):
# these three are local, never in the changelog; the settled totals are (see `settled`).
OWN_KEY_START = b"\x00"
OFFSET_KEY = b"\x00fedilake:changelog-offset"
FLUSHED_WATERMARK_KEY = b"\x00fedilake:flushed-watermark"
WRITTEN_AT_KEY = b"\x00fedilake:written-at"
# In the changelog too: the last owner to prove its fence stood (see `confirm_fence`).
OWNER_KEY = b"\x00fedilake:owner"

# A changelog created here keeps a deleted record's tombstone this long (one created by
# an earlier version has Kafka's default, a day). A database not brought up to date for
# longer than STALE_AFTER_S may have missed a tombstone the cleaner has dropped since,
# and would revive the record: it is rebuilt from the whole changelog instead.
DELETE_RETENTION_MS = 7 * 86_400_000
STALE_AFTER_S = 12 * 3600.0


REPLAY_STALL_S = 60.0


class RecordsUnavailable(RuntimeError):
    """The changelog cannot be read; the worker cannot know its records and must stop."""


def ensure_changelog(kafka: KafkaSettings, name: str, partitions: int) -> None:
    """The compacted changelog topic (only the latest record per status is kept)."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="fedilake-admin")
    try:
        if name in set(admin.list_topics()):
            return
        topic = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=1,
            topic_configs={
                "cleanup.policy": "compact",
                "min.insync.replicas": "1",
                "delete.retention.ms": str(DELETE_RETENTION_MS),
            },
        )
        try:
            admin.create_topics([topic])
            log.info("created changelog topic %s (%d partitions)", name, partitions)
        except TopicAlreadyExistsError:
            pass
    finally:
        admin.close()


class RecordTable:
    """Records of the partitions this worker owns: read through, written per batch."""

    def __init__(
        self, data_dir: Path, changelog: str, kafka: KafkaSettings, *, folding: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.changelog = changelog
        self.kafka = kafka
        self.folding = folding  # records are deleted: the changelog holds tombstones
        self._dbs: dict[int, Rdict] = {}
        self._pending: dict[int, dict[bytes, bytes]] = {}
        self._producers: dict[int, AIOKafkaProducer] = {}  # in a transaction, ready to write
        self._fences: dict[int, tuple[int, int]] = {}  # their (producer id, epoch)

    # ------------------------------------------------------------------ ownership

    def is_open(self, partition: int) -> bool:
        return partition in self._dbs

    async def open(self, partition: int) -> None:
        """Fence every earlier writer of the partition's changelog, then bring its database
        up to date from the changelog (in an executor thread)."""
        await self._fence(partition)
        try:
            db = await asyncio.get_running_loop().run_in_executor(None, self.recover, partition)
        except BaseException:
            await self._stop_producer(partition)
            raise
        self._dbs[partition] = db
        self._pending[partition] = {}

    async def _fence(self, partition: int) -> None:
        """Become the only writer of the partition's changelog: a transactional producer
        with the partition's id, which Kafka gives a new epoch when it starts, aborting an
        earlier owner's open transaction and refusing what that owner sends next."""
        if partition in self._producers:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            transactional_id=f"{self.changelog}-p{partition}",
            acks="all",
            # No compression: gzip cost a tenth of the worker's time; the topic is compacted.
            max_request_size=16 * 1024 * 1024,
            max_batch_size=1024 * 1024,
        )
        try:
            # Starting asks for the producer id, which is the fence (aiokafka retries it
            # for as long as the transaction coordinator is unavailable).
            await asyncio.wait_for(_started_in_transaction(producer), REPLAY_STALL_S)
        except TimeoutError:
            await producer.stop()
            raise RecordsUnavailable(
                f"changelog {self.changelog} partition {partition}: no producer id from Kafka's "
                f"transaction coordinator in {REPLAY_STALL_S:.0f}s; is Kafka up?"
            ) from None
        except BaseException:
            await producer.stop()
            raise
        txn = producer._txn_manager  # where aiokafka 0.14 (pinned) keeps the id and epoch
        fence = (int(txn.producer_id), int(txn.producer_epoch))
        if min(fence) < 0:
            await producer.stop()
            raise RecordsUnavailable(f"partition {partition}: no producer id from Kafka")
        self._producers[partition] = producer
        self._fences[partition] = fence

    def recover(self, partition: int) -> Rdict:
        """The partition's database, brought up to date from the changelog (blocking: `open`
        runs it in an executor thread, after the fence)."""
        path = self.data_dir / f"status-records-p{partition}"
        path.parent.mkdir(parents=True, exist_ok=True)
        db = Rdict(str(path), Options(raw_mode=True))
        try:
            stored = db.get(OFFSET_KEY)
            written = db.get(WRITTEN_AT_KEY)
            age_s = time.time() - float(written) if isinstance(written, bytes) else None
            tombstones = self.folding or db.get(HORIZON_KEY) is not None
            if stored is not None and tombstones and (age_s is None or age_s > STALE_AFTER_S):
                log.info(
                    "partition %d: local status records last written %s; rebuilding them from "
                    "the whole changelog (a folded record's tombstone may be gone from it)",
                    partition,
                    f"{age_s / 3600:.1f} h ago" if age_s is not None else "by an older version",
                )
                db.close()
                shutil.rmtree(path)
                db = Rdict(str(path), Options(raw_mode=True))
                stored = None
            start = int(stored) + 1 if stored is not None else 0
            if self._replay(db, partition, start) and stored is not None:
                # Written since by another worker (or by this one just before a crash):
                # what this database last saw written to HBase says nothing of its windows.
                db.delete(FLUSHED_WATERMARK_KEY)
            db[WRITTEN_AT_KEY] = str(time.time()).encode()  # up to date as of now
        except BaseException:
            db.close()
            raise
        return db

    def _replay(self, db: Rdict, partition: int, start: int) -> int:
        tp = TopicPartition(self.changelog, partition)
        consumer = KafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            isolation_level="read_committed",  # never a fenced owner's aborted records
        )
        replayed = 0
        started = time.monotonic()
        try:
            consumer.assign([tp])
            end = consumer.end_offsets([tp])[tp]
            first = consumer.beginning_offsets([tp])[tp]
            position = max(start, first)
            if position >= end:
                return 0
            consumer.seek(tp, position)
            progressed = time.monotonic()
            while position < end:
                if time.monotonic() - progressed > REPLAY_STALL_S:
                    raise RecordsUnavailable(
                        f"changelog {self.changelog} partition {partition}: no progress for "
                        f"{REPLAY_STALL_S:.0f}s at offset {position} of {end}; is Kafka up?"
                    )
                batch = WriteBatch(raw_mode=True)
                before = position
                # Short polls: a poll that meets only a transaction marker moves the position
                # past it but returns nothing, and would wait out its whole timeout.
                for records in consumer.poll(timeout_ms=100).values():
                    for record in records:
                        if record.value is None:
                            batch.delete(record.key)
                        else:
                            batch.put(record.key, record.value)
                        replayed += 1
                # Transaction markers and aborted records take offsets too: the position
                # moves past them, the records do not.
                position = consumer.position(tp)
                if position > before:
                    progressed = time.monotonic()
                    _mark_written(batch, position - 1)
                    db.write(batch)
        finally:
            consumer.close()
        log.info(
            "partition %d: %d status records replayed from the changelog in %.1fs",
            partition,
            replayed,
            time.monotonic() - started,
        )
        return replayed

    def fence_of(self, partition: int) -> tuple[int, int] | None:
        """This worker's fence of the partition's changelog, (producer id, epoch); None when
        it has none (not open, or fenced out). Under one producer id, the epoch rises with
        every owner."""
        return self._fences.get(partition)

    async def confirm_fence(self, partition: int) -> None:
        """Prove that our fence still stands: a transaction Kafka commits only for the
        partition's newest owner (raises otherwise)."""
        fence = self._fences.get(partition)
        if fence is None:
            raise RuntimeError(
                f"partition {partition}: no changelog fence (fenced by its next owner?)"
            )
        await self._write(partition, {OWNER_KEY: f"{fence[0]}:{fence[1]}".encode()})

    async def close(self, partition: int) -> None:
        db = self._dbs.pop(partition, None)
        self._pending.pop(partition, None)
        if db is not None:
            db[WRITTEN_AT_KEY] = str(time.time()).encode()  # everything it wrote is in it
            db.close()
        await self._stop_producer(partition)

    async def close_all(self) -> None:
        for partition in {*self._dbs, *self._producers}:
            await self.close(partition)

    async def _stop_producer(self, partition: int) -> None:
        self._fences.pop(partition, None)
        producer = self._producers.pop(partition, None)
        if producer is not None:
            await producer.stop()  # its open transaction holds nothing yet

    # ------------------------------------------------------------------ reads and writes

    def get(self, partition: int, key: bytes) -> bytes | None:
        pending = self._pending[partition].get(key)
        if pending is not None:
            return pending
        value = self._dbs[partition].get(key)
        return value if isinstance(value, bytes) else None

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self._pending[partition][key] = value

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every stored status record of the partition (what was committed)."""
        for key, value in self._dbs[partition].items():
            if isinstance(key, bytes) and isinstance(value, bytes) and key[:1] != OWN_KEY_START:
                yield key, value

    def items_under(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The stored (key, value) pairs whose key starts with `prefix`."""
        for key, value in self._dbs[partition].items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                return
            if isinstance(value, bytes):
                yield key, value

    def flushed_watermark(self, partition: int) -> int | None:
        """The watermark up to which this database's worker wrote every closed window to
        HBase (local only: a database that never flushed, or another worker's, has none)."""
        value = self._dbs[partition].get(FLUSHED_WATERMARK_KEY)
        return int(value) if isinstance(value, bytes) else None

    def set_flushed_watermark(self, partition: int, watermark_ms: int) -> None:
        db = self._dbs.get(partition)
        if db is not None:
            db[FLUSHED_WATERMARK_KEY] = str(watermark_ms).encode()

    async def commit(self) -> None:
        """Changelog first (one committed transaction per partition), then RocksDB with the
        new offset.

        A failure leaves the changes pending (and raises): they must not be lost, and the
        caller must not acknowledge the events they came from.
        """
        taken = [(p, changes) for p, changes in list(self._pending.items()) if changes]
        for partition, _ in taken:
            self._pending[partition] = {}
        results = await asyncio.gather(
            *(self._write(p, changes) for p, changes in taken), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for partition, changes in taken:
                if partition in self._pending:
                    self._pending[partition] = {**changes, **self._pending[partition]}
            raise failed[0]

    async def write_now(self, partition: int, changes: dict[bytes, bytes | None]) -> None:
        """Puts and deletes (None) that stand or fall together: one changelog transaction,
        then one RocksDB write.

        Nothing of the partition may be pending: it would reach the changelog after these.
        """
        if self._pending.get(partition):
            raise RuntimeError(f"partition {partition} has uncommitted records")
        await self._write(partition, changes)

    async def _write(self, partition: int, changes: Mapping[bytes, bytes | None]) -> None:
        producer = self._producers.get(partition)
        if producer is None:
            raise RuntimeError(
                f"partition {partition}: no changelog producer (not opened, or fenced by its "
                "next owner)"
            )
        waiting = []
        appended = []
        try:
            for batch, members in _chunks(changes, producer):
                future = await producer.send_batch(batch, self.changelog, partition=partition)
                waiting.append((future, members))
            # Every batch appended before the commit: a batch that fails fails only its own
            # future, and the commit would take the others without it.
            for future, members in waiting:
                appended.append((await future, members))
            await producer.commit_transaction()
            await producer.begin_transaction()  # ready for the next, as `fence` leaves it
        except BaseException:
            for future, _ in waiting:  # their failure is the one raised here
                if future.done() and not future.cancelled():
                    future.exception()
            await self._abort(partition, producer)
            raise
        writes = WriteBatch(raw_mode=True)
        for metadata, members in appended:
            for key, value in members.items():
                if value is None:
                    writes.delete(key)
                else:
                    writes.put(key, value)
            _mark_written(writes, metadata.offset + len(members) - 1)
        db = self._dbs.get(partition)
        if db is not None:  # revoked meanwhile: the changelog has it for the next owner
            db.write(writes)

    async def _abort(self, partition: int, producer: AIOKafkaProducer) -> None:
        """After a failed write: abort the transaction and begin the next; a producer that
        cannot (fenced: the partition is another worker's) is dropped."""
        try:
            await producer.abort_transaction()
            await producer.begin_transaction()
        except (KafkaError, AssertionError, RuntimeError) as exc:
            log.warning("partition %d: the changelog producer cannot go on: %r", partition, exc)
            if self._producers.get(partition) is producer:
                await self._stop_producer(partition)

    async def stop(self) -> None:
        await self.close_all()


async def _started_in_transaction(producer: AIOKafkaProducer) -> None:
    await producer.start()
    await producer.begin_transaction()


def _mark_written(writes: WriteBatch, changelog_offset: int) -> None:
    writes.put(OFFSET_KEY, str(changelog_offset).encode())
    writes.put(WRITTEN_AT_KEY, str(time.time()).encode())


def _chunks(
    changes: Mapping[bytes, bytes | None], producer: AIOKafkaProducer
) -> Iterator[tuple[Any, dict[bytes, bytes | None]]]:
    """The changes as producer batches (a batch holds up to `max_batch_size` bytes)."""
    batch = producer.create_batch()
    members: dict[bytes, bytes | None] = {}
    for key, value in changes.items():
        if batch.append(key=key, value=value, timestamp=None) is None:
            yield batch, members
            batch = producer.create_batch()
            members = {}
            if batch.append(key=key, value=value, timestamp=None) is None:
                size = len(value) if value is not None else 0
                raise ValueError(f"a status record of {size} bytes exceeds the batch size")
        members[key] = value
    if members:
        yield batch, members
