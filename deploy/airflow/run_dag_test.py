"""Run one fedilake DAG once with the real Airflow (`dag.test`) and report each task's state.

Runs with the python of the Airflow virtual environment, never the main one; fedilake calls
it through `fedilake.airflow_env.run_dag_test`. By hand, from the repository root:

    .venv-airflow/bin/python -I deploy/airflow/run_dag_test.py check
    .venv-airflow/bin/python -I deploy/airflow/run_dag_test.py test fedilake_nightly 2026-11-20

It uses its own AIRFLOW_HOME with a SQLite metadata database (migrated when needed), the
repository's `airflow/dags` folder and no example DAGs. The last line it prints is one JSON
object (also written to `--result-file` when given); the exit code is 0 when every task
succeeded, 1 when a task did not, 2 on bad arguments, 3 on DAG import errors and 4 when the
DAG is not in the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

RESULT_TAG = "fedilake.run_dag_test/1"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_AIRFLOW_HOME = REPO_ROOT / ".fedilake" / "airflow"
DEFAULT_DAGS_FOLDER = REPO_ROOT / "airflow" / "dags"

EXIT_TASK_NOT_SUCCEEDED = 1
EXIT_IMPORT_ERRORS = 3
EXIT_DAG_NOT_FOUND = 4


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--airflow-home", type=Path, default=DEFAULT_AIRFLOW_HOME)
    parser.add_argument("--dags-folder", type=Path, default=DEFAULT_DAGS_FOLDER)
    parser.add_argument("--result-file", type=Path, default=None)
    modes = parser.add_subparsers(dest="mode", required=True)
    modes.add_parser("check", help="import the DAG folder and report import errors")
    test = modes.add_parser("test", help="run one DAG with dag.test for one day")
    test.add_argument("dag_id")
    test.add_argument("day", type=date.fromisoformat, help="YYYY-MM-DD, run at 00:00 UTC")
    return parser.parse_args(argv)


def _configure_airflow(airflow_home: Path, dags_folder: Path) -> None:
    """Point Airflow at its own home, DAG folder and SQLite database before it is imported."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(airflow_home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{airflow_home / 'airflow.db'}"
    # The repository root holds a folder named `airflow/` (the DAGs): keep it off sys.path so
    # `import airflow` can only find the installed package.
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != REPO_ROOT]


def _migrate_if_needed() -> None:
    from airflow.utils import db

    try:
        db.check_migrations(timeout=1)
    except TimeoutError:
        db.initdb()


def _emit(result: dict[str, Any], result_file: Path | None) -> None:
    line = json.dumps({"result": RESULT_TAG, **result}, sort_keys=True)
    if result_file is not None:
        result_file.write_text(line + "\n")
    sys.stderr.flush()
    print(line, flush=True)  # noqa: T201 - the runner's one line of output


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    airflow_home = args.airflow_home.resolve()
    dags_folder = args.dags_folder.resolve()
    _configure_airflow(airflow_home, dags_folder)

    from airflow.dag_processing.dagbag import DagBag

    _migrate_if_needed()
    bag = DagBag(dag_folder=dags_folder)
    report: dict[str, Any] = {
        "mode": args.mode,
        "airflow_home": str(airflow_home),
        "dags_folder": str(dags_folder),
        "dag_ids": sorted(bag.dag_ids),
        "import_errors": dict(bag.import_errors),
    }
    if bag.import_errors:
        _emit(report, args.result_file)
        return EXIT_IMPORT_ERRORS
    if args.mode == "check":
        _emit(report, args.result_file)
        return 0

    dag = bag.dags.get(args.dag_id)
    report["dag_id"] = args.dag_id
    report["day"] = args.day.isoformat()
    if dag is None:
        report["error"] = f"DAG {args.dag_id!r} not found in {dags_folder}"
        _emit(report, args.result_file)
        return EXIT_DAG_NOT_FOUND

    logical_date = datetime(args.day.year, args.day.month, args.day.day, tzinfo=UTC)
    started = time.monotonic()
    run = dag.test(logical_date=logical_date)
    report["dag_test_s"] = round(time.monotonic() - started, 2)
    states = {ti.task_id: (str(ti.state) if ti.state else None) for ti in run.get_task_instances()}
    report["run_state"] = str(run.state) if run.state else None
    report["task_states"] = states
    _emit(report, args.result_file)
    succeeded = bool(states) and all(state == "success" for state in states.values())
    return 0 if succeeded else EXIT_TASK_NOT_SUCCEEDED


if __name__ == "__main__":
    sys.exit(main())
