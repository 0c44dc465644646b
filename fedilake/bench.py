"""`fedilake bench skeleton`: events/s through every stage, beside a bare producer measured in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from kafka import KafkaProducer

from fedilake.contracts import MAX_MESSAGE_BYTES, Metric, Topics, TopicSpec, key_partition
from fedilake.kafka_topics import end_offsets, ensure_topics
from fedilake.pipeline import child_pids, cli_processes, initialize
from fedilake.settings import (
    HBaseSettings,
    HdfsSettings,
    KafkaSettings,
    SimulatorSettings,
    StackSettings,
)
from fedilake.stack.control import LocalStack, running_pid
from sinks.hbase import MetricStore, connect
from sinks.lake import LakeWriter, webhdfs_client
from streamer.delivery import BATCH_BYTES, COMPRESSION, LINGER_MS, make_producer
from streamer.envelopes import wrap_event
from streamer.generator import StatusGenerator

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

log = logging.getLogger(__name__)

BASELINE_TOPIC = TopicSpec("fedilake.bench-baseline", partitions=Topics.EVENTS.partitions)


@dataclass(frozen=True)
class StageResult:
    name: str
    seconds: float
    events: int
    cpu_seconds: float = float("nan")  # CPU the measured processes spent on it

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def per_cpu_second(self) -> float:
        """Events per CPU-second: the rate on one core with nothing else running."""
        return self.events / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


def _us(seconds: float, events: int) -> float:
    """Microseconds per event."""
    return seconds / events * 1e6 if events else float("nan")


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of `pids` so far (processes gone count nothing)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def bench_day() -> date:
    """A past day no earlier run wrote, so every counter of it comes from this run."""
    return date(2025, 1, 1) + timedelta(days=int(time.time() / 60) % 300)


def baseline_bytes(events: int, day: date, seed: int, spread_s: float = 86000) -> list[bytes]:
    """The envelopes the streamer will publish for the same simulated statuses."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    generator = StatusGenerator(seed, start=start, spread_num=spread_s, spread_den=events)
    return [
        wrap_event(
            "update",
            json.dumps(generator.next_status()).encode(),
            instance="http://127.0.0.1",
            stream="public",
            received_at=datetime.now(UTC),
        ).to_bytes()
        for _ in range(events)
    ]


def bare_producer_rate(kafka: KafkaSettings, payloads: list[bytes]) -> StageResult:
    """kafka-python with the streamer's producer settings, sending the same bytes, nothing else."""
    ensure_topics(kafka, [BASELINE_TOPIC])
    producer: KafkaProducer = make_producer(kafka)
    started, cpu_started = time.perf_counter(), time.process_time()
    for n, payload in enumerate(payloads):
        producer.send(BASELINE_TOPIC.name, key=str(n).encode(), value=payload)
    producer.flush()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    producer.close()
    return StageResult("bare kafka-python producer", seconds, len(payloads), cpu)


def aiokafka_batch_producer_rate(kafka: KafkaSettings, payloads: list[bytes]) -> StageResult:
    """aiokafka with the streamer's producer settings, the same bytes built into batches by
    its C record builder (`create_batch`), partitioned by the same key hash."""
    from aiokafka import AIOKafkaProducer

    async def produce() -> StageResult:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            compression_type=COMPRESSION,
            linger_ms=LINGER_MS,
            max_batch_size=BATCH_BYTES,
            max_request_size=MAX_MESSAGE_BYTES,
        )
        await producer.start()
        try:
            partitions = sorted(await producer.partitions_for(BASELINE_TOPIC.name))
            started, cpu_started = time.perf_counter(), time.process_time()
            batches = {p: producer.create_batch() for p in partitions}
            sends = []

            async def ship(partition: int) -> None:
                batch, batches[partition] = batches[partition], producer.create_batch()
                sends.append(
                    await producer.send_batch(batch, BASELINE_TOPIC.name, partition=partition)
                )

            for n, payload in enumerate(payloads):
                key = str(n).encode()
                partition = key_partition(key, len(partitions))  # as the streamer's sender does
                if batches[partition].append(key=key, value=payload, timestamp=None) is None:
                    await ship(partition)  # full: this record opens the next batch
                    batches[partition].append(key=key, value=payload, timestamp=None)
            for partition in partitions:
                if batches[partition].record_count():
                    await ship(partition)
            await asyncio.gather(*sends)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        finally:
            await producer.stop()
        return StageResult("aiokafka producer, batch API", seconds, len(payloads), cpu)

    return asyncio.run(produce())


