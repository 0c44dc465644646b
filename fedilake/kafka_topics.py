"""Creating fedilake's Kafka topics (idempotent) and reading their end offsets."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError

from fedilake.contracts import MAX_MESSAGE_BYTES, Topics, TopicSpec
from fedilake.settings import KafkaSettings

log = logging.getLogger(__name__)


def ensure_topics(settings: KafkaSettings, specs: Iterable[TopicSpec] = ()) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, client_id="fedilake-admin"
    )
    try:
        existing = set(admin.list_topics())
        missing = [spec for spec in (specs or Topics.all()) if spec.name not in existing]
        created = []
        for spec in missing:
            topic = NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=1,
                topic_configs=_configs(spec),
            )
            try:
                admin.create_topics([topic])
                created.append(spec.name)
                log.info("created Kafka topic %s (%d partitions)", spec.name, spec.partitions)
            except TopicAlreadyExistsError:
                pass
        present = [spec for spec in (specs or Topics.all()) if spec.name in existing]
        if present:
            # Topics made by an older release get today's settings (idempotent).
            admin.alter_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, s.name, configs=_configs(s))
                    for s in present
                ]
            )
        return created
    finally:
        admin.close()


def _configs(spec: TopicSpec) -> dict[str, str]:
    return {"retention.ms": str(spec.retention_ms), "max.message.bytes": str(MAX_MESSAGE_BYTES)}


def end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def read_since(settings: KafkaSettings, topic: str, since_ms: int) -> list[Any]:
    """Every record of `topic` written at or after `since_ms` (epoch ms) up to its current end."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        starts = consumer.offsets_for_times({tp: since_ms for tp in tps})
        records: list[Any] = []
        for tp in tps:
            found = starts.get(tp)
            if found is None:
                continue  # nothing that recent
            consumer.seek(tp, found.offset)
        pending = {tp for tp in tps if starts.get(tp) is not None and starts[tp].offset < ends[tp]}
        while pending:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()
