"""Creating fedilake's Kafka topics (idempotent) and reading their end offsets."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from fedilake.contracts import Topics, TopicSpec
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
                topic_configs={"retention.ms": str(spec.retention_ms)},
            )
            try:
                admin.create_topics([topic])
                created.append(spec.name)
                log.info("created Kafka topic %s (%d partitions)", spec.name, spec.partitions)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()