def _from_the_start(kafka: KafkaSettings, topic: str) -> AIOKafkaConsumer:
    """An aiokafka reader of all of `topic`, in no group (to be started on a running loop)."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )


def bare_aiokafka_rate(kafka: KafkaSettings, topic: str, events: int) -> StageResult:
    """A bare aiokafka loop over `topic` (the fastest Python Kafka client measured here, its
    records decoded in C): every message read, nothing done, timed from the first."""

    async def consume() -> StageResult:
        consumer = _from_the_start(kafka, topic)
        await consumer.start()
        seen, first = 0, 0.0
        try:
            async for _ in consumer:
                if seen == 0:
                    first = time.monotonic()
                seen += 1
                if seen >= events:
                    break
        finally:
            await consumer.stop()
        return StageResult("bare aiokafka consume loop", time.monotonic() - first, seen)

    return asyncio.run(consume())


def wait_until(what: str, check: Callable[[], bool], timeout_s: float, every_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(every_s)
    raise TimeoutError(f"benchmark gave up waiting for {what} after {timeout_s:.0f}s")


def run_skeleton_bench(events: int, out: Callable[[str], None]) -> int:
    stack = LocalStack(StackSettings())
    stack.up()
    kafka, hbase, hdfs = KafkaSettings(), HBaseSettings(), HdfsSettings()
    initialize(kafka, hbase)
    connection = connect(hbase)
    store = MetricStore(connection)
    lake = LakeWriter(webhdfs_client(hdfs), hdfs.lake_root)
    day = bench_day()
    seed = day.toordinal()
    out(f"benchmark: {events} events, event day {day}, seed {seed}")

    baseline = bare_producer_rate(kafka, baseline_bytes(events, day, seed))
    out(f"  baseline  {baseline.name}: {baseline.rate:,.0f} events/s")

    port = 18700 + os.getpid() % 100
    simulator = f"http://127.0.0.1:{port}"
    before = sum(end_offsets(kafka, Topics.EVENTS.name).values())
    with (
        tempfile.TemporaryDirectory(prefix="fedilake-bench-") as tmp,
        cli_processes(Path(tmp)) as start,
    ):
        run_id = f"bench{int(time.time())}"
        processor = start(
            "processor",
            "process",
            env={
                "FEDILAKE_PROCESSOR_APP_ID": f"fedilake-counters-{run_id}",
                "FEDILAKE_PROCESSOR_DATA_DIR": str(Path(tmp) / "faust"),
                # The shared topic holds other runs' events of other days; their event times
                # must not close this run's (past) windows.
                "FEDILAKE_PROCESSOR_ALLOWED_LATENESS_S": str(1000 * 86400),
            },
        )
        sink = start("sink", "sink", "hdfs", env={"FEDILAKE_SINK_COMPACT_INTERVAL_S": "0"})
        # Let both consumers join their groups and catch up before the clock starts.
        time.sleep(15)
        sim = start(
            "simulator",
            "simulate",
            "--port",
            str(port),
            "--events",
            str(events),
            "--rate",
            "0",
            "--seed",
            str(seed),
            "--start",
            f"{day:%Y-%m-%d}T00:00:00Z",
            "--spread",
            "86000",
        )
        wait_until(
            "the simulator",
            lambda: _get(f"{simulator}/api/v1/streaming/health") is not None,
            30,
            0.2,
        )
        streamer = start(
            "streamer",
            "stream",
            env={
                "FEDILAKE_STREAMER_INSTANCE_URL": simulator,
                "FEDILAKE_STREAMER_ACCESS_TOKEN": SimulatorSettings().token.get_secret_value(),
            },
        )
        published = lambda: sum(end_offsets(kafka, Topics.EVENTS.name).values()) - before  # noqa: E731
        t_first = wait_until("the first event in Kafka", lambda: published() > 0, 60, 0.05)
        t_kafka = wait_until("every event in Kafka", lambda: published() >= events, 600, 0.1)
        truth_doc = _get(f"{simulator}/api/v1/_fedilake/ground-truth")
        truth = {b: Counter(t) for b, t in truth_doc["hashtags_by_hour"].items()}
        streamer_rss = rss_mb(streamer.pid)
        t_live = wait_until(
            "live counters to equal the ground truth",
            lambda: store.day_of_hours(Metric.HASHTAG, day)[0] == truth,
            600,
            0.5,
        )
        t_lake = wait_until(
            "the lake to hold every event",
            lambda: lake.count_events(Topics.EVENTS.name, day) >= events,
            600,
            1.0,
        )
        rss = {
            "streamer": streamer_rss,
            "processor": rss_mb(processor.pid),
            "sink": rss_mb(sink.pid),
            "simulator": rss_mb(sim.pid),
        }
    connection.close()

    stages = [
        StageResult("simulator -> streamer -> Kafka (acks=all)", t_kafka - t_first, events),
        StageResult("... -> Faust -> HBase live counters exact", t_live - t_first, events),
        StageResult("... -> HDFS lake, every event landed", t_lake - t_first, events),
    ]
    for stage in stages:
        out(
            f"  {stage.name:44} {stage.rate:>9,.0f} events/s  "
            f"({stage.rate / baseline.rate:.2f} x bare producer)"
        )
    out("  resident memory (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    for status in stack.status():
        if status.pid:
            out(f"    JVM {status.name:9} {rss_mb(status.pid):6.0f} MB")
    return 0


def _get(url: str) -> Any:
    try:
        response = requests.get(url, timeout=5)
        response.raise_for_status()
    except requests.RequestException:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def run_lake_bench(events: int, out: Callable[[str], None], hours: int = 1) -> int:
    """MB/s into the lake through the sink beside raw WebHDFS writes of the same bytes."""
    import threading

    from fedilake.settings import HdfsSinkSettings
    from sinks.compactor import build_compactor
    from sinks.lake import build_sink

    LocalStack(StackSettings()).up(["kafka", "namenode", "datanode"])
    kafka, hdfs = KafkaSettings(), HdfsSettings()
    day = bench_day()
    payloads = baseline_bytes(events, day, day.toordinal(), spread_s=hours * 3600 - 1)
    megabytes = sum(len(p) + 1 for p in payloads) / 1e6
    flush_events = 20000
    out(
        f"benchmark: {events} events, {megabytes:.1f} MB of envelopes over {hours} event "
        f"hour(s) of {day}"
    )

    run = uuid.uuid4().hex[:8]
    client = webhdfs_client(hdfs)
    chunks = [
        b"".join(p + b"\n" for p in payloads[n : n + flush_events])
        for n in range(0, events, flush_events)
    ]
    # The same writes once untimed first: a NameNode and DataNode just started write at
    # half speed until their JIT has warmed up, which made the baseline (and so the ratio)
    # swing 2x between runs.
    for timed in (False, True):
        started = time.perf_counter()
        for n, chunk in enumerate(chunks):
            path = f"{hdfs.lake_root}/_bench/{run}/{'raw' if timed else 'warm-up'}-{n:05d}.json"
            client.write(path, data=chunk, overwrite=True)
        raw = time.perf_counter() - started
    client.delete(f"{hdfs.lake_root}/_bench/{run}", recursive=True)
    out(f"  raw WebHDFS write, {flush_events} events a file: {megabytes / raw:7.1f} MB/s")

    topic = f"fedilake.bench-lake-{run}"
    ensure_topics(kafka, [TopicSpec(topic, partitions=Topics.EVENTS.partitions)])
    producer = make_producer(kafka)  # as the streamer publishes: compressed, acks=all
    for n, payload in enumerate(payloads):
        producer.send(topic, key=str(n).encode(), value=payload)
    producer.flush()
    producer.close()
    fastest = bare_aiokafka_rate(kafka, topic, events)
    out(
        f"  bare aiokafka consumer reading them, nothing else: {megabytes / fastest.seconds:7.1f} "
        f"MB/s ({raw / fastest.seconds:.2f} x raw write; the sink's client, the fastest "
        "Python one here)"
    )

    least = _least_sink_seconds(kafka, hdfs, topic, events, flush_events)
    out(
        f"  least sink (aiokafka -> parse -> gzip -> WebHDFS):  {megabytes / least:7.1f} "
        f"MB/s ({raw / least:.2f} x raw write; only reading, parsing, gzip and writing, no "
        "manifests, renames or group: the ceiling of a Python sink here)"
    )

    # A short time rotation: the last events of the run would otherwise wait out the
    # interval, and the bench would measure the wait (a live topic has no last event).
    settings = HdfsSinkSettings(
        group_id=f"bench-{run}", flush_events=flush_events, flush_interval_s=0.25
    )
    sink = build_sink(settings, kafka, hdfs)
    thread = threading.Thread(target=sink.run, kwargs={"topics": [topic]})
    started = time.perf_counter()
    thread.start()
    wait_until("the sink to land every event", lambda: sink.written >= events, 600, 0.05)
    through_sink = time.perf_counter() - started
    sink.stop()
    thread.join(60)
    out(
        f"  sink (Kafka -> gzip -> WebHDFS, exactly once):      {megabytes / through_sink:7.1f} MB/s "
        f"({raw / through_sink:.2f} x raw write)"
    )

    compactor = build_compactor(settings, hdfs)
    before = compactor.summaries(topic)
    compactor.run(topic, now=datetime.now(UTC) + timedelta(days=400))
    after = compactor.summaries(topic)
    out(
        f"  files per hour: {sum(h.files for h in before) / len(before):.1f} before compaction, "
        f"{sum(h.files for h in after) / len(after):.1f} after ({len(after)} hours, "
        f"{Topics.EVENTS.partitions} partitions)"
    )
    client.delete(f"{hdfs.lake_root}/raw/{topic}", recursive=True)
    client.delete(f"{hdfs.lake_root}/_offsets/{topic}", recursive=True)
    return 0


def _least_sink_seconds(
    kafka: KafkaSettings, hdfs: HdfsSettings, topic: str, events: int, flush_events: int
) -> float:
    """The least any lake sink does, on the fastest Python client: read `topic` with
    aiokafka, parse each envelope for its event hour, gzip each partition's lines and
    write them to WebHDFS every `flush_events` events (on threads, as the sink does)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from fedilake.contracts import Envelope
    from sinks.lake import LANDING_THREADS, encode_part, hour_of

    client = webhdfs_client(hdfs)
    directory = f"{hdfs.lake_root}/_bench/least-{uuid.uuid4().hex[:8]}"

    def land(partition: int, lines: list[bytes], n: int) -> None:
        client.write(f"{directory}/{partition}-{n}.json.gz", data=encode_part(lines))

    async def consume(pool: ThreadPoolExecutor) -> float:
        consumer = _from_the_start(kafka, topic)
        await consumer.start()
        landing: list[Future[None]] = []
        buffers: dict[int, list[bytes]] = {}
        read, flushes, started = 0, 0, time.perf_counter()
        try:
            while read < events:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, records in batches.items():
                    lines = buffers.setdefault(tp.partition, [])
                    for record in records:
                        hour_of(Envelope.from_bytes(record.value).event_time())
                        lines.append(record.value)
                    read += len(records)
                if read >= events or sum(len(b) for b in buffers.values()) >= flush_events:
                    landing += [pool.submit(land, p, b, flushes) for p, b in buffers.items()]
                    buffers, flushes = {}, flushes + 1
            for future in landing:
                future.result()
            return time.perf_counter() - started
        finally:
            await consumer.stop()

    try:
        with ThreadPoolExecutor(max_workers=LANDING_THREADS) as pool:
            return asyncio.run(consume(pool))
    finally:
        client.delete(directory, recursive=True)


