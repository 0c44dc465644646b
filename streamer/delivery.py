"""Moving spooled events to Kafka in order, exactly once, across Kafka outages and our own crashes.

Each message carries two headers: the spool's id and the record's sequence number.
The sender remembers how far Kafka acknowledged (`delivered.json`); on start, or after
the producer gave up on a batch, it reads each partition past that point to learn the
highest sequence already there, and skips those records instead of sending them again.
Per partition the idempotent producer keeps order, so what landed is a prefix.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.partitioner.default import DefaultPartitioner

from fedilake.contracts import (
    MAX_MESSAGE_BYTES,
    Topics,
    TopicSpec,
    key_partition,
    partition_for,
)
from fedilake.settings import KafkaSettings

from .spool import SpoolRecord, SpoolTailer

log = logging.getLogger(__name__)

# kafka-python 3 has no bound on its buffer: the sender keeps at most this many records
# unacknowledged, so a backlog waits in the spool, not in memory.
MAX_IN_FLIGHT = 2000

SPOOL_HEADER = "fedilake.spool"
SEQ_HEADER = "fedilake.seq"


# zstd, not gzip: kafka-python compresses gzip at level 9, a fifth of the sender's time.
COMPRESSION = "zstd"
LINGER_MS = 20
BATCH_BYTES = 256 * 1024


class KeyPartitioner(DefaultPartitioner):
    """Kafka's default rule for keyed records without the default partitioner's per-record
    sorting and copying of the partition list (a sixth of the sender's time, with its
    byte-at-a-time murmur2): partitions are numbered 0..n-1, so only their count matters."""

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        return key_partition(serialized_key, len(partitions))  # partitions are 0..n-1


def make_producer(settings: KafkaSettings) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-streamer",
        acks="all",
        enable_idempotence=True,
        compression_type=COMPRESSION,
        partitioner=KeyPartitioner(),
        linger_ms=LINGER_MS,
        batch_size=BATCH_BYTES,
        max_in_flight_requests_per_connection=5,
        max_request_size=MAX_MESSAGE_BYTES,
        retries=2**31 - 1,
        # A Kafka outage shorter than this is ridden out by the producer itself; a longer
        # one expires the batches and the sender reconciles and resends from the spool.
        delivery_timeout_ms=120_000,
        max_block_ms=5_000,
    )


class _Delivered:
    """How far Kafka has acknowledged, persisted so a restart knows where to look."""

    def __init__(self, path: Path, spool_id: str) -> None:
        self.path = path
        self.spool_id = spool_id
        self.acked_seq = 0
        self.offsets: dict[str, dict[int, int]] = {}
        self.fresh = True
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if doc.get("spool_id") == spool_id:
            self.fresh = False
            self.acked_seq = int(doc["acked_seq"])
            self.offsets = {
                t: {int(p): o for p, o in ps.items()} for t, ps in doc["offsets"].items()
            }

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(
            json.dumps(
                {"spool_id": self.spool_id, "acked_seq": self.acked_seq, "offsets": self.offsets}
            )
        )
        os.replace(tmp, self.path)


class KafkaDelivery:
    """The sender loop (in the sender process): spool → Kafka, reporting what Kafka took."""

    def __init__(
        self,
        spool: TailedSpool,
        kafka: KafkaSettings,
        state_dir: Path,
        producer_factory: Callable[[KafkaSettings], KafkaProducer] = make_producer,
        delivered_counter: Any = None,
    ) -> None:
        self.spool = spool
        self.kafka = kafka
        # A counter shared with the owning process: messages Kafka acknowledged.
        self.delivered_counter = delivered_counter
        self.producer_factory = producer_factory
        self.delivered = _Delivered(state_dir / "delivered.json", spool.spool_id)
        self.stop_requested = threading.Event()
        self.sent = 0
        self.acked = 0
        self.skipped = 0
        self._lock = threading.Lock()
        self._in_flight: deque[int] = deque()
        self._done: set[int] = set()
        self._failure: BaseException | None = None
        self._producer: KafkaProducer | None = None
        self._header_id = spool.spool_id.encode()
        self._outage_since: float | None = None
        self._partition_counts: dict[str, int] = {}
        self._acked = threading.Event()

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        try:
            while not self.stop_requested.is_set():
                try:
                    self._producer = self.producer_factory(self.kafka)
                    skip = self._reconcile()
                    self._send_from(self.delivered.acked_seq, skip)
                except (KafkaError, OSError) as exc:
                    self._note_outage(exc)
                    self.stop_requested.wait(2.0)
                finally:
                    # Closing waits for what is in flight, so a reconciliation that follows
                    # sees everything this producer will ever write.
                    self._drop_producer()
        finally:
            self._checkpoint()

    def _send_from(self, after: int, skip: dict[tuple[str, int], int]) -> None:
        sent_seq = after
        last_save = time.monotonic()
        while not self.stop_requested.is_set():
            if self._failure is not None:
                failure, self._failure = self._failure, None
                log.warning("Kafka gave up on a batch (%s); reconciling with the spool", failure)
                return
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                self._acked.wait(0.2)
                self._acked.clear()
            elif self.spool.wait_durable(sent_seq, timeout=0.2):
                room = MAX_IN_FLIGHT - len(self._in_flight)
                for record in self.spool.read(sent_seq, max_records=room):
                    with self._lock:
                        self._in_flight.append(record.seq)
                    if skip and record.seq <= skip.get(self._placement(record), 0):
                        self._mark(record.seq, None, None)  # already in Kafka
                        self.skipped += 1
                    else:
                        self._send(record)
                    sent_seq = record.seq
            if time.monotonic() - last_save >= 1.0:
                self._checkpoint()
                last_save = time.monotonic()

    def _send(self, record: SpoolRecord) -> None:
        assert self._producer is not None
        headers = [(SPOOL_HEADER, self._header_id), (SEQ_HEADER, str(record.seq).encode())]
        while True:
            try:
                future = self._producer.send(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    partition=record.partition,
                    headers=headers,
                )
                break
            except KafkaTimeoutError as exc:
                # No metadata or a full buffer: Kafka is away. Hold the record, try again.
                self._note_outage(exc)
                if self.stop_requested.wait(1.0):
                    raise
        future.add_callback(self._on_ack, record.seq, record.topic)
        future.add_errback(self._on_error)
        self.sent += 1

    def _on_ack(self, seq: int, topic: str, metadata: Any) -> None:
        self._mark(seq, topic, metadata)
        if self.delivered_counter is not None:
            self.delivered_counter.value += 1
        if self._outage_since is not None:
            log.info("Kafka is back after %.0fs", time.monotonic() - self._outage_since)
            self._outage_since = None

    def _on_error(self, exc: BaseException) -> None:
        self._failure = exc

    def _mark(self, seq: int, topic: str | None, metadata: Any) -> None:
        with self._lock:
            if topic is not None:
                by_partition = self.delivered.offsets.setdefault(topic, {})
                previous = by_partition.get(metadata.partition, -1)
                by_partition[metadata.partition] = max(previous, metadata.offset)
                self.acked += 1
            self._done.add(seq)
            while self._in_flight and self._in_flight[0] in self._done:
                done = self._in_flight.popleft()
                self._done.discard(done)
                self.delivered.acked_seq = max(self.delivered.acked_seq, done)
        self._acked.set()

    def _checkpoint(self) -> None:
        with self._lock:
            self.delivered.save()
            acked = self.delivered.acked_seq
        self.spool.acknowledge(acked)

    def _note_outage(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.error(
                "Kafka at %s is not taking events (%s); they wait in the spool (%d bytes)",
                self.kafka.bootstrap_servers,
                exc.__class__.__name__,
                self.spool.size_bytes,
            )

    # ------------------------------------------------------------------ reconciliation

    def _reconcile(self) -> dict[tuple[str, int], int]:
        """The highest sequence of ours already in each partition beyond the saved offsets."""
        with self._lock:
            self._in_flight.clear()
            self._done.clear()
        consumer = KafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            client_id=f"{self.kafka.client_id}-streamer-reconcile",
            enable_auto_commit=False,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
        )
        try:
            for spec in Topics.all():
                found = consumer.partitions_for_topic(spec.name)
                self._partition_counts[spec.name] = len(found) if found else spec.partitions
            partitions = [
                TopicPartition(name, p)
                for name, count in self._partition_counts.items()
                for p in range(count)
            ]
            consumer.assign(partitions)
            ends = consumer.end_offsets(partitions)
            skip: dict[tuple[str, int], int] = {}
            scanned = 0
            for tp in partitions:
                known = self.delivered.offsets.setdefault(tp.topic, {})
                if self.delivered.fresh:
                    # The first start of this spool: nothing of ours is in Kafka yet.
                    known[tp.partition] = ends[tp] - 1
                    continue
                # A partition added since is read whole, once.
                start = known.get(tp.partition, -1) + 1
                if start >= ends[tp]:
                    continue
                consumer.seek(tp, start)
                while consumer.position(tp) < ends[tp]:
                    for records in consumer.poll(timeout_ms=1000).values():
                        for message in records:
                            scanned += 1
                            seq = self._our_seq(message.headers)
                            if seq is not None:
                                key = (tp.topic, tp.partition)
                                skip[key] = max(skip.get(key, 0), seq)
            if self.delivered.fresh:
                self.delivered.fresh = False
                self.delivered.save()
            if scanned:
                log.info(
                    "reconciled with Kafka: %d messages read past the last acknowledgement, "
                    "%d partitions already hold some of the spool",
                    scanned,
                    len(skip),
                )
            return skip
        finally:
            consumer.close()

    def _placement(self, record: SpoolRecord) -> tuple[str, int]:
        """The (topic, partition) a record went to: keyed ones by Kafka's murmur2 rule."""
        if record.partition is not None:
            return record.topic, record.partition
        count = self._partition_counts.get(record.topic, Topics.named(record.topic).partitions)
        spec = TopicSpec(record.topic, count)
        return record.topic, partition_for(record.key, spec)

    def _our_seq(self, headers: list[tuple[str, bytes]] | None) -> int | None:
        found: dict[str, bytes] = dict(headers or [])
        if found.get(SPOOL_HEADER) != self._header_id:
            return None
        try:
            return int(found[SEQ_HEADER])
        except (KeyError, ValueError):
            return None

    # ------------------------------------------------------------------ shutdown

    def _drop_producer(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except KafkaError as exc:
                log.warning("closing the Kafka producer: %s", exc)
            self._producer = None

    def stop(self) -> None:
        """Ask the sender to finish; `run` closes the producer (flushing) and saves its position."""
        self.stop_requested.set()


# --------------------------------------------------------------------------- the sender process


class TailedSpool:
    """The spool seen from the sender process: records come from disk, the owner says how far
    they are durable (a shared counter) and trims what this process reports acknowledged."""

    def __init__(self, directory: Path, durable: Any, acked: Any) -> None:
        self.directory = directory
        self._durable = durable
        self._acked = acked
        self._tailer: SpoolTailer | None = None
        self._position = -1
        self.spool_id = SpoolTailer(directory, 0).spool_id

    @property
    def durable_seq(self) -> int:
        return int(self._durable.value)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("spool-*.log"))

    def wait_durable(self, after_seq: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._durable.value <= after_seq:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def read(self, after_seq: int, max_records: int = 1000) -> list[SpoolRecord]:
        if self._tailer is None or after_seq != self._position:
            if self._tailer is not None:
                self._tailer.close()
            self._tailer = SpoolTailer(self.directory, after_seq)
        records = self._tailer.read(self.durable_seq, max_records)
        self._position = records[-1].seq if records else after_seq
        return records

    def acknowledge(self, upto_seq: int) -> None:
        """Kafka has everything up to `upto_seq`: the owner may trim the spool that far."""
        self._acked.value = max(int(self._acked.value), upto_seq)


def run_sender_process(
    spool_dir: str,
    state_dir: str,
    bootstrap_servers: str,
    client_id: str,
    durable: Any,
    acked: Any,
    delivered_events: Any,
    stop: Any,
    parent_pid: int,
) -> None:
    """The child process of `fedilake stream` that moves the spool to Kafka.

    Running apart from the readers lets it use its own core (kafka-python's per-record
    cost is the bulk of the work). It stops when asked, or when its parent is gone.
    """
    import signal
    import sys

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # One sender at a time per state directory: after a kill -9 of the streamer its old
    # sender may still be flushing. This one reads where Kafka stopped (delivered.json)
    # and reconciles only once that one is done, or it could send a record twice.
    lock = os.open(Path(state_dir) / "sender.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the previous sender to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        delivery = KafkaDelivery(
            TailedSpool(Path(spool_dir), durable, acked),
            KafkaSettings(bootstrap_servers=bootstrap_servers, client_id=client_id),
            Path(state_dir),
            delivered_counter=delivered_events,
        )

        def watch() -> None:
            while not stop.wait(0.5):
                if os.getppid() != parent_pid:
                    log.error("the streamer is gone; the sender stops")
                    break
            delivery.stop()

        threading.Thread(target=watch, name="watch-parent", daemon=True).start()
        delivery.run()
    finally:
        os.close(lock)
