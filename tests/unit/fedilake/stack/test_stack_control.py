"""The stack's process bookkeeping: log tails, pid files, port probes (nothing started but a sleeper)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedilake.stack.control import SERVICE_MARKER, alive, port_in_use, running_pid, tail
from fedilake.stack.services import StackPaths

# Beyond the largest pid_max Linux allows (2**22), so never a live process.
NO_SUCH_PID = 2**22 + 1


@pytest.fixture
def paths(tmp_path: Path) -> StackPaths:
    (tmp_path / "run").mkdir()
    return StackPaths(tmp_path)


def _write_pid(paths: StackPaths, service: str, pid: int | str) -> Path:
    pid_file = paths.pid(service)
    pid_file.write_text(f"{pid}\n")
    return pid_file


# --------------------------------------------------------------------------- tail


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "kafka.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"
    assert tail(log).splitlines() == [f"line {i}" for i in range(70, 100)]


def test_tail_of_a_short_file_is_all_of_it(tmp_path: Path) -> None:
    log = tmp_path / "short.log"
    log.write_text("only\nthese\n")
    assert tail(log, 30) == "only\nthese"


def test_tail_of_a_big_file_reads_only_its_end(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"x" * 200_000 + b"\n" + b"".join(b"entry %d\n" % i for i in range(50)))
    assert tail(log, 2) == "entry 48\nentry 49"


def test_tail_survives_invalid_utf8(tmp_path: Path) -> None:
    log = tmp_path / "bin.log"
    log.write_bytes(b"ok\n\xff\xfe broken\n")
    assert tail(log, 2) == "ok\n\ufffd\ufffd broken"


def test_tail_of_a_missing_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    assert tail(missing) == f"(no log at {missing})"


# --------------------------------------------------------------------------- pid files


def test_running_pid_without_a_pid_file(paths: StackPaths) -> None:
    assert running_pid(paths, "kafka") is None


def test_running_pid_with_garbage_in_the_pid_file(paths: StackPaths) -> None:
    _write_pid(paths, "kafka", "not a pid")
    assert running_pid(paths, "kafka") is None


def test_running_pid_drops_a_stale_pid(paths: StackPaths) -> None:
    pid_file = _write_pid(paths, "kafka", NO_SUCH_PID)
    assert running_pid(paths, "kafka") is None
    assert not pid_file.exists()


def test_running_pid_drops_a_live_pid_that_is_not_ours(paths: StackPaths) -> None:
    # This pytest process is alive but has no service marker: a recycled pid.
    pid_file = _write_pid(paths, "kafka", os.getpid())
    assert alive(os.getpid())
    assert running_pid(paths, "kafka") is None
    assert not pid_file.exists()


@pytest.fixture
def marked_sleeper() -> Iterator[int]:
    """A live process whose command line carries the kafka service marker."""
    marker = f"{SERVICE_MARKER}kafka"
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        # Popen can return (vfork) before the kernel has set up the new command line.
        cmdline = Path(f"/proc/{process.pid}/cmdline")
        deadline = time.monotonic() + 5
        while marker.encode() not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.001)
        yield process.pid
    finally:
        process.kill()
        process.wait()


@pytest.mark.timeout(10)
def test_running_pid_finds_our_live_process(paths: StackPaths, marked_sleeper: int) -> None:
    pid_file = _write_pid(paths, "kafka", marked_sleeper)
    assert running_pid(paths, "kafka") == marked_sleeper
    assert pid_file.exists()
    # The same process is not the `kafkax` service, nor `hbase`.
    _write_pid(paths, "kafkax", marked_sleeper)
    assert running_pid(paths, "kafkax") is None
    _write_pid(paths, "hbase", marked_sleeper)
    assert running_pid(paths, "hbase") is None


def test_alive() -> None:
    assert alive(os.getpid())
    assert not alive(NO_SUCH_PID)


# --------------------------------------------------------------------------- ports


def test_port_in_use_sees_a_listener_and_not_a_closed_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)
