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


@dataclass(frozen=True)
class MetricValue:
    row: MetricRow
    live: int | None
    batch: int | None


def live_column(partition: int) -> bytes:
    """Each Kafka partition's worker owns one live column, so absolute writes never collide."""
    return Column.LIVE_PREFIX + f"p{partition}".encode()


class MetricStore:
    """Reads and writes the metrics table: live values per source partition, batch values whole."""

    def __init__(self, connection: happybase.Connection) -> None:
        self.table = connection.table(Tables.METRICS.name)

    def write_live(self, partition: int, values: Mapping[MetricRow, int]) -> None:
        column = live_column(partition)
        with self.table.batch(batch_size=1000) as batch:
            for row, value in values.items():
                batch.put(row.key(), {column: encode_count(value)})

    def write_batch(self, values: Mapping[MetricRow, int]) -> None:
        with self.table.batch(batch_size=1000) as batch:
            for row, value in values.items():
                batch.put(row.key(), {Column.BATCH: encode_count(value)})

    def scan_bucket(
        self, metric: Metric, granularity: Granularity, bucket: str
    ) -> Iterator[MetricValue]:
        prefix = MetricRow.prefix(metric, granularity, bucket)
        for key, cells in self.table.scan(row_prefix=prefix):
            yield _value(key, cells)

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


def _value(key: bytes, cells: Mapping[bytes, bytes]) -> MetricValue:
    live_cells = [v for k, v in cells.items() if k.startswith(Column.LIVE_PREFIX)]
    batch = cells.get(Column.BATCH)
    return MetricValue(
        MetricRow.from_key(key),
        sum(decode_count(v) for v in live_cells) if live_cells else None,
        decode_count(batch) if batch is not None else None,
    )
