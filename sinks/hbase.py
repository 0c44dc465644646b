"""The HBase side of fedilake: table creation, idempotent live and batch writes, prefix-scan reads."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date

import happybase
from Hbase_thrift import Mutation

from fedilake.contracts import (
    AccountCell,
    AccountRow,
    Column,
    Granularity,
    LiveLease,
    Metric,
    MetricRow,
    RowKeys,
    Tables,
    TableSpec,
    decode_count,
    encode_count,
)
from fedilake.settings import HBaseSettings

log = logging.getLogger(__name__)


def connect(settings: HBaseSettings) -> happybase.Connection:
    return happybase.Connection(
        settings.host,
        settings.port,
        timeout=30000,
        table_prefix=settings.table_prefix or None,
        autoconnect=True,
    )


def init_tables(connection: happybase.Connection, specs: Iterable[TableSpec] = ()) -> list[str]:
    """Create the tables that do not exist yet; return the names created."""
    existing = {name.decode() for name in connection.tables()}
    created = []
    for spec in specs or Tables.all():
        if spec.name in existing:
            continue
        connection.create_table(spec.name, spec.families)
        created.append(spec.name)
        log.info("created HBase table %s", spec.name)
    return created


class PartitionTakenOver(RuntimeError):
    """Another worker took over a partition's live column: this one must write it no more."""


class LeaseHeldElsewhere(RuntimeError):
    """The partition's lease names an owner this worker cannot tell to be older than itself:
    a newer one, or one of another Kafka (a reset, an expired producer id). Only Kafka can
    tell: `held` may be taken over once this worker's changelog fence is seen to stand."""

    def __init__(self, partition: int, held: bytes) -> None:
        super().__init__(
            f"partition {partition}: the live lease is held by producer:epoch "
            f"{held.decode(errors='replace').rsplit(':', 1)[0]}, not by this worker's fence"
        )
        self.partition = partition
        self.held = held


class LiveLeases:
    """The `LiveLease` of each source partition, read and changed by check-and-put."""

    def __init__(self, connection: happybase.Connection) -> None:
        self._client = connection.client
        self._table = connection.table(Tables.LEASES.name).name  # with the table prefix

    def read(self, partition: int) -> bytes | None:
        cells = self._client.getVer(self._table, LiveLease.ROW, LiveLease.column(partition), 1, {})
        return bytes(cells[0].value) if cells else None

    def take(
        self, partition: int, fence: tuple[int, int], now_ms: int, *, proven: bytes | None = None
    ) -> LiveLease:
        """Become the partition's writer as the owner whose changelog fence is `fence`
        (producer id, epoch). A lease that is free, or held by an owner fenced before ours
        (same producer id, lower epoch), is taken at once. Any other raises
        LeaseHeldElsewhere, unless it is `proven`: that very lease, read before this
        worker's fence was seen to stand in Kafka (so its holder is not newer)."""
        producer_id, epoch = fence
        for _ in range(5):
            current = self.read(partition)
            if current is None:
                lease = LiveLease(producer_id, epoch, now_ms)
            else:
                held = LiveLease.decode(current)
                if held.held_by(producer_id, epoch):
                    return held  # ours already: a take whose answer was lost
                if held.fenced_after(producer_id, epoch) is not False and current != proven:
                    raise LeaseHeldElsewhere(partition, current)
                lease = held.taken_by(producer_id, epoch, now_ms)
            if self._swap(partition, current, lease):
                return lease
        raise PartitionTakenOver(f"partition {partition}: the live lease keeps changing")

    def claim(self, partition: int, lease: LiveLease, now_ms: int) -> LiveLease:
        """The next write's timestamp, claimed in the lease; raises PartitionTakenOver when
        the lease is no longer `lease`."""
        for _ in range(2):
            claimed = lease.claimed(now_ms)
            if self._swap(partition, lease.encode(), claimed):
                return claimed
            current = self.read(partition)
            if current is None or not LiveLease.decode(current).held_by(
                lease.producer_id, lease.epoch
            ):
                break
            # Our epoch still: only a claim of ours whose answer was lost changes it.
            lease = LiveLease.decode(current)
        raise PartitionTakenOver(
            f"partition {partition}: its live column is written by another worker now "
            f"(lease {current.decode() if current else 'gone'}, ours {lease.encode().decode()})"
        )

    def _swap(self, partition: int, expected: bytes | None, lease: LiveLease) -> bool:
        column = LiveLease.column(partition)
        put = Mutation(column=column, value=lease.encode())
        return bool(self._client.checkAndPut(self._table, LiveLease.ROW, column, expected, put, {}))