def run_streamer_bench(events: int, out: Callable[[str], None], reader_events: int = 2000) -> int:
    """Simulator -> streamer -> Kafka over SSE and WebSocket beside a bare producer, and the
    stream readers alone: ours against Mastodon.py's."""
    LocalStack(StackSettings()).up(["kafka"])
    kafka = KafkaSettings()
    ensure_topics(kafka)
    day = bench_day()
    seed = day.toordinal()
    out(f"benchmark: {events} events, seed {seed}, acks=all, idempotent, {COMPRESSION}")
    payloads = baseline_bytes(events, day, seed)
    baseline = bare_producer_rate(kafka, payloads)
    out(
        f"  baseline  {baseline.name}: {baseline.rate:,.0f} events/s, "
        f"{baseline.per_cpu_second:,.0f} per CPU-second, "
        f"{_us(baseline.cpu_seconds, baseline.events):.0f} us of CPU per event"
    )
    batched = aiokafka_batch_producer_rate(kafka, payloads)
    del payloads
    out(
        f"            {batched.name}: {batched.rate:,.0f} events/s, "
        f"{batched.per_cpu_second:,.0f} per CPU-second, "
        f"{_us(batched.cpu_seconds, batched.events):.0f} us of CPU per event (same bytes and "
        "settings)"
    )
    out(
        "  (the simulator shares the machine's cores with the streamer; per CPU-second counts "
        "only the streamer's own processes, readers and sender)"
    )
    base_port = 18600 + os.getpid() % 100 * 4
    aiokafka_costs: list[float] = []  # per transport: CPU per event with aiokafka's batches
    with tempfile.TemporaryDirectory(prefix="fedilake-bench-") as tmp:
        for n, transport in enumerate(("sse", "websocket")):
            stage = _streamer_stage(
                kafka, Path(tmp) / transport, transport, base_port + n, events, seed + n
            )
            run = stage.result
            out(
                f"  {run.name:44} {run.rate:>9,.0f} events/s  "
                f"({run.rate / baseline.rate:.2f} x bare producer), "
                f"{run.per_cpu_second:,.0f} per CPU-second "
                f"({run.per_cpu_second / baseline.per_cpu_second:.2f} x), "
                f"RSS {stage.readers_mb:.0f} MB readers + {stage.sender_mb:.0f} MB sender process"
            )
            out(
                f"    meanwhile, on the same cores: the simulator spent "
                f"{_us(stage.simulator_cpu_s, run.events):.0f} us and the Kafka broker "
                f"{_us(stage.broker_cpu_s, run.events):.0f} us of CPU per event, the "
                f"streamer {_us(run.cpu_seconds, run.events):.0f} us (readers "
                f"{_us(stage.readers_cpu_s, run.events):.0f}, sender process "
                f"{_us(run.cpu_seconds - stage.readers_cpu_s, run.events):.0f}), the bare "
                f"producer {_us(baseline.cpu_seconds, baseline.events):.0f} us"
            )
            # The same streamer with kafka-python's send (what the bare producer spends)
            # swapped for aiokafka's batches, beside the same simulator and broker.
            swapped = (
                (run.cpu_seconds + stage.simulator_cpu_s + stage.broker_cpu_s) / run.events
                - (baseline.cpu_seconds / baseline.events)
                + batched.cpu_seconds / batched.events
            )
            aiokafka_costs.append(swapped)
        with cli_processes(Path(tmp) / "least") as start:
            simulator, _ = _start_simulator(start, base_port + 2, events, seed + 2)
            least = _least_streamer_rate(kafka, simulator, events)
        out(
            f"  {least.name:44} {least.rate:>9,.0f} events/s  "
            f"({least.rate / baseline.rate:.2f} x bare producer), "
            f"{least.per_cpu_second:,.0f} per CPU-second: our SSE reader, the envelope and "
            "the same producer in one process, no dedup, no spool, no checkpoints"
        )
        target = 0.8 * baseline.rate
        cores = os.cpu_count() or 1
        budget_us = cores / target * 1e6
        out(
            f"  0.8 x the bare producer is {target:,.0f} events/s: {cores} cores then give "
            f"{budget_us:.0f} us of CPU per event to the simulator, the broker and "
            "the streamer together"
        )
        out(
            "  the same streamer sending through aiokafka's batch API instead of kafka-python "
            "would cost the streamer, the simulator and the broker together "
            + " and ".join(f"{cost * 1e6:.0f} us" for cost in aiokafka_costs)
            + f" of CPU per event (sse, websocket), against the {budget_us:.0f} us above"
        )
        # The readers alone, without Kafka: what a listener built on each keeps up with.
        # Each reader gets a simulator of its own holding exactly its statuses.
        with cli_processes(Path(tmp) / "ours") as start:
            simulator, _ = _start_simulator(start, base_port + 3, reader_events, seed)
            ours = _our_reader_rate(simulator, reader_events)
        with cli_processes(Path(tmp) / "mastodon-py") as start:
            simulator, _ = _start_simulator(start, base_port + 3, reader_events, seed)
            theirs = _mastodon_py_reader_rate(simulator, reader_events)
    out(f"  stream readers alone, {reader_events} statuses each, no Kafka:")
    out(f"    fedilake SSE reader (payload bytes kept)  {ours:>9,.0f} events/s")
    out(f"    Mastodon.py stream_public                 {theirs:>9,.0f} events/s")
    return 0


