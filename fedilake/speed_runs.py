"""Runs of the speed layer on the local stack against a seeded history, judged cell by cell.

Each run gets a topic, a consumer group, a Faust data directory and HBase tables of
its own (a table prefix), so runs never see each other's counters. The e2e tests,
`fedilake scenario speed` and `fedilake bench speed` share it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient

from fedilake.contracts import (
    Envelope,
    Metric,
    MetricRow,
    RowKeys,
    Topics,
    TopicSpec,
)
from fedilake.kafka_topics import ensure_topics
from fedilake.pipeline import spawn_cli
from fedilake.settings import HBaseSettings, KafkaSettings
from sinks.hbase import MetricStore, connect, init_tables
from streamer.delivery import make_producer

log = logging.getLogger(__name__)


@dataclass
class CounterVerdict:
    """HBase against what a history must produce: every cell, both ways."""

    expected: int
    missing: dict[MetricRow, int] = field(default_factory=dict)
    wrong: dict[MetricRow, tuple[int, int]] = field(default_factory=dict)  # (expected, found)
    unexpected: dict[MetricRow, int] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.wrong or self.unexpected)

    def summary(self) -> str:
        if self.exact:
            return f"exact: all {self.expected} counters equal the ground truth"
        sample = list(self.missing.items())[:3] + list(self.wrong.items())[:3]
        sample += list(self.unexpected.items())[:3]
        return (
            f"{len(self.missing)} missing, {len(self.wrong)} wrong, "
            f"{len(self.unexpected)} unexpected of {self.expected} counters; e.g. {sample}"
        )


def judge(
    expected: dict[MetricRow, int], gauges: dict[MetricRow, int], found: dict[MetricRow, int]
) -> CounterVerdict:
    wanted = {**expected, **gauges}
    verdict = CounterVerdict(expected=len(wanted))
    for row, value in wanted.items():
        if row not in found:
            verdict.missing[row] = value
        elif found[row] != value:
            verdict.wrong[row] = (value, found[row])
    for row, value in found.items():
        if row not in wanted:
            verdict.unexpected[row] = value
    return verdict


@dataclass
class SpeedRun:
    workdir: Path
    run_id: str = field(default_factory=lambda: f"speed{int(time.time() * 1000) % 10**10}")
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    flush_interval_s: float = 2.0
    report_interval_s: float = 30.0
    settings_env: dict[str, str] = field(default_factory=dict)  # more FEDILAKE_* for workers
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def topic(self) -> TopicSpec:
        return TopicSpec(f"fedilake.events.{self.run_id}", Topics.EVENTS.partitions)

    @property
    def app_id(self) -> str:
        return f"fedilake-counters-{self.run_id}"

    @property
    def hbase(self) -> HBaseSettings:
        return HBaseSettings(table_prefix=self.run_id)

    def setup(self) -> None:
        ensure_topics(self.kafka, [self.topic])
        connection = connect(self.hbase)
        try:
            init_tables(connection)
        finally:
            connection.close()

    def produce(self, envelopes: Iterable[Envelope]) -> int:
        """Publish as the streamer does: keyed by status, idempotent, acks=all."""
        producer = make_producer(self.kafka)
        sent = 0
        try:
            for envelope in envelopes:
                producer.send(self.topic.name, key=envelope.kafka_key(), value=envelope.to_bytes())
                sent += 1
            producer.flush(timeout=120)
        finally:
            producer.close(timeout=30)
        return sent

    def worker_env(self, name: str) -> dict[str, str]:
        return {
            "FEDILAKE_PROCESSOR_SOURCE_TOPIC": self.topic.name,
            "FEDILAKE_PROCESSOR_APP_ID": self.app_id,
            "FEDILAKE_PROCESSOR_DATA_DIR": str(self.workdir / f"faust-{name}"),
            "FEDILAKE_PROCESSOR_FLUSH_INTERVAL_S": str(self.flush_interval_s),
            "FEDILAKE_PROCESSOR_REPORT_INTERVAL_S": str(self.report_interval_s),
            "FEDILAKE_HBASE_TABLE_PREFIX": self.run_id,
            **self.settings_env,
        }

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        process = spawn_cli(["process"], self.workdir / f"{name}.log", self.worker_env(name))
        self.workers[name] = process
        return process

    def kill_worker(self, name: str = "worker") -> None:
        """kill -9: no flush, no commit, no goodbye to the group."""
        process = self.workers.pop(name)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def pause_worker(self, name: str) -> None:
        """SIGSTOP: the worker stops mid-whatever, as in a long GC or a frozen VM."""
        os.kill(self.workers[name].pid, signal.SIGSTOP)

    def resume_worker(self, name: str) -> subprocess.Popen[bytes]:
        """SIGCONT, and the worker is no longer watched by `check_workers`: it may stop on
        finding its partitions taken over."""
        process = self.workers.pop(name)
        os.kill(process.pid, signal.SIGCONT)
        return process

    def stop_workers(self, timeout_s: float = 60.0) -> None:
        for process in self.workers.values():
            process.terminate()
        for name, process in list(self.workers.items()):
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop in %.0fs; killing it", name, timeout_s)
                process.kill()
                process.wait()
        self.workers.clear()

    def check_workers(self) -> None:
        dead = {name: p.returncode for name, p in self.workers.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"worker(s) exited: {dead}\n{self.log_tails()}")

    def committed(self) -> int:
        """Messages of the topic whose offsets the group committed."""
        admin = KafkaAdminClient(bootstrap_servers=self.kafka.bootstrap_servers)
        try:
            offsets = admin.list_group_offsets(self.app_id).get(self.app_id, {})
        finally:
            admin.close()
        return sum(
            meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.topic.name and meta.offset > 0
        )

    def read_counters(self) -> dict[MetricRow, int]:
        connection = connect(self.hbase)
        try:
            return {
                value.row: value.live
                for value in MetricStore(connection, RowKeys(self.hbase.salt_buckets)).scan_all()
                if value.live is not None
            }
        finally:
            connection.close()

    def wait_exact(
        self,
        expected: dict[MetricRow, int],
        gauges: dict[MetricRow, int],
        timeout_s: float,
    ) -> CounterVerdict:
        """Poll HBase until it equals the ground truth or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_workers()
            verdict = judge(expected, gauges, self.read_counters())
            if verdict.exact or time.monotonic() > deadline:
                return verdict
            time.sleep(2.0)

    def log_tails(self, lines: int = 15) -> str:
        tails = []
        for path in sorted(self.workdir.glob("*.log")):
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            tails.append(f"--- {path.name}\n{tail}")
        return "\n".join(tails)

    def cleanup(self) -> None:
        """Drop the run's topic and tables (the counters were judged)."""
        self.stop_workers()
        admin = KafkaAdminClient(bootstrap_servers=self.kafka.bootstrap_servers)
        try:
            names = [self.topic.name] + [
                t for t in admin.list_topics() if t.startswith(self.app_id)
            ]
            admin.delete_topics(names)
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort
            log.warning("could not delete the run's topics: %s", exc)
        finally:
            admin.close()
        connection = connect(self.hbase)
        try:
            for name in connection.tables():
                connection.delete_table(name, disable=True)
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort
            log.warning("could not drop the run's tables: %s", exc)
        finally:
            connection.close()


def counted_metrics(rows: Iterable[MetricRow]) -> dict[Metric, int]:
    by_metric: dict[Metric, int] = {}
    for row in rows:
        by_metric[row.metric] = by_metric.get(row.metric, 0) + 1
    return by_metric
