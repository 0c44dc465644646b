"""`fedilake bench speed`: the speed layer's throughput, HBase cells per event, freshness and memory, from one run.

Beside the worker it measures, on the same topic and in the same run, a bare aiokafka
consume loop (what reading alone costs) and the obvious design: one happybase counter
increment per counter per event.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fedilake.bench import StageResult, bare_aiokafka_rate, rss_mb
from fedilake.contracts import (
    Envelope,
    EventKind,
    Granularity,
    Metric,
    MetricRow,
    Tables,
    encode_count,
)
from fedilake.settings import ProcessorSettings
from fedilake.speed_runs import SpeedRun
from processors.history import History, expected_counters, speed_history
from processors.metrics import snapshot_rows
from processors.statuses import StatusRecord, apply, delta
from sinks.hbase import connect
from streamer.delivery import make_producer

_REPORT = re.compile(
    r"^\[(?P<when>[\d-]+ [\d:]+,\d+)\].*counters: (?P<events>\d+) events, \d+ changed a status, "
    r"(?P<cells>\d+) cells written"
)


@dataclass
class WorkerFigures:
    events_per_s: float
    events: int
    cells: int
    rss_mb: float


def _reports(log: Path) -> list[tuple[float, int, int]]:
    """(wall time, events, cells) of every progress line of the worker's log."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        match = _REPORT.match(line)
        if match:
            # Local time in the log; only differences between lines are used.
            stamp = datetime.strptime(match["when"], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
            when = stamp.timestamp()
            found.append((when, int(match["events"]), int(match["cells"])))
    return found


def worker_throughput(run: SpeedRun, events: int, timeout_s: float = 600) -> WorkerFigures:
    """Start the worker on the filled topic; its rate from its own progress lines."""
    process = run.start_worker()
    log = run.workdir / "worker.log"
    peak_rss = 0.0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run.check_workers()
        peak_rss = max(peak_rss, rss_mb(process.pid))
        reports = _reports(log) if log.exists() else []
        if reports and reports[-1][1] >= events:
            break
        time.sleep(0.25)
    else:
        raise RuntimeError(f"the worker did not get through {events} events\n{run.log_tails()}")
    started = [r for r in reports if r[1] > 0]
    first, last = started[0], next(r for r in reports if r[1] >= events)
    # The first progress line comes up to one report interval after the first event.
    rate = (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else float("inf")
    time.sleep(3 * run.flush_interval_s)  # the last flush
    cells = _reports(log)[-1][2]
    return WorkerFigures(rate, events, cells, peak_rss)


@dataclass
class PacedFigures:
    """A load produced at a steady rate: its freshness, and the cells the worker wrote for it."""

    rate: float  # events/s actually produced
    latencies: list[float]  # seconds from producing a probe to its counter in HBase, sorted
    events: int
    cells: int

    def percentile(self, share: float) -> float:
        return self.latencies[min(len(self.latencies) - 1, int(len(self.latencies) * share))]

    def summary(self) -> str:
        finite = [x for x in self.latencies if x != float("inf")]
        return (
            f"{len(self.latencies)} probes: p50 {self.percentile(0.5):.2f} s, "
            f"p99 {self.percentile(0.99):.2f} s, max {max(finite, default=0.0):.2f} s; "
            f"{self.cells / max(self.events, 1):.2f} HBase cells per event"
        )


def paced_load(
    run: SpeedRun, rate: float, seconds: float, start: datetime, seed: int
) -> PacedFigures:
    """Produce `rate` events/s for `seconds`; measure freshness and the cells written.

    About 20 events a second are probes, statuses whose hashtag no other status has; a
    poller reads the probes' all-time hashtag rows until each appears.
    """
    load = speed_history(int(rate * seconds), seed=seed, start=start, hours=1.0).envelopes
    probe_every = max(50, int(rate / 20))
    log = run.workdir / "worker.log"
    _, events_before, cells_before = _reports(log)[-1]
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()
    table_name = Tables.for_granularity(Granularity.ALL).name

    def poll() -> None:
        connection = connect(run.hbase)
        try:
            table = connection.table(table_name)
            while not done.is_set() or len(seen) < len(sent):
                waiting = [tag for tag in list(sent) if tag not in seen]
                if waiting:
                    keys = [
                        MetricRow(Metric.HASHTAG, Granularity.ALL, "all", t).key() for t in waiting
                    ]
                    now = time.monotonic()
                    for key, _ in table.rows(keys):
                        seen[MetricRow.from_key(key).dimension] = now
                if done.is_set() and time.monotonic() > done_at[0] + 30:
                    return
                time.sleep(0.05)
        finally:
            connection.close()

    done_at = [0.0]
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    producer = make_producer(run.kafka)  # as the streamer publishes: compressed, acks=all
    began = time.monotonic()
    probe_due = True
    for n, envelope in enumerate(load):
        probe_due = probe_due or n % probe_every == 0
        if probe_due and envelope.kind is EventKind.STATUS:
            tag = f"freshprobe{seed}x{n}"
            envelope = _probe(envelope, tag)
            producer.send(run.topic.name, key=envelope.kafka_key(), value=envelope.to_bytes())
            producer.flush()
            sent[tag] = time.monotonic()
            probe_due = False
        else:
            producer.send(run.topic.name, key=envelope.kafka_key(), value=envelope.to_bytes())
        pause = began + (n + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    producer.flush()
    produced_rate = len(load) / (time.monotonic() - began)
    producer.close()
    done_at[0] = time.monotonic()
    done.set()
    poller.join(timeout=60)
    latencies = sorted(seen[tag] - sent[tag] for tag in sent if tag in seen)
    latencies += [float("inf") for tag in sent if tag not in seen]
    # Every event counted, and the flush after it done.
    deadline = time.monotonic() + 60
    while _reports(log)[-1][1] < events_before + len(load) and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(run.flush_interval_s + 1.5)
    _, events_after, cells_after = _reports(log)[-1]
    return PacedFigures(
        produced_rate, latencies, events_after - events_before, cells_after - cells_before
    )


def _probe(envelope: Envelope, tag: str) -> Envelope:
    """The status envelope as a status of its own whose only hashtag is `tag`."""
    status = json.loads(envelope.payload)
    status["tags"] = [{"name": tag, "url": f"https://probe.example/tags/{tag}"}]
    status["reblog"] = None  # a boost counts for no hashtag
    status["uri"] = f"{status['uri']}#{tag}"
    return replace(envelope, uri=status["uri"], payload=json.dumps(status), _parsed=None)


def increments_rate(run: SpeedRun, history: History, events: int) -> StageResult:
    """The obvious design: one happybase write per counter per event, the same counters as
    the worker's: an increment per count, a put per follower count and creation month seen."""
    connection = connect(run.hbase)
    tables = {spec.name: connection.table(spec.name) for spec in Tables.all()}
    records: dict[str, StatusRecord] = {}
    done = 0
    began = time.monotonic()
    try:
        for envelope in history.envelopes[:events]:
            old = records.get(envelope.uri or "")
            new = apply(old, envelope)
            done += 1
            if new is None or not envelope.uri:
                continue
            records[envelope.uri] = new
            for row, change in delta(old, new).items():
                table = tables[Tables.for_granularity(row.granularity).name]
                table.counter_inc(row.key(), b"l:increments", change)
            for snapshot in new.accounts:
                for row in snapshot_rows(snapshot):
                    value = snapshot.followers if row.metric is Metric.FOLLOWERS else 1
                    table = tables[Tables.for_granularity(row.granularity).name]
                    table.put(row.key(), {b"l:increments": encode_count(value)})
    finally:
        connection.close()
    return StageResult("one HBase write per counter per event", time.monotonic() - began, done)


def run_speed_bench(
    events: int,
    out: Callable[[str], None],
    rate: float = 1000.0,
    seconds: float = 30.0,
    flush_interval_s: float = 2.0,
    paced_rate: float = 5000.0,
    paced_seconds: float = 12.0,
) -> int:
    with tempfile.TemporaryDirectory(prefix="fedilake-speed-bench-") as tmp:
        run = SpeedRun(Path(tmp), flush_interval_s=flush_interval_s, report_interval_s=0.5)
        run.setup()
        try:
            start = datetime(2025, 6, 1, tzinfo=UTC) + timedelta(hours=int(time.time()) % 5000)
            history = speed_history(events, start=start, hours=4)
            expected, gauges = expected_counters(history.envelopes)
            out(f"history: {len(history.envelopes)} events {dict(sorted(history.kinds.items()))}")
            out(
                f"worker: flushes at most {flush_interval_s:g} s apart, sooner within a budget "
                f"of {ProcessorSettings().write_budget_cells_per_s:,.0f} HBase cells/s"
            )
            run.produce(history.envelopes)
            bare = bare_aiokafka_rate(run.kafka, run.topic.name, len(history.envelopes))
            out(f"{bare.name:46} {bare.rate:10,.0f} events/s")
            figures = worker_throughput(run, len(history.envelopes))
            out(
                f"{'Faust worker -> HBase (a backlog)':46} {figures.events_per_s:10,.0f} "
                f"events/s  ({figures.events_per_s / bare.rate:.2f} x bare)"
            )
            verdict = run.wait_exact(expected, gauges, timeout_s=120)
            out(f"counters: {verdict.summary()}")
            out(
                f"HBase cells written per event (the backlog): "
                f"{figures.cells / figures.events:.2f} "
                f"({figures.cells:,} cells for {figures.events:,} events)"
            )
            out(f"worker RSS (peak): {figures.rss_mb:.0f} MB")
            later = start + timedelta(hours=4)
            for n, (at_rate, for_s) in enumerate(((paced_rate, paced_seconds), (rate, seconds))):
                paced = paced_load(run, at_rate, for_s, later + timedelta(hours=n), seed=99 + n)
                out(
                    f"at {at_rate:,.0f} events/s (produced {paced.rate:,.0f}/s for {for_s:g} s), "
                    f"freshness over {paced.summary()}"
                )
            out(f"worker RSS after the paced runs: {rss_mb(run.workers['worker'].pid):.0f} MB")
            inc = increments_rate(run, history, min(3000, len(history.envelopes)))
            out(
                f"{inc.name:46} {inc.rate:10,.0f} events/s  "
                f"(the worker is {figures.events_per_s / inc.rate:.0f} x faster)"
            )
            return 0 if verdict.exact else 1
        finally:
            run.stop_workers()
            run.cleanup()


@dataclass
class FoldFigures:
    """One worker over a long backlog, and its restart."""

    events_per_s: float
    rss_mb: float
    folded: int
    records: int  # rebuilt at the restart
    rebuild_s: float  # the restart's rebuilds, summed over partitions


_REBUILT = re.compile(r"from (\d+) status records in ([\d.]+)s")


def backlog_and_restart(run: SpeedRun, history: History) -> FoldFigures:
    """Count the backlog, stop the worker (SIGTERM), start it again: what it rebuilds."""
    figures = worker_throughput(run, len(history.envelopes))
    run.stop_workers()
    log = run.workdir / "worker.log"
    folded = sum(int(n) for n in re.findall(r"folded (\d+) statuses", log.read_text()))
    mark = len(log.read_text())
    run.start_worker()
    deadline = time.monotonic() + 180
    while len(rebuilt := _REBUILT.findall(log.read_text()[mark:])) < 4:
        run.check_workers()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the restarted worker did not rebuild\n{run.log_tails()}")
        time.sleep(0.2)
    run.stop_workers()
    return FoldFigures(
        figures.events_per_s,
        figures.rss_mb,
        folded,
        sum(int(n) for n, _ in rebuilt),
        sum(float(s) for _, s in rebuilt),
    )


def run_fold_bench(
    events: int, out: Callable[[str], None], days: int = 10, retention_h: float = 50.0
) -> int:
    """The same backlog of `days` of event time through a worker that keeps every record,
    then through one that folds statuses `retention_h` old: throughput, memory, and the
    records a restart rebuilds."""
    start = datetime(2025, 3, 1, tzinfo=UTC) + timedelta(hours=int(time.time()) % 5000)
    history = speed_history(events, start=start, hours=days * 24)
    out(f"history: {len(history.envelopes)} events over {days} days of event time")
    results = {}
    for retention in (None, retention_h):
        name = "every record kept" if retention is None else f"folding at {retention:g} h"
        with tempfile.TemporaryDirectory(prefix="fedilake-fold-bench-") as tmp:
            env = {}
            if retention is not None:
                env["FEDILAKE_PROCESSOR_STATUS_RETENTION_S"] = str(retention * 3600)
            run = SpeedRun(Path(tmp), report_interval_s=0.5, settings_env=env)
            run.setup()
            try:
                run.produce(history.envelopes)
                results[name] = figures = backlog_and_restart(run, history)
            finally:
                run.stop_workers()
                run.cleanup()
        out(
            f"{name:22} {figures.events_per_s:8,.0f} events/s, RSS {figures.rss_mb:4.0f} MB, "
            f"{figures.folded:7,} statuses folded; restart rebuilds {figures.records:7,} "
            f"records in {figures.rebuild_s:.1f} s"
        )
    kept, folding = results.values()
    out(
        f"folding / keeping: {folding.events_per_s / kept.events_per_s:.2f} x the throughput, "
        f"{folding.records / max(kept.records, 1):.2f} x the records rebuilt, "
        f"{folding.rebuild_s / max(kept.rebuild_s, 0.001):.2f} x the rebuild time"
    )
    return 0
