"""The nightly reconciliation DAG: recompute one day's metrics from the lake with `fedilake batch`.

This file runs inside the Airflow virtual environment, which cannot import fedilake (Airflow
and faust-streaming pin conflicting dependencies): every task shells out to the `fedilake`
console script of the main environment and passes the environment through, so the
`FEDILAKE_*` settings reach it unchanged.

Which executable runs: the Airflow Variable `fedilake_bin` if set, else the environment
variable `FEDILAKE_BIN`, else `fedilake` from PATH. `FEDILAKE_DAG_RETRIES` (default 2) sets
the retries of every task.

Which day a run processes: the day named by its logical date. The schedule keeps data
intervals, so the scheduled run that starts after midnight of D+1 has logical date D and
data interval [D, D+1), and processes D, a closed day; `dag.test(logical_date=D)` and
`airflow dags test fedilake_nightly D` process D as well. (A manual run's data interval is
the day *before* its logical date, which is why the interval start is not used directly.)
A run without a logical date processes the day its data interval starts on.
"""

from __future__ import annotations

import os
import shlex
from datetime import UTC, date, datetime, timedelta

from airflow.sdk import DAG, CronDataIntervalTimetable, Variable, task

FEDILAKE_BIN_VARIABLE = "fedilake_bin"
FEDILAKE_BIN_ENV = "FEDILAKE_BIN"
RETRIES_ENV = "FEDILAKE_DAG_RETRIES"
DEFAULT_RETRIES = 2


def partition_day(logical_date: datetime | None, data_interval_start: datetime | None) -> date:
    """The UTC day whose lake partition a run reads and whose batch values it writes."""
    anchor = logical_date if logical_date is not None else data_interval_start
    if anchor is None:
        raise ValueError("a run needs a logical date or a data interval to pick its day")
    return anchor.astimezone(UTC).date()


def fedilake_executable() -> str:
    """The `fedilake` console script to run, looked up when the task runs, not at parse time."""
    configured = Variable.get(FEDILAKE_BIN_VARIABLE, default=None)
    return configured or os.environ.get(FEDILAKE_BIN_ENV) or "fedilake"


def _retries() -> int:
    raw = os.environ.get(RETRIES_ENV, "")
    return int(raw) if raw.strip() else DEFAULT_RETRIES


with DAG(
    dag_id="fedilake_nightly",
    description="Recompute each day's metrics from the HDFS lake and overwrite the live counters",
    # A data-interval schedule (not the cron trigger "@daily" gives in Airflow 3): the run for
    # day D starts once D is over and carries the interval [D, D+1).
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={
        "owner": "fedilake",
        "retries": _retries(),
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=2),
    },
    tags=["fedilake", "batch"],
    doc_md=__doc__,
):

    @task.bash(task_id="recount_hashtags")
    def recount_hashtags(
        logical_date: datetime | None = None, data_interval_start: datetime | None = None
    ) -> str:
        """Recount the day's hashtags from its lake partition; rerunning overwrites the same day."""
        day = partition_day(logical_date, data_interval_start)
        return shlex.join([fedilake_executable(), "batch", "hashtags", "--day", day.isoformat()])

    @task.bash(task_id="close_day")
    def close_day(
        logical_date: datetime | None = None, data_interval_start: datetime | None = None
    ) -> str:
        """Compact the day's closed hours; fail (and be retried) until the whole day is closed,
        so the recount never reads files that compaction is about to replace."""
        day = partition_day(logical_date, data_interval_start)
        return shlex.join([fedilake_executable(), "lake", "close", "--day", day.isoformat()])

    close_day() >> recount_hashtags()
