"""Publishing envelopes to Kafka (idempotent, acks=all) and rejected input to the dead-letter topic."""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaProducer

from fedilake.contracts import Envelope, Topics, dead_letter_record
from fedilake.settings import KafkaSettings

log = logging.getLogger(__name__)


def make_producer(settings: KafkaSettings) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-streamer",
        acks="all",
        enable_idempotence=True,
        compression_type="gzip",
        linger_ms=20,
        batch_size=256 * 1024,
        max_in_flight_requests_per_connection=5,
        retries=2**31 - 1,
    )


class EventPublisher:
    """Sends each envelope keyed by its status, so one status's events stay in order."""

    def __init__(self, producer: KafkaProducer) -> None:
        self.producer = producer
        self.published = 0
        self.dead_lettered = 0
        self.failed = 0

    def publish(self, envelope: Envelope) -> None:
        future = self.producer.send(
            Topics.EVENTS.name, key=envelope.kafka_key(), value=envelope.to_bytes()
        )
        future.add_errback(self._on_error)
        self.published += 1

    def dead_letter(self, reason: str, original: bytes, source: str) -> None:
        log.warning("dead-lettering an event from %s: %s", source, reason)
        future = self.producer.send(
            Topics.DEAD_LETTER.name, value=dead_letter_record(reason, original, source)
        )
        future.add_errback(self._on_error)
        self.dead_lettered += 1

    def _on_error(self, exc: Any) -> None:
        self.failed += 1
        log.error("Kafka did not take an event: %s", exc)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
