"""The nightly DAG under the real Airflow, in its own venv, through `dag.test`."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from datetime import date
from pathlib import Path

import pytest

from fedilake.airflow_env import (
    AIRFLOW_VENV_DIR,
    DAGS_FOLDER,
    check_dag_folder,
    ensure_airflow_venv,
    run_dag_test,
)
from fedilake.settings import REPO_ROOT

pytestmark = pytest.mark.integration

DAG_ID = "fedilake_nightly"


@pytest.fixture(scope="session")
def airflow_venv() -> Path:
    """One Airflow venv for every run (built once, then reused across sessions)."""
    ensure_airflow_venv(AIRFLOW_VENV_DIR)
    return AIRFLOW_VENV_DIR


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One metadata database for the session: migrated once, each run on its own day."""
    return tmp_path_factory.mktemp("airflow-home")


def _fake_fedilake(directory: Path, *, exit_code: int = 0) -> tuple[Path, Path]:
    """A stand-in `fedilake` that records each call's argv (one per line, a `--` line after each
    call) and one FEDILAKE_ setting."""
    record = directory / "argv.txt"
    script = directory / "fake-fedilake"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" -- >> '{record}'\n"
        f"printf '%s\\n' \"$FEDILAKE_TEST_MARKER\" > '{record}.env'\n"
        f"exit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, record


def _env(**extra: str) -> Mapping[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_VAR_")}
    env.update({"FEDILAKE_DAG_RETRIES": "0", "FEDILAKE_TEST_MARKER": "passed-through"}, **extra)
    return env


def test_dag_folder_imports_cleanly(airflow_venv: Path, airflow_home: Path) -> None:
    # An __init__.py here would shadow the installed `airflow` package.
    assert not (REPO_ROOT / "airflow" / "__init__.py").exists()
    assert not (DAGS_FOLDER / "__init__.py").exists()

    result = check_dag_folder(env=_env(), airflow_home=airflow_home, venv_dir=airflow_venv)

    assert result.import_errors == {}, result.output_tail
    assert DAG_ID in result.dag_ids
    assert result.succeeded, result.output_tail


def test_import_errors_are_reported(airflow_venv: Path, airflow_home: Path, tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "broken_dag.py").write_text("from airflow.sdk import DAG\nraise ValueError('boom')\n")

    result = run_dag_test(
        DAG_ID,
        date(2026, 11, 20),
        env=_env(),
        airflow_home=airflow_home,
        venv_dir=airflow_venv,
        dags_folder=dags,
    )

    assert result.returncode != 0
    assert not result.succeeded
    assert "boom" in "".join(result.import_errors.values()), result.output_tail
    assert result.task_states == {}


def test_nightly_run_recounts_the_day_of_its_logical_date(
    airflow_venv: Path, airflow_home: Path, tmp_path: Path
) -> None:
    fake, record = _fake_fedilake(tmp_path)

    result = run_dag_test(
        DAG_ID,
        date(2026, 11, 20),
        env=_env(FEDILAKE_BIN=str(fake)),
        airflow_home=airflow_home,
        venv_dir=airflow_venv,
    )

    assert result.returncode == 0, result.output_tail
    assert result.task_states == {"close_day": "success", "recount_hashtags": "success"}, (
        result.output_tail
    )
    assert result.succeeded
    assert record.read_text().splitlines() == [
        *["lake", "close", "--day", "2026-11-20", "--"],
        *["batch", "hashtags", "--day", "2026-11-20", "--"],
    ]
    assert Path(f"{record}.env").read_text().strip() == "passed-through"


def test_airflow_variable_takes_precedence_over_env(
    airflow_venv: Path, airflow_home: Path, tmp_path: Path
) -> None:
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    good, record = _fake_fedilake(tmp_path / "good")
    bad, bad_record = _fake_fedilake(tmp_path / "bad", exit_code=1)

    # AIRFLOW_VAR_<KEY> is how Airflow reads a Variable from the environment.
    result = run_dag_test(
        DAG_ID,
        date(2026, 11, 22),
        env=_env(FEDILAKE_BIN=str(bad), AIRFLOW_VAR_FEDILAKE_BIN=str(good)),
        airflow_home=airflow_home,
        venv_dir=airflow_venv,
    )

    assert result.succeeded, result.output_tail
    assert record.read_text().splitlines()[-5:] == [
        "batch",
        "hashtags",
        "--day",
        "2026-11-22",
        "--",
    ]
    assert not bad_record.exists()


def test_failing_fedilake_fails_the_task(
    airflow_venv: Path, airflow_home: Path, tmp_path: Path
) -> None:
    fake, record = _fake_fedilake(tmp_path, exit_code=1)

    result = run_dag_test(
        DAG_ID,
        date(2026, 11, 21),
        env=_env(FEDILAKE_BIN=str(fake)),
        airflow_home=airflow_home,
        venv_dir=airflow_venv,
    )

    # A day that is not closed yet fails the first task, and the recount never runs.
    assert record.read_text().splitlines() == ["lake", "close", "--day", "2026-11-21", "--"]
    assert result.returncode != 0
    assert result.task_states["close_day"] == "failed", result.output_tail
    assert result.task_states["recount_hashtags"] != "success", result.output_tail
    assert not result.succeeded
