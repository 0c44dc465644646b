"""The speed layer end to end: envelopes in Kafka -> Faust workers -> HBase, every counter exact.

The history has edits, deletes, refreshes, boosts and duplicated messages; the workers
are killed with SIGKILL mid-stream and rebalanced; HBase must still equal the ground
truth cell for cell (every metric, hour, day and all time, and the follower gauges).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedilake.contracts import EventKind, Granularity, Metric
from fedilake.speed_runs import SpeedRun, counted_metrics
from fedilake.stack.control import LocalStack
from processors.history import History, expected_counters, speed_history
from sinks.hbase import LiveLeases, connect

pytestmark = pytest.mark.e2e

EVENTS = 12_000


@pytest.fixture
def run(stack: LocalStack, tmp_path: Path) -> Iterator[SpeedRun]:
    speed = SpeedRun(tmp_path, flush_interval_s=0.5)
    speed.setup()
    try:
        yield speed
    finally:
        speed.stop_workers()
        print(speed.log_tails(25))
        speed.cleanup()


def history(seed: int) -> History:
    # Event time well in the past and different per run; the windows are still open
    # because the watermark comes from the events, not from the wall clock.
    start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=int(time.time()) % 5000)
    return speed_history(EVENTS, seed=seed, start=start, hours=5)


def wait_until_consumed(run: SpeedRun, events: float, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run.check_workers()
        done = run.committed()
        if done >= events:
            return done
        time.sleep(0.5)
    raise AssertionError(f"the worker did not get through {events:.0f} events")


def test_counters_stay_exact_through_kills(run: SpeedRun) -> None:
    events = history(seed=11)
    expected, gauges = expected_counters(events.envelopes)
    kinds = events.kinds
    assert kinds["edit"] > 100 and kinds["delete"] > 100 and kinds["refresh"] > 1000
    assert kinds["duplicate"] > 100
    metrics = counted_metrics(expected)
    assert all(metrics.get(m) for m in Metric if m is not Metric.FOLLOWERS), metrics

    half = len(events.envelopes) // 2
    run.produce(events.envelopes[:half])
    run.start_worker()
    wait_until_consumed(run, 0.2 * EVENTS)
    run.kill_worker()  # mid-stream: records, counters and offsets as a crash leaves them
    run.produce(events.envelopes[half:])
    run.start_worker()
    wait_until_consumed(run, 0.7 * EVENTS)
    run.kill_worker()
    run.start_worker()

    verdict = run.wait_exact(expected, gauges, timeout_s=240)
    assert verdict.exact, verdict.summary()
    # The generator's own hashtag counts (an independent implementation) agree too.
    hourly = {
        (row.bucket, row.dimension): value
        for row, value in expected.items()
        if row.metric is Metric.HASHTAG and row.granularity is Granularity.HOUR
    }
    truth = {
        (hour, tag): count
        for hour, counts in events.truth.hashtags_by_hour.items()
        for tag, count in counts.items()
    }
    assert hourly == truth


def wait_for_log(run: SpeedRun, name: str, pattern: str, count: int = 1) -> None:
    path = run.workdir / f"{name}.log"
    deadline = time.monotonic() + 120
    while len(re.findall(pattern, path.read_text(errors="replace"))) < count:
        run.check_workers()
        assert time.monotonic() < deadline, f"{name} never logged {pattern!r} {count} times"
        time.sleep(0.5)


def test_two_workers_on_four_partitions_count_as_one(run: SpeedRun) -> None:
    events = history(seed=12)
    expected, gauges = expected_counters(events.envelopes)
    third = len(events.envelopes) // 3
    run.produce(events.envelopes[:third])
    run.start_worker("worker-a")
    wait_until_consumed(run, 0.1 * EVENTS)
    run.start_worker("worker-b")  # a rebalance mid-stream: partitions move to worker-b
    wait_for_log(run, "worker-b", "rebuilt the counters of partition")
    run.produce(events.envelopes[third:])  # the rest is counted by both workers
    verdict = run.wait_exact(expected, gauges, timeout_s=240)
    assert verdict.exact, verdict.summary()


def test_a_paused_worker_is_fenced_when_it_wakes(stack: LocalStack, tmp_path: Path) -> None:
    """A worker is frozen (SIGSTOP) mid-stream, past its session: the other takes its
    partitions over and counts everything. Then it wakes with a batch and counters of its
    own not yet written; neither reaches the changelog or HBase, and it stops."""
    run = SpeedRun(
        tmp_path,
        flush_interval_s=0.5,
        settings_env={"FEDILAKE_PROCESSOR_SESSION_TIMEOUT_S": "8"},
    )
    run.setup()
    try:
        events = history(seed=14)
        expected, gauges = expected_counters(events.envelopes)
        half = len(events.envelopes) // 2
        run.produce(events.envelopes[:half])
        run.start_worker("worker-a")
        run.start_worker("worker-b")
        wait_for_log(run, "worker-b", r"partition \d: writing its live column")
        wait_for_log(run, "worker-a", r"partition \d: writing its live column")
        wait_until_consumed(run, 0.3 * EVENTS)
        run.pause_worker("worker-a")  # whatever it was doing, with whatever it had pending
        run.produce(events.envelopes[half:])
        # worker-b writes all four partitions: two of them after taking them over.
        wait_for_log(run, "worker-b", r"partition \d: writing its live column", count=4)
        verdict = run.wait_exact(expected, gauges, timeout_s=240)
        assert verdict.exact, verdict.summary()

        paused = run.resume_worker("worker-a")
        try:
            # It finds out at its next flush or commit, or when it asks the group again.
            deadline = time.monotonic() + 60
            while paused.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            log = (run.workdir / "worker-a.log").read_text(errors="replace")
            if paused.returncode is not None:
                assert paused.returncode == 70, log[-3000:]
                assert re.search(r"another worker|ProducerFenced", log), log[-3000:]
                # Restarted on its own database, it takes two partitions back: what it sent
                # while paused was aborted, so its replay does not bring it back.
                rebuilt = len(re.findall("rebuilt the counters of partition", log))
                run.start_worker("worker-a")
                wait_for_log(run, "worker-a", "rebuilt the counters of partition", rebuilt + 1)
            verdict = run.wait_exact(expected, gauges, timeout_s=120)
            assert verdict.exact, verdict.summary()
        finally:
            if paused.poll() is None:
                paused.terminate()
                paused.wait(60)
    finally:
        run.stop_workers()
        print(run.log_tails(25))
        run.cleanup()


def test_statuses_past_the_retention_fold_and_still_count(
    stack: LocalStack, tmp_path: Path
) -> None:
    """Old statuses leave the worker's records for the settled totals. After a kill -9, a
    worker with a database of its own rebuilds from the changelog (totals and recent
    records): still exact, and a late copy of a folded status does not count twice."""
    # Two stretches of five hours, four days apart: with a retention of 60 h, the first
    # one's statuses fold once the second one's hours are written.
    run = SpeedRun(
        tmp_path,
        flush_interval_s=0.5,
        report_interval_s=1.0,
        settings_env={"FEDILAKE_PROCESSOR_STATUS_RETENTION_S": str(60 * 3600)},
    )
    run.setup()
    try:
        start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=int(time.time()) % 5000)
        old = speed_history(3000, seed=21, start=start, hours=5)
        # The same seed: the same accounts, with the same creation dates.
        recent = speed_history(3000, seed=21, start=start + timedelta(days=4), hours=5)
        assert not {e.uri for e in old.envelopes} & {e.uri for e in recent.envelopes}
        expected, gauges = expected_counters(old.envelopes + recent.envelopes)
        recent_statuses = len({e.uri for e in recent.envelopes})

        run.produce(old.envelopes + recent.envelopes)
        run.start_worker()
        log_path = run.workdir / "worker.log"
        old_statuses = len({e.uri for e in old.envelopes})
        deadline = time.monotonic() + 180
        while (folded := _folded(log_path)) < old_statuses * 0.95:
            run.check_workers()
            assert time.monotonic() < deadline, f"{folded} of {old_statuses} old statuses folded"
            time.sleep(0.5)
        verdict = run.wait_exact(expected, gauges, timeout_s=120)
        assert verdict.exact, verdict.summary()

        run.kill_worker()
        late = [e for e in old.envelopes if e.kind is EventKind.STATUS]
        run.produce(late)
        run.start_worker("new-owner")  # no local state: no written watermark either
        log_path = run.workdir / "new-owner.log"
        deadline = time.monotonic() + 120
        pattern = r"partition \d+ from (\d+) status records"
        while len(rebuilt := re.findall(pattern, log_path.read_text())) < 4:
            run.check_workers()
            assert time.monotonic() < deadline, "the restarted worker did not rebuild"
            time.sleep(0.5)
        assert sum(int(n) for n in rebuilt) <= recent_statuses  # the old ones are gone
        wait_until_consumed(run, len(old.envelopes) + len(recent.envelopes) + len(late))
        verdict = run.wait_exact(expected, gauges, timeout_s=120)
        assert verdict.exact, verdict.summary()
        deadline = time.monotonic() + 30  # a report after the last batch (one a second)
        pattern = r"(\d+) changes to folded statuses"
        while (
            max(map(int, re.findall(pattern, log_path.read_text())), default=0) < len(late) * 0.95
        ):
            assert time.monotonic() < deadline, "no report counts the changes to folded statuses"
            time.sleep(0.5)
    finally:
        run.stop_workers()
        print(run.log_tails(25))
        run.cleanup()


def _folded(log_path: Path) -> int:
    return sum(int(n) for n in re.findall(r"folded (\d+) statuses", log_path.read_text()))


def test_leases_of_another_kafka_are_taken_over_once_the_fence_is_proven(run: SpeedRun) -> None:
    """Kafka was reset (or a producer id expired): the leases name producer ids the new
    fences cannot be ordered against. The worker proves its fence in Kafka, then writes."""
    connection = connect(run.hbase)
    try:
        leases = LiveLeases(connection)
        for partition in range(run.topic.partitions):
            leases.take(partition, (10**9, 7), time.time_ns() // 1_000_000)
    finally:
        connection.close()
    events = history(seed=15)
    expected, gauges = expected_counters(events.envelopes[: EVENTS // 4])
    run.produce(events.envelopes[: EVENTS // 4])
    run.start_worker()
    verdict = run.wait_exact(expected, gauges, timeout_s=120)
    assert verdict.exact, verdict.summary()
    log = (run.workdir / "worker.log").read_text(errors="replace")
    proven = re.findall(r"partition (\d): the live lease .* ours stands in Kafka", log)
    assert {int(p) for p in proven} == set(range(run.topic.partitions)), log[-3000:]