@dataclass(frozen=True)
class MetricValue:
    """A row as read: its live value (summed over partitions, or the latest snapshot of a
    gauge) and its batch value; None where nothing was written."""

    row: MetricRow
    live: int | None
    batch: int | None


def live_column(partition: int) -> bytes:
    """Each Kafka partition's worker owns one live column, so absolute writes never collide."""
    return Column.LIVE_PREFIX + f"p{partition}".encode()


class MetricStore:
    """Reads and writes the metric tables: live values per source partition, batch values whole.

    Hourly rows go to `Tables.HOURLY` (with a TTL), the rest to `Tables.METRICS`.
    """

    def __init__(
        self, connection: happybase.Connection, keys: RowKeys | None = None, batch_size: int = 2000
    ) -> None:
        self.keys = keys or RowKeys()
        self.batch_size = batch_size
        self._tables = {
            spec.name: connection.table(spec.name) for spec in (Tables.METRICS, Tables.HOURLY)
        }

    def _table(self, granularity: Granularity) -> happybase.Table:
        return self._tables[Tables.for_granularity(granularity).name]

    def _by_table(
        self, rows: Iterable[MetricRow | AccountRow]
    ) -> dict[str, list[MetricRow | AccountRow]]:
        grouped: dict[str, list[MetricRow | AccountRow]] = {}
        for row in rows:
            grouped.setdefault(Tables.for_granularity(row.granularity).name, []).append(row)
        return grouped

    def write_live(
        self,
        partition: int,
        counts: Mapping[MetricRow, int],
        accounts: Mapping[AccountRow, AccountCell] | None = None,
        timestamp: int | None = None,
    ) -> int:
        """Write one partition's absolute values, at `timestamp` (ms) when given (a claim of
        its `LiveLease`); a count of 0 or an empty account cell removes the cell (every
        version up to the timestamp). Returns the number of cells written or removed."""
        column = live_column(partition)
        accounts = accounts or {}
        cells = 0
        for name, rows in self._by_table([*counts, *accounts]).items():
            table = self._tables[name]
            with table.batch(batch_size=self.batch_size, timestamp=timestamp) as batch:
                for row in rows:
                    key = self.keys.encode(row)
                    if isinstance(row, AccountRow):
                        cell = accounts[row]
                        value = None if cell.is_empty else cell.encode()
                    else:
                        value = encode_count(counts[row]) if counts[row] else None
                    if value is None:
                        batch.delete(key, columns=[column])
                    else:
                        batch.put(key, {column: value})
                    cells += 1
        return cells

    def write_batch(self, values: Mapping[MetricRow, int]) -> None:
        """Batch values, whole: every counter of an account row is given at once (the
        ones left out are written as 0); follower counts and creation months are live only."""
        cells: dict[MetricRow | AccountRow, bytes] = {}
        accounts: dict[AccountRow, dict[MetricRow, int]] = {}
        for row, value in values.items():
            if row.metric.is_gauge or row.metric.is_distinct:
                raise ValueError(f"{row.metric.value} has no batch value")
            if row.metric.is_about_account:
                accounts.setdefault(AccountRow.of(row), {})[row] = value
            else:
                cells[row] = encode_count(value)
        for account, given in accounts.items():
            counts = tuple(given.get(counter, 0) for counter in account.count_rows())
            cells[account] = AccountCell(counts).encode()
        for name, rows in self._by_table(cells).items():
            with self._tables[name].batch(batch_size=self.batch_size) as batch:
                for stored in rows:
                    batch.put(self.keys.encode(stored), {Column.BATCH: cells[stored]})

    def replace_batch(
        self,
        values: Mapping[MetricRow, int],
        metric: Metric,
        granularity: Granularity,
        buckets: Iterable[str],
    ) -> int:
        """The batch values of whole buckets of a content metric: `values` written, then every
        other batch value of those buckets removed, so a recount that no longer finds a row
        (its statuses were deleted) does not leave the old value behind. Returns how many
        were removed; a crash in between leaves them for the next recount to remove."""
        if metric.is_about_account:
            raise ValueError(f"{metric.value} is kept in account rows, written whole")
        self.write_batch(values)
        stale = [
            value.row
            for bucket in buckets
            for value in self.scan_bucket(metric, granularity, bucket)
            if value.batch is not None and value.row not in values
        ]
        for name, rows in self._by_table(stale).items():
            with self._tables[name].batch(batch_size=self.batch_size) as batch:
                for row in rows:
                    batch.delete(self.keys.encode(row), columns=[Column.BATCH])
        return len(stale)

    def scan_bucket(
        self, metric: Metric, granularity: Granularity, bucket: str
    ) -> Iterator[MetricValue]:
        """Every row of one bucket: one prefix scan (one per salt when salted)."""
        table = self._table(granularity)  # account metrics: day, month, all; never hourly
        for prefix in self.keys.prefixes(metric, granularity, bucket):
            for key, cells in table.scan(row_prefix=prefix):
                for value in _values(self.keys.decode(key), cells):
                    if value.row[:3] == (metric, granularity, bucket):
                        yield value

    def scan_all(self) -> Iterator[MetricValue]:
        """Every row of every metric table (for checks and exports, not for queries)."""
        for table in self._tables.values():
            for key, cells in table.scan(batch_size=5000):
                yield from _values(self.keys.decode(key), cells)

    def day_of_hours(
        self, metric: Metric, day: date
    ) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]]]:
        """Live and batch values of every hour of `day`: {hour bucket: {dimension: value}}."""
        live: dict[str, Counter[str]] = {}
        batch: dict[str, Counter[str]] = {}
        for hour in range(24):
            bucket = f"{day:%Y%m%d}{hour:02d}"
            for value in self.scan_bucket(metric, Granularity.HOUR, bucket):
                if value.live is not None:
                    live.setdefault(bucket, Counter())[value.row.dimension] = value.live
                if value.batch is not None:
                    batch.setdefault(bucket, Counter())[value.row.dimension] = value.batch
        return live, batch

    def top(
        self, metric: Metric, granularity: Granularity, bucket: str, limit: int
    ) -> list[MetricValue]:
        values = list(self.scan_bucket(metric, granularity, bucket))
        values.sort(key=lambda v: (-(v.live or 0), -(v.batch or 0), v.row.dimension))
        return values[:limit]


