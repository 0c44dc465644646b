"""The Airflow side of fedilake from the main environment: its own venv and one-shot DAG runs.

Airflow 3.3 and faust-streaming pin conflicting versions of croniter, so Airflow lives in a
virtual environment of its own (`<repo>/.venv-airflow`), built from
`deploy/airflow/requirements.txt` pinned by `deploy/airflow/constraints-3.11.txt`. Nothing here
imports Airflow: DAG runs go through `deploy/airflow/run_dag_test.py` executed with that
environment's python.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from fedilake.settings import REPO_ROOT, StackSettings

logger = logging.getLogger(__name__)

AIRFLOW_VENV_DIR = REPO_ROOT / ".venv-airflow"
AIRFLOW_DEPLOY_DIR = REPO_ROOT / "deploy" / "airflow"
AIRFLOW_REQUIREMENTS = AIRFLOW_DEPLOY_DIR / "requirements.txt"
AIRFLOW_CONSTRAINTS = AIRFLOW_DEPLOY_DIR / "constraints-3.11.txt"
DAG_TEST_RUNNER = AIRFLOW_DEPLOY_DIR / "run_dag_test.py"
DAGS_FOLDER = REPO_ROOT / "airflow" / "dags"
AIRFLOW_PYTHON = "python3.11"
STAMP_FILE = ".fedilake-requirements.sha256"

_RESULT_TAG = "fedilake.run_dag_test/1"
_TAIL_LINES = 80


class AirflowEnvError(RuntimeError):
    """The Airflow environment cannot be built or the runner could not report a result."""


@dataclass(frozen=True)
class DagTestResult:
    """What one run of the DAG runner reported: per-task final states, exit code, output tail."""

    returncode: int
    dag_id: str | None = None
    day: date | None = None
    run_state: str | None = None
    task_states: Mapping[str, str | None] = field(default_factory=dict)
    dag_ids: tuple[str, ...] = ()
    import_errors: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    dag_test_s: float | None = None
    output_tail: str = ""

    @property
    def succeeded(self) -> bool:
        """Every task of the run ended in `success` (a `check` run: the folder imported cleanly)."""
        if self.returncode != 0 or self.import_errors or self.error:
            return False
        return self.dag_id is None or (
            bool(self.task_states) and all(s == "success" for s in self.task_states.values())
        )


def requirements_digest(requirements: Path, constraints: Path) -> str:
    """The sha256 that identifies one Airflow install: requirements and constraints, in order."""
    digest = hashlib.sha256()
    for path in (requirements, constraints):
        digest.update(path.name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def ensure_airflow_venv(
    venv_dir: Path = AIRFLOW_VENV_DIR,
    *,
    python: str | None = None,
    requirements: Path = AIRFLOW_REQUIREMENTS,
    constraints: Path = AIRFLOW_CONSTRAINTS,
) -> Path:
    """Create or update the Airflow venv; return its python.

    Idempotent: the venv keeps the digest of the requirements and constraints it was built
    from, and pip runs again only when that digest changes or the venv is missing or broken.
    Concurrent callers serialise on a lock file next to the venv.
    """
    venv_dir = venv_dir.resolve()
    wanted = requirements_digest(requirements, constraints)
    stamp = venv_dir / STAMP_FILE
    interpreter = venv_python(venv_dir)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(_lock_path(venv_dir)):
        if _read_stamp(stamp) == wanted and _is_python_311(interpreter):
            logger.debug("Airflow venv %s is up to date", venv_dir)
            return interpreter
        started = time.monotonic()
        if not _is_python_311(interpreter):
            base = _find_python(python)
            logger.info("Creating the Airflow venv %s with %s", venv_dir, base)
            _run_logged([base, "-m", "venv", "--clear", str(venv_dir)], what="venv creation")
            if not _is_python_311(interpreter):
                raise AirflowEnvError(f"{base} did not make a Python 3.11 venv in {venv_dir}")
        stamp.unlink(missing_ok=True)  # an interrupted install must not look complete
        logger.info(
            "Installing Airflow into %s from %s (constraints %s); this takes a minute or two",
            venv_dir,
            requirements.name,
            constraints.name,
        )
        _run_logged(
            [
                str(interpreter),
                "-I",
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
                str(requirements),
                "-c",
                str(constraints),
            ],
            what="pip install of Airflow",
        )
        _write_atomically(stamp, wanted + "\n")
        logger.info("Airflow venv ready in %.1f s", time.monotonic() - started)
        return interpreter


def default_airflow_home() -> Path:
    """Airflow's home for one-shot runs: under the fedilake state dir, next to the stack."""
    return StackSettings().state_dir / "airflow"


def run_dag_test(
    dag_id: str,
    logical_date: date,
    env: Mapping[str, str] | None = None,
    airflow_home: Path | None = None,
    *,
    venv_dir: Path = AIRFLOW_VENV_DIR,
    dags_folder: Path = DAGS_FOLDER,
    timeout_s: float = 900.0,
) -> DagTestResult:
    """Run `dag_id` once with `dag.test` for the day `logical_date` (00:00 UTC) in the Airflow venv.

    `env` is the whole environment of the run (default: this process's); the tasks inherit it,
    so `FEDILAKE_*` settings reach the `fedilake` commands they start.
    """
    return _run_runner(
        ["test", dag_id, logical_date.isoformat()],
        env=env,
        airflow_home=airflow_home,
        venv_dir=venv_dir,
        dags_folder=dags_folder,
        timeout_s=timeout_s,
    )


