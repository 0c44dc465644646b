"""The HBase side of fedilake: table creation, idempotent live and batch writes, prefix-scan reads."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date

import happybase

from fedilake.contracts import (
    Column,
    Granularity,
    Metric,
    MetricRow,
    RowKeys,
    Tables,
    TableSpec,
    decode_count,
    decode_snapshot,
    encode_count,
    encode_snapshot,
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

    def _by_table(self, rows: Iterable[MetricRow]) -> dict[str, list[MetricRow]]:
        grouped: dict[str, list[MetricRow]] = {}
        for row in rows:
            grouped.setdefault(Tables.for_granularity(row.granularity).name, []).append(row)
        return grouped

    def write_live(
        self,
        partition: int,
        counts: Mapping[MetricRow, int],
        gauges: Mapping[MetricRow, tuple[int, int]] | None = None,
    ) -> int:
        """Write one partition's absolute values; a count of 0 removes the cell. Returns
        the number of cells written or removed."""
        column = live_column(partition)
        gauges = gauges or {}
        cells = 0
        for name, rows in self._by_table([*counts, *gauges]).items():
            with self._tables[name].batch(batch_size=self.batch_size) as batch:
                for row in rows:
                    key = self.keys.encode(row)
                    if row in gauges:
                        observed_ms, value = gauges[row]
                        batch.put(key, {column: encode_snapshot(observed_ms, value)})
                    elif counts[row]:
                        batch.put(key, {column: encode_count(counts[row])})
                    else:
                        batch.delete(key, columns=[column])
                    cells += 1
        return cells

    def write_batch(self, values: Mapping[MetricRow, int]) -> None:
        for name, rows in self._by_table(values).items():
            with self._tables[name].batch(batch_size=self.batch_size) as batch:
                for row in rows:
                    batch.put(self.keys.encode(row), {Column.BATCH: encode_count(values[row])})

    def scan_bucket(
        self, metric: Metric, granularity: Granularity, bucket: str
    ) -> Iterator[MetricValue]:
        """Every row of one bucket: one prefix scan (one per salt when salted)."""
        table = self._table(granularity)
        for prefix in self.keys.prefixes(metric, granularity, bucket):
            for key, cells in table.scan(row_prefix=prefix):
                yield _value(self.keys.decode(key), cells)

    def scan_all(self) -> Iterator[MetricValue]:
        """Every row of every metric table (for checks and exports, not for queries)."""
        for table in self._tables.values():
            for key, cells in table.scan(batch_size=5000):
                yield _value(self.keys.decode(key), cells)

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


def _value(row: MetricRow, cells: Mapping[bytes, bytes]) -> MetricValue:
    live_cells = [v for k, v in cells.items() if k.startswith(Column.LIVE_PREFIX)]
    batch = cells.get(Column.BATCH)
    live: int | None = None
    if live_cells and row.metric.is_gauge:
        live = max(decode_snapshot(v) for v in live_cells)[1]
    elif live_cells and row.metric.is_distinct:
        live = 1
    elif live_cells:
        live = sum(decode_count(v) for v in live_cells)
    return MetricValue(row, live, decode_count(batch) if batch is not None else None)
