"""The nightly recomputation: a real Hadoop Streaming job over one day of the lake, its result into HBase."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from hdfs import HdfsError, InsecureClient

from fedilake.contracts import (
    Granularity,
    Metric,
    MetricRow,
    RowKeys,
    Topics,
    batch_output_dir,
    bucket_of,
    raw_day_dir,
    raw_day_glob,
)
from fedilake.settings import REPO_ROOT, BatchSettings, HBaseSettings, HdfsSettings, StackSettings
from fedilake.stack import configs
from fedilake.stack.control import tail
from fedilake.stack.errors import StackError
from fedilake.stack.services import java_command
from fedilake.stack.tools import ensure_jars, find_java
from sinks.hbase import MetricStore, connect
from sinks.lake import webhdfs_client

log = logging.getLogger(__name__)

STREAMING_MAIN = "org.apache.hadoop.streaming.HadoopStreaming"


class BatchJobError(StackError):
    """The Hadoop Streaming job failed; the message carries the tail of its log."""


@dataclass(frozen=True)
class BatchResult:
    day: date
    input_files: int
    rows: int
    seconds: float


def parse_hashtag_output(lines: list[str]) -> dict[MetricRow, int]:
    values: dict[MetricRow, int] = {}
    for line in lines:
        if not line.strip():
            continue
        bucket, tag, count = line.rstrip("\n").split("\t")
        values[MetricRow(Metric.HASHTAG, Granularity.HOUR, bucket, tag)] = int(count)
    return values


def day_input_files(client: InsecureClient, topic: str, day: date, root: str) -> list[str]:
    day_dir = raw_day_dir(topic, day, root)
    try:
        hours = client.list(day_dir)
    except HdfsError:
        return []
    files: list[str] = []
    for hour in sorted(hours):
        if not hour.startswith("hr="):
            continue
        files.extend(
            f"{day_dir}/{hour}/{name}"
            for name in sorted(client.list(f"{day_dir}/{hour}"))
            if name.endswith(".json.gz") and not name.startswith((".", "_"))
        )
    return files


class HashtagRecount:
    """Recounts one day's hourly hashtags from the lake and stores them as the batch values."""

    def __init__(
        self,
        stack: StackSettings,
        hdfs: HdfsSettings,
        hbase: HBaseSettings,
        batch: BatchSettings,
    ) -> None:
        self.stack = stack
        self.hdfs = hdfs
        self.hbase = hbase
        self.batch = batch
        self.client = webhdfs_client(hdfs)

    def run(self, day: date) -> BatchResult:
        started = time.monotonic()
        topic = Topics.EVENTS.name
        inputs = day_input_files(self.client, topic, day, self.hdfs.lake_root)
        output = batch_output_dir(Metric.HASHTAG, day, self.hdfs.lake_root)
        self.client.delete(output, recursive=True)  # the job rewrites its partition whole
        if not inputs:
            log.warning("no lake files for %s: nothing to recount", day)
            return BatchResult(day, 0, 0, time.monotonic() - started)
        log.info("recounting hashtags of %s from %d lake files", day, len(inputs))
        self._run_streaming_job(raw_day_glob(topic, day, self.hdfs.lake_root), output, day)
        lines: list[str] = []
        for name in sorted(self.client.list(output)):
            if name.startswith("part-"):
                with self.client.read(f"{output}/{name}", encoding="utf-8") as reader:
                    lines.extend(reader.read().splitlines())
        values = parse_hashtag_output(lines)
        hours = [
            bucket_of(datetime(day.year, day.month, day.day, h, tzinfo=UTC), Granularity.HOUR)
            for h in range(24)
        ]
        connection = connect(self.hbase)
        try:
            store = MetricStore(connection, RowKeys(self.hbase.salt_buckets))
            removed = store.replace_batch(values, Metric.HASHTAG, Granularity.HOUR, hours)
        finally:
            connection.close()
        result = BatchResult(day, len(inputs), len(values), time.monotonic() - started)
        log.info(
            "batch hashtags for %s: %d rows, %d stale ones removed, in %.1fs",
            day,
            result.rows,
            removed,
            result.seconds,
        )
        return result

    def _run_streaming_job(self, input_glob: str, output: str, day: date) -> None:
        java = find_java(self.stack.java_home)
        lib = ensure_jars("hadoop", self.stack.lib_dir, java)
        work = self.batch.work_dir / f"hashtags-{day:%Y%m%d}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "conf").mkdir(parents=True)
        (work / "conf" / "log4j.properties").write_text(configs.log4j_properties("WARN"))
        python = self.batch.python or sys.executable
        step = f"{python} -m processors.mapreduce.hashtag_count"
        generic = {
            "fs.defaultFS": self.hdfs.namenode,
            "mapreduce.framework.name": "local",
            "mapreduce.job.reduces": "1",
            "mapreduce.cluster.local.dir": str(work / "local"),
            "hadoop.tmp.dir": str(work / "tmp"),
            "mapreduce.job.name": f"fedilake-hashtags-{day:%Y-%m-%d}",
            "stream.non.zero.exit.is.failure": "true",
            # The key is (bucket, hashtag): two tab-separated fields, so Hadoop sorts and
            # groups by both rather than by the first field alone.
            "stream.num.map.output.key.fields": "2",
            "stream.num.reduce.output.key.fields": "2",
        }
        args = [f"-D{k}={v}" for k, v in generic.items()] + [
            "-input",
            input_glob,
            "-output",
            output,
            "-mapper",
            f"{step} map",
            "-combiner",
            f"{step} combine",
            "-reducer",
            f"{step} reduce",
            "-cmdenv",
            f"PYTHONPATH={REPO_ROOT}",
        ]
        command = java_command(
            java.java,
            [str(work / "conf"), f"{lib}/*"],
            self.batch.heap,
            STREAMING_MAIN,
            args,
            {
                "log4j.configuration": (work / "conf" / "log4j.properties").as_uri(),
                "hadoop.log.dir": str(work),
            },
        )
        log_path = work / "job.log"
        with log_path.open("wb") as out:
            code = subprocess.run(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=work,
                check=False,
            ).returncode
        if code != 0:
            raise BatchJobError(
                f"Hadoop Streaming job failed (exit {code}); log {log_path}",
                tail(Path(log_path), 40),
            )