def _start_simulator(
    start: Callable[..., subprocess.Popen[bytes]], port: int, events: int, seed: int
) -> tuple[str, subprocess.Popen[bytes]]:
    process = start(
        "simulator",
        "simulate",
        "--port",
        str(port),
        "--rate",
        "0",
        "--events",
        str(events),
        "--seed",
        str(seed),
    )
    url = f"http://127.0.0.1:{port}"
    wait_until("the simulator", lambda: _get(f"{url}/api/v1/streaming/health") is not None, 30, 0.2)
    return url, process


@dataclass(frozen=True)
class StreamerStage:
    result: StageResult  # CPU: the streamer's own processes
    readers_cpu_s: float  # of which its readers' process (the rest: the sender process)
    readers_mb: float
    sender_mb: float
    simulator_cpu_s: float  # over the same window, on the same cores
    broker_cpu_s: float


def _streamer_stage(
    kafka: KafkaSettings, workdir: Path, transport: str, port: int, events: int, seed: int
) -> StreamerStage:
    broker = running_pid(LocalStack(StackSettings()).paths, "kafka")
    with cli_processes(workdir) as start:
        simulator, simulator_process = _start_simulator(start, port, events, seed)
        before = sum(end_offsets(kafka, Topics.EVENTS.name).values())
        streamer = start(
            "streamer",
            "stream",
            env={
                "FEDILAKE_STREAMER_INSTANCE_URL": simulator,
                "FEDILAKE_STREAMER_TRANSPORT": transport,
                "FEDILAKE_STREAMER_ACCESS_TOKEN": SIMULATOR_TOKEN,
                "FEDILAKE_STREAMER_REFRESH_AGES_S": "",
            },
        )

        def published() -> int:
            return sum(end_offsets(kafka, Topics.EVENTS.name).values()) - before

        def cpu() -> tuple[float, float, float, float]:
            readers = cpu_seconds([streamer.pid])
            return (
                readers + cpu_seconds(child_pids(streamer.pid)),  # and the sender process
                readers,
                cpu_seconds([simulator_process.pid]),
                cpu_seconds([broker] if broker is not None else []),
            )

        t_first = wait_until("the first event in Kafka", lambda: published() > 0, 60, 0.02)
        cpu_first = cpu()
        t_all = wait_until(f"{events} events in Kafka", lambda: published() >= events, 600, 0.05)
        streamer_cpu, readers_cpu, simulator_cpu, broker_cpu = (
            b - a for a, b in zip(cpu_first, cpu(), strict=True)
        )
        name = f"simulator -> streamer ({transport}) -> Kafka"
        return StreamerStage(
            StageResult(name, t_all - t_first, events, streamer_cpu),
            readers_cpu_s=readers_cpu,
            readers_mb=rss_mb(streamer.pid),
            sender_mb=sum(rss_mb(child) for child in child_pids(streamer.pid)),
            simulator_cpu_s=simulator_cpu,
            broker_cpu_s=broker_cpu,
        )


