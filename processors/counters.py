"""The Faust worker of the speed layer: every metric, per hour, day and all time, flushed to HBase as absolute values.

One agent reads `fedilake.events` in batches. For each status, edit, delete or refresh
it updates the status's `StatusRecord` (a `RecordTable`: RocksDB backed by a changelog
topic) and applies the record's change to the partition's `LiveCounters`. A timer
writes the changed counters to HBase when the `FlushPolicy` says (at most
`flush_interval_s` after the oldest change was counted, sooner when the write budget
allows): one cell
per changed counter (per changed account and bucket for the account metrics), whatever
the number of events that changed it.

Exactness: a batch's record changes are in the changelog (acks=all) before its events
are acknowledged to Faust, so a committed offset never runs ahead of the records;
events replayed after a crash change nothing (`statuses.apply` is idempotent). The
counters are not stored at all: whenever a partition is (re)opened, after a restart
or a rebalance, they are rebuilt from its records and written whole, which also
rewrites any flush a crash lost. With a status retention set, statuses that old are
folded into the partition's settled totals (`settled`), which the rebuild starts from.

Fencing: each flush writes a partition's cells at a timestamp claimed first in the
partition's `LiveLease`, and a worker taking a partition over starts above every
timestamp claimed before it. A worker paused past its session (a "zombie") whose
flush lands after the next owner's writes is therefore shadowed by them; its next
claim fails, and it stops as a crash does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NoReturn

import faust
import happybase
from aiokafka.errors import KafkaError, ProducerFenced

from fedilake.contracts import (
    Envelope,
    EnvelopeError,
    EventKind,
    LiveLease,
    MetricRow,
    RowKeys,
    Tables,
    Topics,
)
from fedilake.settings import HBaseSettings, KafkaSettings, ProcessorSettings
from sinks.hbase import (
    LeaseHeldElsewhere,
    LiveLeases,
    MetricStore,
    PartitionTakenOver,
    connect,
    init_tables,
)

from .live import Flush, FlushPolicy, LiveCounters
from .records import RecordTable, ensure_changelog
from .settled import SETTLED_PREFIX, Settled, fold_horizon
from .statuses import StatusRecord, apply

log = logging.getLogger(__name__)

COUNTED_KINDS = frozenset({EventKind.STATUS, EventKind.EDIT, EventKind.DELETE, EventKind.REFRESH})

FOLD_EVERY_MS = 3_600_000  # fold a partition's old statuses once its horizon moved an hour
FOLD_STEP_BYTES = 512 * 1024  # what one fold step (one changelog transaction) writes at most
FOLD_STEPS_PER_CALL = 8  # then the locks are let go: for a batch, a rebalance, a shutdown


def changelog_topic(settings: ProcessorSettings) -> str:
    return f"{settings.app_id}-status-records-changelog"


@dataclass
class Written:
    """What one flush wrote to HBase."""

    cells: int = 0
    partitions: set[int] = field(default_factory=set)
    unproven: dict[int, bytes] = field(default_factory=dict)  # the leases they wait for


@dataclass
class WorkerStats:
    events: int = 0
    changed: int = 0
    skipped: int = 0
    cells: int = 0
    flushes: int = 0
    rebuilt_records: int = 0
    folded: int = 0
    left_to_batch: int = 0  # changes to statuses already folded
    started: float = field(default_factory=time.monotonic)


class CounterWorker:
    """The state and the I/O of one worker: records in, counters out to HBase."""

    def __init__(
        self,
        app: faust.App,
        settings: ProcessorSettings,
        kafka: KafkaSettings,
        hbase: HBaseSettings,
    ) -> None:
        self.app = app
        self.settings = settings
        self.hbase = hbase
        self.source = replace(Topics.EVENTS, name=settings.source_topic)
        self.records = RecordTable(
            settings.data_dir / settings.app_id,
            changelog_topic(settings),
            kafka,
            folding=settings.status_retention_s is not None,
        )
        self.live = LiveCounters(settings.allowed_lateness_s)
        self.settled: dict[int, Settled] = {}
        self._folding: dict[int, list[bytes]] = {}  # keys a fold under way has still to fold
        retention = settings.status_retention_s
        self.retention_ms = int(retention * 1000) if retention is not None else None
        self.policy = FlushPolicy(
            min(settings.flush_min_interval_s, settings.flush_interval_s),
            settings.flush_interval_s,
            settings.write_budget_cells_per_s,
        )
        self._last_flush = time.monotonic()
        self._changed_since: float | None = None  # when the oldest change not written was counted
        self.stats = WorkerStats()
        self._flush_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._counting = asyncio.Lock()  # a batch being counted, or a fold
        self._connection: happybase.Connection | None = None
        self._store: MetricStore | None = None
        self._lease_table: LiveLeases | None = None
        self._held: dict[int, LiveLease] = {}  # the lease of each partition this worker writes
        self._proven: dict[int, bytes] = {}  # a lease read before our fence was seen to stand

    # ------------------------------------------------------------------ events

    async def process_batch(self, events: Sequence[Any]) -> None:
        """Count a batch; its events are acknowledged when this returns, so anything that
        goes wrong here must stop the worker before they are (see `count_events`)."""
        async with self._counting:
            await self.open_partitions({event.message.partition for event in events})
            counted = time.monotonic()
            for event in events:
                self.process(event.message.partition, event.value)
            await self.records.commit()
            self._note_changes(counted)
        await self.fold_old_statuses()

    def process(self, partition: int, raw: bytes) -> None:
        self.stats.events += 1
        key = b""
        try:
            envelope = Envelope.from_bytes(raw)
            if envelope.kind not in COUNTED_KINDS or not envelope.uri:
                return  # a delete no stored copy can match has nothing to take out
            key = envelope.uri.encode()
            stored = self.records.get(partition, key)
            old = StatusRecord.from_bytes(stored) if stored is not None else None
            new = apply(old, envelope)
        except EnvelopeError as exc:
            self.stats.skipped += 1
            log.warning("skipping a message that is not an envelope: %s", exc)
            return
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # A payload our definitions cannot read: skipped the same way on every replay,
            # so the counters stay a function of the events.
            self.stats.skipped += 1
            log.warning("skipping an event the metrics cannot read: %r", exc)
            return
        if new is None:
            return
        if old is None and self.settled[partition].folds(new):
            self.stats.left_to_batch += 1  # counted in the settled totals, or too old to count
            return
        # Outside the guard: a failure here is ours, not the event's, and must stop the
        # worker (see `count_events`) rather than leave the record and counters apart.
        self.records.put(partition, key, new.to_bytes())
        self.live.apply(partition, old, new)
        self.stats.changed += 1

    # ------------------------------------------------------------------ ownership

    def active_partitions(self) -> set[int]:
        return {
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.source.name
        }

    async def open_partitions(self, partitions: Iterable[int]) -> None:
        """Bring the records of `partitions` up to date and rebuild their counters."""
        async with self._open_lock:
            missing = sorted(p for p in partitions if not self.records.is_open(p))
            if not missing:
                return
            for partition in missing:
                started = time.monotonic()
                await self.records.open(partition)
                try:
                    settled = Settled.from_items(
                        self.records.items_under(partition, SETTLED_PREFIX)
                    )
                    records = [StatusRecord.from_bytes(v) for _, v in self.records.items(partition)]
                    self.stats.rebuilt_records += self.live.rebuild(
                        partition, records, self.records.flushed_watermark(partition), settled
                    )
                    self.settled[partition] = settled
                    self._note_changes()  # a rebuild's rows are written whole
                except BaseException:
                    await self.records.close(partition)  # opened only with its counters
                    self.live.drop(partition)
                    raise
                log.info(
                    "rebuilt the counters of partition %d from %d status records in %.1fs",
                    partition,
                    len(records),
                    time.monotonic() - started,
                )

    async def on_revoked(self, revoked: Iterable[Any]) -> None:
        lost = {tp.partition for tp in revoked if tp.topic == self.source.name}
        # Written before the partitions go, so the next owner's rebuild is never older
        # than what we write; then forgotten, with no flush in between.
        async with self._flush_lock, self._open_lock:
            await self._flush(prove=False)  # going anyway; and a proof takes `_counting`
            for partition in lost:
                self.live.drop(partition)
                self.settled.pop(partition, None)
                self._folding.pop(partition, None)
                self._held.pop(partition, None)  # if it comes back: a new epoch
                self._proven.pop(partition, None)
                await self.records.close(partition)

    async def fold_old_statuses(self) -> None:
        """Fold the statuses past the retention into their partition's settled totals.

        Each step, the deleted records with the totals, horizon and watermark that take
        them in, is one changelog transaction, so a crash leaves every status either in a record
        or in the totals, never both or neither. Runs between batches (nothing is pending),
        after each one and from the flush timer, so a quiet topic folds too. A call writes
        about `FOLD_STEPS_PER_CALL` steps at most (a scan of one partition's records, then
        its steps) and starts none while the group rebalances: the locks it holds keep
        revocations, batches and shutdown waiting. A failure here must stop the worker, as
        in `process_batch`: the totals in memory may be ahead.
        """
        if self.retention_ms is None or self.app.rebalancing:
            return
        if not self._fold_due(self.retention_ms):
            return
        async with self._counting, self._open_lock:
            steps = 0
            for partition in self._fold_due(self.retention_ms):  # still due: asked again
                if self.app.rebalancing or steps >= FOLD_STEPS_PER_CALL:
                    return
                steps += await self._fold(partition, self.retention_ms, FOLD_STEPS_PER_CALL - steps)

    def _fold_due(self, retention_ms: int) -> list[int]:
        """Open partitions with a fold under way, or whose fold horizon moved on enough."""
        due = []
        for partition, settled in self.settled.items():
            if not self.records.is_open(partition):
                continue
            flushed = self.records.flushed_watermark(partition)
            horizon = fold_horizon(flushed, retention_ms)
            if partition in self._folding or horizon >= settled.horizon_ms + FOLD_EVERY_MS:
                due.append(partition)
        return due

    async def _fold(self, partition: int, retention_ms: int, max_steps: int) -> int:
        """Fold up to `max_steps` steps of the partition's due statuses; the steps written."""
        started = time.monotonic()
        settled = self.settled[partition]
        keys = self._folding.pop(partition, None)
        if keys is None:  # a new horizon
            flushed = self.records.flushed_watermark(partition)
            horizon = fold_horizon(flushed, retention_ms)
            loop = asyncio.get_running_loop()
            keys = await loop.run_in_executor(None, self._dated_before, partition, horizon)
            # Stored with the first step, before any record is deleted.
            settled.horizon_ms, settled.written_watermark_ms = horizon, flushed or 0
        rows: set[MetricRow] = set()
        handles: set[str] = set()
        deleted: dict[bytes, bytes | None] = {}
        size = steps = folded = 0
        for n, key in enumerate(keys):
            raw = self.records.get(partition, key)
            if raw is None:
                continue
            more_rows, more_handles = settled.fold(StatusRecord.from_bytes(raw))
            # Checked after a record is in: one record adds a few KB at most, and a step
            # may reach twice this before it no longer fits in a changelog batch.
            size += len(key) + 24
            size += sum(len(r.key()) + 48 for r in more_rows - rows)
            size += sum(len(h) + 64 for h in more_handles - handles)
            rows |= more_rows
            handles |= more_handles
            deleted[key] = None
            folded += 1
            if size >= FOLD_STEP_BYTES:
                await self.records.write_now(
                    partition, {**settled.changes(rows, handles), **deleted}
                )
                rows, handles, deleted, size = set(), set(), {}, 0
                steps += 1
                if (steps >= max_steps or self.app.rebalancing) and n + 1 < len(keys):
                    self._folding[partition] = keys[n + 1 :]  # the next call goes on
                    break
        else:
            await self.records.write_now(partition, {**settled.changes(rows, handles), **deleted})
            steps += 1
        self.stats.folded += folded
        log.log(
            logging.INFO if folded else logging.DEBUG,
            "partition %d: folded %d statuses dated before %s into the settled totals in %.1fs%s",
            partition,
            folded,
            datetime.fromtimestamp(settled.horizon_ms / 1000, UTC).isoformat(timespec="seconds"),
            time.monotonic() - started,
            f"; {len(self._folding[partition])} to go" if partition in self._folding else "",
        )
        return steps

    def _dated_before(self, partition: int, horizon_ms: int) -> list[bytes]:
        """Keys of the records of statuses dated before `horizon_ms` (a thread's work)."""
        return [
            key
            for key, raw in self.records.items(partition)
            if StatusRecord.event_ms_of(raw) < horizon_ms
        ]

    async def stop(self) -> None:
        """Write what is pending and close the records, once no batch or fold uses them."""
        await self.flush()
        self.report()
        async with self._counting, self._open_lock:
            await self.records.stop()
            self.settled.clear()  # nothing is open any more: no fold is due
            self._folding.clear()

    # ------------------------------------------------------------------ HBase

    def _metric_store(self) -> tuple[MetricStore, LiveLeases]:
        if self._store is None or self._lease_table is None:
            self._connection = connect(self.hbase)
            init_tables(self._connection, [Tables.LEASES])  # for a schema of an earlier version
            self._store = MetricStore(self._connection, RowKeys(self.hbase.salt_buckets))
            self._lease_table = LiveLeases(self._connection)
        return self._store, self._lease_table

    def _write(self, flushes: dict[int, Flush]) -> Written:
        """Each partition's cells at a timestamp claimed in its lease (blocking: run in an
        executor thread, under the flush lock). Cells counted include the leases'."""
        store, leases = self._metric_store()
        written = Written()
        for partition, flush in flushes.items():
            now_ms = time.time_ns() // 1_000_000
            lease = self._held.get(partition)
            if lease is None:
                fence = self.records.fence_of(partition)
                if fence is None:  # closed meanwhile: its next owner writes it
                    continue
                proven = self._proven.get(partition)
                try:
                    lease = leases.take(partition, fence, now_ms, proven=proven)
                except LeaseHeldElsewhere as exc:
                    written.unproven[partition] = exc.held
                    continue
                self._held[partition] = lease
                self._proven.pop(partition, None)
                log.info(
                    "partition %d: writing its live column (producer %d, epoch %d)",
                    partition,
                    *fence,
                )
            lease = self._held[partition] = leases.claim(partition, lease, now_ms)
            written.cells += 1 + store.write_live(
                partition, flush.counts, flush.accounts, timestamp=lease.claimed_ms
            )
            written.partitions.add(partition)
        return written

    async def _prove_fence(self, partition: int, held: bytes) -> None:
        """Ask Kafka whether this worker's changelog fence of the partition still stands;
        if it does, the lease `held` (read before) is not newer, and may be taken over. A
        worker fenced out stops, as a crash does."""
        async with self._counting:  # one changelog transaction of a partition at a time
            if self.records.fence_of(partition) is None:
                return  # closed meanwhile (revoked, or shutting down)
            try:
                await self.records.confirm_fence(partition)
            except ProducerFenced as exc:
                _stop_now("proving the changelog fence", exc)
            except KafkaError as exc:
                log.warning("partition %d: could not prove the changelog fence: %r", partition, exc)
                return  # asked again at the next flush
            except Exception as exc:  # noqa: BLE001 - the transaction is in a state unknown
                _stop_now("proving the changelog fence", exc)
        self._proven[partition] = held
        log.info(
            "partition %d: the live lease (%s) names another fence; ours stands in Kafka, "
            "so the lease is ours (a newer owner's fence would have refused ours)",
            partition,
            held.decode(errors="replace"),
        )

    def _note_changes(self, counted: float | None = None) -> None:
        """Time pending changes from `counted` (default: now), unless older ones are."""
        if self._changed_since is None and self.live.pending():
            self._changed_since = counted if counted is not None else time.monotonic()

    def _given_back(self, changed: float | None) -> None:
        """Changes a flush took are pending again: the oldest of them counts."""
        if changed is not None and (self._changed_since is None or changed < self._changed_since):
            self._changed_since = changed
        self._note_changes()

    async def flush_if_due(self) -> None:
        self._note_changes()  # whatever left changes pending, they are timed from now at worst
        now = time.monotonic()
        changed = self._changed_since
        oldest = now - changed if changed is not None else None
        if self.policy.due(
            now - self._last_flush, oldest, self.live.pending(), self.live.pending_cells
        ):
            await self.flush()

    async def flush(self) -> None:
        async with self._flush_lock:
            await self._flush()

    async def _flush(self, prove: bool = True) -> None:
        """`flush`, under the flush lock; `prove`: ask Kafka about the fences leases doubt."""
        self._last_flush = time.monotonic()
        changed, self._changed_since = self._changed_since, None
        flushes = {p: self.live.take(p) for p in list(self.live.partitions)}
        flushes = {p: f for p, f in flushes.items() if len(f)}
        if not flushes:
            return
        loop = asyncio.get_running_loop()
        try:
            written = await loop.run_in_executor(None, self._write, flushes)
        except PartitionTakenOver as exc:
            # This worker was paused or cut off past its session: the partition is
            # another's, and so may the others be. Stop as a crash does; restarted, it
            # joins the group again and rebuilds what it is given.
            _stop_now("writing the live counters", exc)
        except Exception as exc:  # noqa: BLE001 - raising here would stop the whole worker
            for partition, flush in flushes.items():
                self.live.give_back(partition, flush)  # absolute values: safe to write again
            self._given_back(changed)
            self._close()
            log.warning("HBase flush failed, retrying next tick: %s", exc)
            return
        self.stats.cells += written.cells
        self.stats.flushes += 1
        for partition, flush in flushes.items():
            if partition in written.partitions:
                self.live.forget_closed(partition, flush)
                self.records.set_flushed_watermark(partition, flush.watermark_ms)
            else:
                self.live.give_back(partition, flush)  # written once its lease is settled
                self._given_back(changed)
        for partition, held in sorted(written.unproven.items()) if prove else ():
            await self._prove_fence(partition, held)
        log.debug("flushed %d live counter cells to HBase", written.cells)

    def _close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception as exc:  # noqa: BLE001 - a broken connection is being replaced anyway
                log.debug("closing the HBase connection: %s", exc)
        self._connection = None
        self._store = None
        self._lease_table = None

    def report(self) -> None:
        log.info(
            "counters: %d events, %d changed a status, %d cells written in %d flushes, "
            "%d late changes left to the batch, %d counters pending, %d statuses folded, "
            "%d changes to folded statuses left to the batch",
            self.stats.events,
            self.stats.changed,
            self.stats.cells,
            self.stats.flushes,
            self.live.late_changes(),
            self.live.pending(),
            self.stats.folded,
            self.stats.left_to_batch,
        )


