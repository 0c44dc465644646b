"""The walking skeleton end to end: simulator -> streamer -> Kafka -> Faust -> HBase, Kafka -> HDFS lake,
and the Airflow DAG running the Hadoop Streaming recount; live, batch and ground truth must agree."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from hdfs import InsecureClient

from fedilake.airflow_env import ensure_airflow_venv, run_dag_test
from fedilake.contracts import Metric, Topics, raw_day_dir
from fedilake.pipeline import cli_processes
from fedilake.settings import HBaseSettings, HdfsSettings
from fedilake.stack.control import LocalStack
from sinks.hbase import MetricStore, connect
from sinks.lake import LakeWriter

pytestmark = pytest.mark.e2e

EVENTS = 3000
RATE = 600.0
HOURS = 6


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def live_and_batch(day: date) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]]]:
    connection = connect(HBaseSettings())
    try:
        return MetricStore(connection).day_of_hours(Metric.HASHTAG, day)
    finally:
        connection.close()


def lake_events(day: date) -> int:
    client = InsecureClient(HdfsSettings().webhdfs_url, user=HdfsSettings().user)
    return LakeWriter(client, HdfsSettings().lake_root).count_events(Topics.EVENTS.name, day)


def unused_day() -> date:
    """A past day no other run has used, so every row of it comes from this test: none of
    the lake's (other tests publish statuses of fixed days, which a sink lands); on or
    after the DAG's start date, or Airflow schedules no task for it."""
    client = InsecureClient(HdfsSettings().webhdfs_url, user=HdfsSettings().user)
    root, first = HdfsSettings().lake_root, int(time.time() / 60)
    for n in range(300):
        day = date(2026, 1, 1) + timedelta(days=(first + n) % 300)
        if client.status(raw_day_dir(Topics.EVENTS.name, day, root), strict=False) is None:
            return day
    raise AssertionError("every day of 2026's first 300 has lake data; drop /fedilake/raw")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    with cli_processes(tmp_path) as start:
        yield start
    for log in sorted(tmp_path.glob("*.log")):
        tail = "\n".join(log.read_text().splitlines()[-15:])
        sys.stderr.write(f"--- {log.name} (tail)\n{tail}\n")


def listening_url(log_path: Path) -> str | None:
    """The simulator's URL, once its log says it listens (it binds a port of the system's choice)."""
    text = log_path.read_text() if log_path.exists() else ""
    found = re.search(r"simulator listening on (http://[^\s,]+)", text)
    return found.group(1) if found else None


def test_live_batch_and_ground_truth_agree(
    stack: LocalStack, daemons: Callable[..., Any], tmp_path: Path
) -> None:
    day = unused_day()
    run_id = f"e2e{int(time.time())}"
    airflow_python = ensure_airflow_venv()
    assert airflow_python.exists()

    daemons(
        "processor",
        "process",
        env={
            "FEDILAKE_PROCESSOR_APP_ID": f"fedilake-counters-{run_id}",
            "FEDILAKE_PROCESSOR_DATA_DIR": str(tmp_path / "faust"),
            # The shared topic holds other runs' events, some of today; their event times
            # must not close this run's (past) windows.
            "FEDILAKE_PROCESSOR_ALLOWED_LATENESS_S": str(
                (datetime.now(UTC).date() - day).days * 86400 + 30 * 86400
            ),
        },
    )
    # The sink does not compact on its own here: the DAG's close_day task does it, before
    # the recount reads the day.
    daemons(
        "sink",
        "sink",
        "hdfs",
        env={
            "FEDILAKE_SINK_FLUSH_INTERVAL_S": "2",
            "FEDILAKE_SINK_COMPACT_INTERVAL_S": "0",
            # A group of its own: a member the lake scenario's kill -9 left in the default
            # group would hold its rebalance up (until the member's session expires).
            "FEDILAKE_SINK_GROUP_ID": f"fedilake-hdfs-sink-{run_id}",
        },
    )
    daemons(
        "simulator",
        "simulate",
        "--port",
        "0",
        "--events",
        str(EVENTS),
        "--rate",
        str(RATE),
        "--seed",
        str(day.toordinal()),
        "--start",
        f"{day:%Y-%m-%d}T00:00:00Z",
        "--spread",
        str(HOURS * 3600),
    )
    simulator = wait_for(
        "the simulator", lambda: listening_url(tmp_path / "simulator.log"), 30, 0.5
    )
    wait_for("the simulator", lambda: _get(f"{simulator}/api/v1/streaming/health"), 30, 0.5)
    daemons(
        "streamer",
        "stream",
        env={
            "FEDILAKE_STREAMER_INSTANCE_URL": simulator,
            "FEDILAKE_STREAMER_ACCESS_TOKEN": "fedilake-simulator-token",
        },
    )

    truth_doc = wait_for(
        "the simulator to send every event",
        lambda: (doc := _get(f"{simulator}/api/v1/_fedilake/ground-truth")) and doc["done"] and doc,
        120,
    )
    assert truth_doc["sent"] == EVENTS
    truth = {bucket: Counter(tags) for bucket, tags in truth_doc["hashtags_by_hour"].items()}
    assert len(truth) == HOURS and sum(sum(c.values()) for c in truth.values()) > EVENTS

    wait_for(
        "live counters to equal the ground truth", lambda: live_and_batch(day)[0] == truth, 180, 2
    )
    wait_for("the lake to hold every event", lambda: lake_events(day) == EVENTS, 120, 2)

    result = run_dag_test(
        "fedilake_nightly",
        day,
        env={
            **os.environ,
            "FEDILAKE_BIN": str(Path(sys.executable).parent / "fedilake"),
            "FEDILAKE_DAG_RETRIES": "0",
            # The day is long past and the pipeline has drained: partitions idle for a
            # few seconds follow the wall clock, so the day counts as closed.
            "FEDILAKE_SINK_IDLE_AFTER_S": "1",
            "FEDILAKE_SINK_CLOSE_GRACE_S": "0",
        },
        airflow_home=tmp_path / "airflow",
    )
    assert result.succeeded, result.output_tail
    assert result.task_states == {"close_day": "success", "recount_hashtags": "success"}

    live, batch = live_and_batch(day)
    assert live == truth
    assert batch == truth


def _get(url: str) -> Any:
    try:
        response = requests.get(url, timeout=5)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except json.JSONDecodeError:
        return response.text or True