def _least_streamer_rate(kafka: KafkaSettings, simulator: str, events: int) -> StageResult:
    """The least any streamer does: read the stream, wrap each event, send it, in one
    process (our SSE reader, the envelope, the streamer's producer settings)."""
    from streamer.sources import Source, TokenRef
    from streamer.sse import StreamEvent
    from streamer.transports import SseConnection

    producer: KafkaProducer = make_producer(kafka)
    source = Source(simulator, "public", token=TokenRef(value=SIMULATOR_TOKEN))
    connection = SseConnection(source, simulator, SIMULATOR_TOKEN, 30, requests.Session())
    sent, started, cpu_started = 0, 0.0, 0.0
    try:
        for item in connection.items():
            if not isinstance(item, StreamEvent):
                continue
            if sent == 0:
                started, cpu_started = time.perf_counter(), time.process_time()
            envelope = wrap_event(
                item.event,
                item.data,
                instance=simulator,
                stream="public",
                received_at=datetime.now(UTC),
            )
            producer.send(Topics.EVENTS.name, key=envelope.kafka_key(), value=envelope.to_bytes())
            sent += 1
            if sent >= events:
                break
        producer.flush()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        connection.close()
        producer.close()
    return StageResult("simulator -> least streamer (sse) -> Kafka", seconds, sent, cpu)