def prepare(settings: ProcessorSettings, kafka: KafkaSettings) -> None:
    """What must exist before a worker starts: its changelog topic."""
    ensure_changelog(kafka, changelog_topic(settings), Topics.EVENTS.partitions)


def build_app(settings: ProcessorSettings, kafka: KafkaSettings, hbase: HBaseSettings) -> faust.App:
    """The Faust app; nothing connects until the worker starts."""
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{kafka.bootstrap_servers}",
        store="memory://",  # no Faust tables: the records are a RecordTable
        datadir=str(settings.data_dir),
        topic_partitions=Topics.EVENTS.partitions,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        consumer_max_fetch_size=settings.fetch_bytes_per_partition,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
    )
    events = app.topic(settings.source_topic, key_type=bytes, value_type=bytes)
    worker = CounterWorker(app, settings, kafka, hbase)
    app.counter_worker = worker  # type: ignore[attr-defined]  # for tests and the bench

    @app.agent(events)
    async def count_events(stream: Any) -> None:
        # Events are acknowledged only after the batch's records are in the changelog.
        async for batch in stream.take_events(
            settings.batch_events, within=settings.batch_within_s
        ):
            try:
                await worker.process_batch(batch)
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - see below
                # Leaving the loop would acknowledge the batch (Faust acks in a `finally`)
                # and a restarted agent would count on from there: stop as a crash does
                # instead; the restarted worker recovers exactly.
                _stop_now("counting a batch", exc)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types `signal=` keyword-only
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        await worker.on_revoked(args[0])  # the revoked topic partitions

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(sender: Any, *args: Any, **kwargs: Any) -> None:
        await worker.stop()

    @app.timer(interval=worker.policy.tick_s)
    async def flush_to_hbase() -> None:
        # Partitions without new events are opened here, so a restart rewrites them too;
        # never mid-rebalance, when the assignment is about to change.
        if not app.rebalancing:
            await worker.open_partitions(worker.active_partitions())
        await worker.flush_if_due()
        if not app.rebalancing:
            try:
                await worker.fold_old_statuses()
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - as a batch's
                _stop_now("folding old statuses", exc)

    @app.timer(interval=settings.report_interval_s)
    async def report() -> None:
        worker.report()

    return app


def _stop_now(what: str, exc: BaseException) -> NoReturn:
    """Stop as a crash does: the restarted worker recovers exactly from the changelog."""
    log.critical("%s failed; the worker stops now: %r", what, exc)
    logging.shutdown()
    os._exit(70)


def run_worker(app: faust.App, loglevel: str = "info") -> None:
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    # aiokafka and Faust log every message at debug level; formatting those records
    # cost 15 % of a worker's time here even when nothing printed them.
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(logging.INFO)
    worker.execute_from_commandline()