def check_dag_folder(
    env: Mapping[str, str] | None = None,
    airflow_home: Path | None = None,
    *,
    venv_dir: Path = AIRFLOW_VENV_DIR,
    dags_folder: Path = DAGS_FOLDER,
    timeout_s: float = 300.0,
) -> DagTestResult:
    """Import the DAG folder with the real Airflow: the DAG ids found and any import errors."""
    return _run_runner(
        ["check"],
        env=env,
        airflow_home=airflow_home,
        venv_dir=venv_dir,
        dags_folder=dags_folder,
        timeout_s=timeout_s,
    )


def parse_runner_result(
    payload: Mapping[str, Any], returncode: int, output_tail: str
) -> DagTestResult:
    """Turn the runner's JSON line into a `DagTestResult`."""
    if payload.get("result") != _RESULT_TAG:
        raise AirflowEnvError(f"not a result of {DAG_TEST_RUNNER.name}: {dict(payload)!r}")
    day = payload.get("day")
    return DagTestResult(
        returncode=returncode,
        dag_id=payload.get("dag_id"),
        day=date.fromisoformat(day) if day else None,
        run_state=payload.get("run_state"),
        task_states=dict(payload.get("task_states") or {}),
        dag_ids=tuple(payload.get("dag_ids") or ()),
        import_errors=dict(payload.get("import_errors") or {}),
        error=payload.get("error"),
        dag_test_s=payload.get("dag_test_s"),
        output_tail=output_tail,
    )


def _run_runner(
    runner_args: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    airflow_home: Path | None,
    venv_dir: Path,
    dags_folder: Path,
    timeout_s: float,
) -> DagTestResult:
    interpreter = ensure_airflow_venv(venv_dir)
    home = (airflow_home or default_airflow_home()).resolve()
    with tempfile.TemporaryDirectory(prefix="fedilake-dag-test-") as scratch:
        result_file = Path(scratch) / "result.json"
        # -I: the Airflow interpreter ignores PYTHONPATH (the main environment's packages, the
        # repository root with its `airflow/` folder) and the script's directory. The variables
        # stay in the environment the tasks inherit.
        command = [
            str(interpreter),
            "-I",
            str(DAG_TEST_RUNNER),
            "--airflow-home",
            str(home),
            "--dags-folder",
            str(dags_folder.resolve()),
            "--result-file",
            str(result_file),
            *runner_args,
        ]
        logger.info("Running %s with Airflow home %s", " ".join(runner_args), home)
        started = time.monotonic()
        returncode, tail = _run_streaming(
            command, env=dict(os.environ if env is None else env), cwd=scratch, timeout_s=timeout_s
        )
        logger.info("Airflow runner exited %d after %.1f s", returncode, time.monotonic() - started)
        if not result_file.exists():
            return DagTestResult(
                returncode=returncode,
                error="the Airflow runner exited without a result",
                output_tail=tail,
            )
        payload = json.loads(result_file.read_text())
    return parse_runner_result(payload, returncode, tail)


def _run_streaming(
    command: Sequence[str], *, env: Mapping[str, str] | None, cwd: str | None, timeout_s: float
) -> tuple[int, str]:
    """Run `command`, logging its output as it comes; return the exit code and the output tail."""
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(
        list(command),
        env=None if env is None else dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # a timeout ends the task processes too
    ) as process:
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, _kill)
        timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                logger.debug("| %s", line)
            returncode = process.wait()
        finally:
            timer.cancel()
    output = "\n".join(tail)
    if timed_out.is_set():
        raise AirflowEnvError(f"{command[0]} timed out after {timeout_s:.0f} s:\n{output}")
    return returncode, output


def _run_logged(command: Sequence[str], *, what: str) -> None:
    returncode, tail = _run_streaming(command, env=None, cwd=None, timeout_s=1800.0)
    if returncode != 0:
        raise AirflowEnvError(f"{what} failed (exit {returncode}):\n{tail}")


def _find_python(python: str | None) -> str:
    candidate = python or AIRFLOW_PYTHON
    found = shutil.which(candidate)
    if found is None:
        raise AirflowEnvError(
            f"{candidate} not found on PATH: the Airflow venv needs Python 3.11 "
            f"(Airflow 3.3 and its constraints file are for 3.11); install it "
            f"(e.g. `apt-get install python3.11` or `pyenv install 3.11`) and retry"
        )
    return found


def _is_python_311(interpreter: Path) -> bool:
    if not interpreter.exists():
        return False
    try:
        probe = subprocess.run(
            [str(interpreter), "-I", "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and probe.stdout.strip() == "True"


def _read_stamp(stamp: Path) -> str | None:
    try:
        return stamp.read_text().strip()
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    partial.replace(path)


def _lock_path(venv_dir: Path) -> Path:
    # Outside the venv (which `venv --clear` empties) and outside the work tree.
    key = hashlib.sha256(str(venv_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"fedilake-airflow-venv-{key}.lock"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