SIMULATOR_TOKEN = SimulatorSettings().token.get_secret_value()


def _our_reader_rate(simulator: str, count: int) -> float:
    token = SIMULATOR_TOKEN
    from streamer.sources import Source, TokenRef
    from streamer.sse import StreamEvent
    from streamer.transports import SseConnection

    source = Source(simulator, "public", token=TokenRef(value=token))
    connection = SseConnection(source, simulator, token, 30, requests.Session())
    seen, started = 0, time.perf_counter()
    for item in connection.items():
        if isinstance(item, StreamEvent):
            json.loads(item.data)  # what a consumer of the payload would do
            seen += 1
            if seen >= count:
                break
    seconds = time.perf_counter() - started
    connection.close()
    return count / seconds


def _mastodon_py_reader_rate(simulator: str, count: int) -> float:
    token = SIMULATOR_TOKEN
    from mastodon import Mastodon, StreamListener

    class Stop(Exception):
        pass

    class Counting(StreamListener):
        seen = 0

        def on_update(self, status: Any) -> None:
            self.seen += 1
            if self.seen >= count:
                raise Stop

    api = Mastodon(api_base_url=simulator, access_token=token)
    listener = Counting()
    started = time.perf_counter()
    with contextlib.suppress(Stop):
        api.stream_public(listener, run_async=False, reconnect_async=False)
    return listener.seen / (time.perf_counter() - started)