def _values(row: MetricRow | AccountRow, cells: Mapping[bytes, bytes]) -> Iterator[MetricValue]:
    """The values of a stored row: one for a metric row, each one held for an account row."""
    live_cells = [v for k, v in cells.items() if k.startswith(Column.LIVE_PREFIX)]
    batch = cells.get(Column.BATCH)
    if isinstance(row, MetricRow):
        live = sum(decode_count(v) for v in live_cells) if live_cells else None
        yield MetricValue(row, live, decode_count(batch) if batch is not None else None)
        return
    yield from account_values(
        row,
        [AccountCell.decode(v) for v in live_cells],
        AccountCell.decode(batch) if batch is not None else None,
    )


def account_values(
    row: AccountRow, live: list[AccountCell], batch: AccountCell | None
) -> Iterator[MetricValue]:
    """Each metric of an account row, read across the partitions' cells: counts summed
    (absent where every partition has 0), the follower count of the newest snapshot, and
    the creation month."""
    for n, counter in enumerate(row.count_rows()):
        total = sum(cell.counts[n] for cell in live)
        batch_value = batch.counts[n] if batch is not None else 0
        if total or batch_value:
            yield MetricValue(counter, total or None, batch_value if batch is not None else None)
    snapshots = [cell for cell in live if cell.observed_ms >= 0]
    if snapshots:
        newest = max(snapshots, key=lambda cell: (cell.observed_ms, cell.followers))
        gauge = MetricRow(Metric.FOLLOWERS, row.granularity, row.bucket, row.handle)
        yield MetricValue(gauge, newest.followers, None)
    month = next((cell.created_month for cell in live if cell.created_month), "")
    if month:
        created = MetricRow(Metric.ACCOUNTS_CREATED, Granularity.MONTH, month, row.handle)
        yield MetricValue(created, 1, None)
