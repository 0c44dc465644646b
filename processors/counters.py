"""The Faust worker of the speed layer: hourly hashtag counts, flushed to HBase as absolute values."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from fedilake.contracts import Envelope, EnvelopeError, Granularity, Metric, MetricRow, Topics
from fedilake.settings import HBaseSettings, KafkaSettings, ProcessorSettings
from sinks.hbase import MetricStore, connect

from .metrics import hashtag_rows

log = logging.getLogger(__name__)


class CounterKey(faust.Record, serializer="json"):
    """A counter as one source partition sees it; only that partition's events touch it."""

    partition: int
    metric: str
    granularity: str
    bucket: str
    dimension: str

    def row(self) -> MetricRow:
        return MetricRow(
            Metric(self.metric), Granularity(self.granularity), self.bucket, self.dimension
        )


def build_app(settings: ProcessorSettings, kafka: KafkaSettings, hbase: HBaseSettings) -> faust.App:
    """The Faust app; nothing connects until the worker starts."""
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{kafka.bootstrap_servers}",
        store="memory://",
        datadir=str(settings.data_dir),
        topic_partitions=Topics.EVENTS.partitions,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )
    events = app.topic(Topics.EVENTS.name, key_type=bytes, value_type=bytes, value_serializer="raw")
    counts = app.Table(
        "hashtag-hourly",
        key_type=CounterKey,
        value_type=int,
        default=int,
        partitions=Topics.EVENTS.partitions,
    )
    dirty: set[CounterKey] = set()
    store: dict[str, MetricStore] = {}

    @app.agent(events)
    async def count_hashtags(stream: Any) -> None:
        async for event in stream.events():
            try:
                envelope = Envelope.from_bytes(event.value)
            except EnvelopeError as exc:
                log.warning("skipping a message that is not an envelope: %s", exc)
                continue
            partition = event.message.partition
            for row in hashtag_rows(envelope):
                key = CounterKey(
                    partition, row.metric.value, row.granularity.value, row.bucket, row.dimension
                )
                counts[key] += 1
                dirty.add(key)

    @app.timer(interval=settings.flush_interval_s)
    async def flush_to_hbase() -> None:
        if not dirty:
            return
        pending = list(dirty)
        dirty.clear()
        by_partition: dict[int, dict[MetricRow, int]] = {}
        for key in pending:
            by_partition.setdefault(key.partition, {})[key.row()] = counts[key]
        if "metrics" not in store:
            store["metrics"] = MetricStore(connect(hbase))
        metric_store = store["metrics"]
        loop = asyncio.get_running_loop()
        try:
            for partition, values in by_partition.items():
                await loop.run_in_executor(None, metric_store.write_live, partition, values)
        except Exception as exc:  # noqa: BLE001 - raising here would stop the whole worker
            dirty.update(pending)  # written again on the next tick: the values are absolute
            store.pop("metrics", None)
            log.warning("HBase flush failed, retrying next tick: %s", exc)
            return
        log.info("flushed %d live counters to HBase", len(pending))

    return app


def run_worker(app: faust.App, loglevel: str = "info") -> None:
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
