"""`fedilake run`: the stack plus every daemon (simulator, streamer, processor, sink) in the background."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedilake.settings import (
    REPO_ROOT,
    HBaseSettings,
    KafkaSettings,
    StackSettings,
    StreamerSettings,
)
from fedilake.stack.control import LocalStack, alive, running_pid, stop_process, tail
from fedilake.stack.errors import ServiceStartError
from fedilake.stack.services import StackPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Daemon:
    name: str
    args: tuple[str, ...]

    def marker(self) -> str:
        return "fedilake.cli " + " ".join(self.args) + " "


SIMULATOR = Daemon("simulator", ("simulate",))
STREAMER = Daemon("streamer", ("stream",))
PROCESSOR = Daemon("processor", ("process",))
SINK = Daemon("sink", ("sink", "hdfs"))
DAEMONS = (PROCESSOR, SINK, SIMULATOR, STREAMER)


def uses_simulator(env: Mapping[str, str]) -> bool:
    """The simulator runs unless a real instance is configured."""
    return "FEDILAKE_STREAMER_INSTANCE_URL" not in env


def spawn_cli(
    args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m fedilake.cli ARGS` in its own session, output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fedilake.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
        )


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc), e.g. the streamer's sender."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


@contextmanager
def cli_processes(workdir: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start named `fedilake` subcommands for a test or benchmark; all are stopped at exit."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        # A streamer's memory (spool, seen uris, checkpoints) belongs to this run only.
        env = {"FEDILAKE_STREAMER_STATE_DIR": str(workdir / "streamer-state"), **(env or {})}
        process = spawn_cli(args, workdir / f"{name}.log", env)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_daemon(paths: StackPaths, daemon: Daemon, env: Mapping[str, str] | None = None) -> int:
    """Start `python -m fedilake.cli ARGS` detached, with a pid file and a log; idempotent."""
    pid = running_pid(paths, daemon.name, daemon.marker())
    if pid is not None:
        return pid
    log_path = paths.log(daemon.name)
    paths.pid(daemon.name).parent.mkdir(parents=True, exist_ok=True)
    process = spawn_cli(daemon.args, log_path, env)
    paths.pid(daemon.name).write_text(f"{process.pid}\n")
    time.sleep(1.0)
    if not alive(process.pid):
        paths.pid(daemon.name).unlink(missing_ok=True)
        raise ServiceStartError(f"{daemon.name} exited at start", tail(log_path))
    log.info("started %s (pid %d), log %s", daemon.name, process.pid, log_path)
    return process.pid


def stop_daemon(paths: StackPaths, daemon: Daemon, timeout_s: float = 30.0) -> bool:
    pid = running_pid(paths, daemon.name, daemon.marker())
    if pid is None:
        return False
    stop_process(paths, daemon.name, pid, timeout_s)
    return True


def initialize(kafka: KafkaSettings, hbase: HBaseSettings) -> tuple[list[str], list[str]]:
    """Create the Kafka topics and HBase tables that are missing; return what was created."""
    from fedilake.kafka_topics import ensure_topics
    from sinks.hbase import connect, init_tables

    topics = ensure_topics(kafka)
    connection = connect(hbase)
    try:
        return topics, init_tables(connection)
    finally:
        connection.close()


def command_name() -> str:
    """How the person should type `fedilake`: the checkout's venv script if that is what runs."""
    script = Path(sys.executable).parent / "fedilake"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return "fedilake"


def run_pipeline(stop: bool = False) -> int:
    from fedilake.cli import out

    settings = StackSettings()
    paths = StackPaths(settings.state_dir)
    stack = LocalStack(settings)
    if stop:
        for daemon in reversed(DAEMONS):
            if stop_daemon(paths, daemon):
                out(f"stopped {daemon.name}")
        stack.down()
        out("stack stopped")
        return 0
    out("starting the local stack (the first run downloads jars from Maven Central)...")
    for status in stack.up():
        out(f"  {status.name:9} healthy (pid {status.pid})")
    topics, tables = initialize(KafkaSettings(), HBaseSettings())
    out(
        f"  created: {', '.join(topics + tables)}" if topics or tables else "  topics and tables ok"
    )
    daemons = [d for d in DAEMONS if d is not SIMULATOR or uses_simulator(os.environ)]
    for daemon in daemons:
        pid = start_daemon(paths, daemon)
        out(f"  {daemon.name:9} running (pid {pid}), log {paths.log(daemon.name)}")
    source = (
        "the local simulator (set FEDILAKE_STREAMER_INSTANCE_URL and a token for a real instance)"
        if uses_simulator(os.environ)
        else StreamerSettings().instance_url
    )
    hour = datetime.now(UTC).strftime("%Y-%m-%dT%H")
    cli = command_name()
    tips = [
        (f"{cli} query top-hashtags --hour {hour}", "live hashtag counts of this hour"),
        (f"{cli} stack status", "the five services and their health"),
        (f"tail -f {paths.log('streamer')}", "what the streamer is doing"),
        (f"{cli} batch hashtags --day {hour[:10]}", "recount the day from the HDFS lake"),
        (f"{cli} run --stop", "stop everything this started"),
    ]
    width = max(len(command) for command, _ in tips)
    out("")
    out(f"fedilake is running, reading {source}.")
    out("Look at:")
    for command, what in tips:
        out(f"  {command:{width}}   {what}")
    return 0
