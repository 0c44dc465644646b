"""`fedilake stack`: five healthy services, idempotent up, clear errors, down stops what it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedilake.settings import StackSettings
from fedilake.stack.control import LocalStack, alive, running_pid
from fedilake.stack.errors import PortTakenError, ServiceStartError

pytestmark = pytest.mark.integration

# A second, throwaway stack must not touch the real one's ports.
SPARE_PORTS = {
    "kafka_port": 19092,
    "kafka_controller_port": 19093,
}


def fedilake(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedilake.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


def test_status_shows_five_healthy_services(stack: LocalStack) -> None:
    result = fedilake("stack", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["kafka", "namenode", "datanode", "hbase", "thrift"]
    assert all(row[1] == "healthy" for row in rows)
    assert all(row[2].isdigit() and alive(int(row[2])) for row in rows)


def test_up_is_idempotent(stack: LocalStack) -> None:
    before = {s.name: running_pid(stack.paths, s.name) for s in stack.services}
    result = fedilake("stack", "up")
    assert result.returncode == 0, result.stderr
    after = {s.name: running_pid(stack.paths, s.name) for s in stack.services}
    assert before == after


def test_a_taken_port_is_a_clear_error_not_a_traceback(stack: LocalStack, tmp_path: Path) -> None:
    # A second stack in another state directory wants Kafka's port, which the first one holds.
    other = LocalStack(StackSettings(state_dir=tmp_path))
    with pytest.raises(PortTakenError, match="port 9092"):
        other.up(["kafka"])
    result = fedilake("stack", "up", "kafka", env={"FEDILAKE_STACK_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_service_that_fails_to_start_shows_its_log(tmp_path: Path) -> None:
    broken = StackSettings(state_dir=tmp_path, kafka_heap="1k", **SPARE_PORTS)  # type: ignore[arg-type]
    with pytest.raises(ServiceStartError) as failure:
        LocalStack(broken).up(["kafka"])
    described = failure.value.describe()
    assert "last lines of its log" in described
    assert "heap" in described.lower()
    assert running_pid(LocalStack(broken).paths, "kafka") is None

    env = {
        "FEDILAKE_STACK_STATE_DIR": str(tmp_path),
        "FEDILAKE_STACK_KAFKA_HEAP": "1k",
        "FEDILAKE_STACK_KAFKA_PORT": "19092",
        "FEDILAKE_STACK_KAFKA_CONTROLLER_PORT": "19093",
    }
    result = fedilake("stack", "up", "kafka", env=env)
    assert result.returncode == 2
    assert "last lines of its log" in result.stderr
    assert "Traceback" not in result.stderr


def test_down_stops_exactly_the_processes_it_started(tmp_path: Path) -> None:
    settings = StackSettings(state_dir=tmp_path, kafka_heap="256m", **SPARE_PORTS)  # type: ignore[arg-type]
    spare = LocalStack(settings)
    # The jars are shared with the main stack's cache rather than fetched again.
    main_lib = StackSettings().lib_dir
    (tmp_path / "lib").symlink_to(main_lib, target_is_directory=True)
    [status] = spare.up(["kafka"])
    assert status.healthy and status.pid is not None
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert spare.down() == ["kafka"]
        assert not alive(status.pid)
        assert not spare.paths.pid("kafka").exists()
        assert bystander.poll() is None, "down must not touch processes it did not start"
        assert spare.down() == []
    finally:
        bystander.kill()
