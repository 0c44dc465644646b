"""`fedilake stack up | down | status | logs`: start, stop and inspect the local stack's JVMs by their pid files."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedilake.settings import StackSettings

from .errors import PortTakenError, ServiceStartError, StackError
from .services import (
    HDFS_WEBAPPS,
    ServiceSpec,
    StackPaths,
    Unhealthy,
    java_command,
    new_kafka_cluster_id,
    stack_services,
)
from .tools import JavaRuntime, ensure_jars, find_java

log = logging.getLogger(__name__)

SERVICE_MARKER = "-Dfedilake.service="


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 64 * 1024))
        text = handle.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def running_pid(paths: StackPaths, service: str, marker: str | None = None) -> int | None:
    """The pid in the service's pid file, if that process is alive and is ours.

    `marker` is a piece of the command line that only our process has (a recycled pid
    belonging to someone else must never be signalled).
    """
    pid_file = paths.pid(service)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    marker = marker or f"{SERVICE_MARKER}{service} "
    if marker in _cmdline(pid) + " " and alive(pid):
        return pid
    pid_file.unlink(missing_ok=True)  # stale: that pid is gone or is someone else's now
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (OSError, IndexError):
        return True
    return state != "Z"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def stop_process(paths: StackPaths, name: str, pid: int, timeout_s: float) -> None:
    """SIGTERM the process group we started, SIGKILL it after `timeout_s`, drop its pid file."""
    log.info("stopping %s (pid %d)", name, pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM if timeout_s > 0 else signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.2)
    if alive(pid):
        if timeout_s > 0:
            log.warning("%s did not stop within %.0fs; killing it", name, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            raise StackError(f"{name} (pid {pid}) survived SIGKILL for 30s")
    paths.pid(name).unlink(missing_ok=True)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    ports: tuple[int, ...]
    healthy: bool
    detail: str


class LocalStack:
    """The local stack under one state directory."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.paths = StackPaths(settings.state_dir)
        self.services = stack_services(settings)

    def service(self, name: str) -> ServiceSpec:
        for spec in self.services:
            if spec.name == name:
                return spec
        names = ", ".join(s.name for s in self.services)
        raise StackError(f"unknown service {name!r}; the stack has: {names}")

    # ------------------------------------------------------------------ up

    def fetch(self, only: Iterable[str] | None = None) -> list[Path]:
        """Resolve the jars of the services (all, or `only`) from Maven Central, starting
        nothing; each component's once per version of its pom."""
        wanted = set(only) if only else None
        for name in wanted or ():
            self.service(name)  # an unknown name is an error, not nothing to do
        java = find_java(self.settings.java_home)
        components = dict.fromkeys(
            spec.component for spec in self.services if wanted is None or spec.name in wanted
        )
        return [ensure_jars(component, self.paths.lib, java) for component in components]

    def up(self, only: Iterable[str] | None = None) -> list[ServiceStatus]:
        wanted = set(only) if only else None
        java = find_java(self.settings.java_home)
        statuses = []
        for spec in self.services:
            if wanted is not None and spec.name not in wanted:
                continue
            statuses.append(self._ensure_running(spec, java))
        return statuses

    def _ensure_running(self, spec: ServiceSpec, java: JavaRuntime) -> ServiceStatus:
        pid = running_pid(self.paths, spec.name)
        if pid is not None:
            detail = self._wait_healthy(spec, pid)
            log.info("%s already running (pid %d): %s", spec.name, pid, detail)
            return ServiceStatus(spec.name, pid, spec.ports, True, detail)
        for port in spec.ports:
            if port_in_use(self.settings.host, port):
                raise PortTakenError(
                    f"cannot start {spec.name}: port {port} on {self.settings.host} is already in "
                    "use by a process this stack did not start. Stop that process or move "
                    f"{spec.name} to another port (FEDILAKE_STACK_*_PORT)."
                )
        lib = ensure_jars(spec.component, self.paths.lib, java)
        self._write_conf(spec)
        self._prepare(spec, java, lib)
        started = time.monotonic()
        pid = self._spawn(spec, java, lib)
        try:
            detail = self._wait_healthy(spec, pid)
        except ServiceStartError:
            if running_pid(self.paths, spec.name) is not None:
                self._stop(spec.name, pid, timeout_s=10)
            raise
        log.info(
            "%s healthy in %.1fs (pid %d): %s", spec.name, time.monotonic() - started, pid, detail
        )
        return ServiceStatus(spec.name, pid, spec.ports, True, detail)

    def _write_conf(self, spec: ServiceSpec) -> None:
        conf = self.paths.conf(spec.name)
        conf.mkdir(parents=True, exist_ok=True)
        for name, text in spec.conf_files.items():
            (conf / name).write_text(text)
        if spec.component == "hadoop":
            # Hadoop's HTTP servers look for webapps/<name> on the classpath; the Maven
            # jars do not carry them and WebHDFS needs nothing inside.
            for webapp in HDFS_WEBAPPS:
                (conf / "webapps" / webapp).mkdir(parents=True, exist_ok=True)

    def _java_command(
        self, spec: ServiceSpec, java: JavaRuntime, lib: Path, main: str, args: Iterable[str]
    ) -> list[str]:
        props = {
            "hadoop.log.dir": str(self.paths.log(spec.name).parent),
            "hbase.log.dir": str(self.paths.log(spec.name).parent),
            "log4j.configuration": (self.paths.conf(spec.name) / "log4j.properties").as_uri(),
            **spec.system_properties,
        }
        return java_command(
            java.java,
            [str(self.paths.conf(spec.name)), f"{lib}/*"],
            spec.heap,
            main,
            args,
            props,
            marker=f"{SERVICE_MARKER}{spec.name}",
        )

    def _prepare(self, spec: ServiceSpec, java: JavaRuntime, lib: Path) -> None:
        """One-time storage formatting for Kafka (KRaft) and the NameNode."""
        if spec.name == "kafka":
            data = self.paths.data("kafka")
            if (data / "meta.properties").exists():
                return
            args = ["format", "-t", new_kafka_cluster_id(), "-c", spec.args[0]]
            self._run_once(spec, java, lib, "kafka.tools.StorageTool", args, "format Kafka storage")
        elif spec.name == "namenode":
            if (self.paths.data("namenode") / "current" / "VERSION").exists():
                return
            main = "org.apache.hadoop.hdfs.server.namenode.NameNode"
            self._run_once(
                spec,
                java,
                lib,
                main,
                ["-format", "-nonInteractive", "-force"],
                "format the NameNode",
            )

    def _run_once(
        self, spec: ServiceSpec, java: JavaRuntime, lib: Path, main: str, args: list[str], what: str
    ) -> None:
        log_path = self.paths.log(spec.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("%s", what)
        with log_path.open("ab") as out:
            code = subprocess.run(
                self._java_command(spec, java, lib, main, args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
                timeout=300,
            ).returncode
        if code != 0:
            raise ServiceStartError(f"could not {what} (exit {code})", tail(log_path))

    def _spawn(self, spec: ServiceSpec, java: JavaRuntime, lib: Path) -> int:
        log_path = self.paths.log(spec.name)
        pid_path = self.paths.pid(spec.name)
        for directory in (log_path.parent, pid_path.parent):
            directory.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            out.write(f"\n===== fedilake starting {spec.name} at {time.ctime()} =====\n".encode())
            out.flush()
            process = subprocess.Popen(
                self._java_command(spec, java, lib, spec.main_class, spec.args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.paths.root,
            )
        pid_path.write_text(f"{process.pid}\n")
        log.info("started %s (pid %d), log %s", spec.name, process.pid, log_path)
        return process.pid

    def _wait_healthy(self, spec: ServiceSpec, pid: int) -> str:
        deadline = time.monotonic() + self.settings.start_timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not alive(pid):
                self.paths.pid(spec.name).unlink(missing_ok=True)
                raise ServiceStartError(
                    f"{spec.name} exited while starting ({last})", tail(self.paths.log(spec.name))
                )
            try:
                return spec.health()
            except Unhealthy as exc:
                last = str(exc)
            time.sleep(0.5)
        raise ServiceStartError(
            f"{spec.name} (pid {pid}) did not become healthy within "
            f"{self.settings.start_timeout_s:.0f}s: {last}",
            tail(self.paths.log(spec.name)),
        )

    # ------------------------------------------------------------------ down

    def down(self, only: Iterable[str] | None = None, timeout_s: float = 40.0) -> list[str]:
        """Stop, in reverse start order, only the processes our pid files name."""
        wanted = set(only) if only else None
        stopped = []
        for spec in reversed(self.services):
            if wanted is not None and spec.name not in wanted:
                continue
            pid = running_pid(self.paths, spec.name)
            if pid is None:
                continue
            self._stop(spec.name, pid, timeout_s)
            stopped.append(spec.name)
        return stopped

    def _stop(self, name: str, pid: int, timeout_s: float) -> None:
        stop_process(self.paths, name, pid, timeout_s)

    def kill(self, name: str) -> None:
        """kill -9 one service (for crash tests); its data stays."""
        pid = running_pid(self.paths, name)
        if pid is not None:
            self._stop(name, pid, timeout_s=0)

    # ------------------------------------------------------------------ status

    def status(self, attempts: int = 3) -> list[ServiceStatus]:
        """Each service's pid and health. A running service's probe is asked up to
        `attempts` times, a second apart, before it is called unhealthy: under load the
        HBase master's JMX servlet has answered without its beans for a moment."""
        result = []
        for spec in self.services:
            pid = running_pid(self.paths, spec.name)
            if pid is None:
                result.append(ServiceStatus(spec.name, None, spec.ports, False, "not running"))
                continue
            for attempt in range(1, attempts + 1):
                try:
                    result.append(ServiceStatus(spec.name, pid, spec.ports, True, spec.health()))
                    break
                except Unhealthy as exc:
                    if attempt == attempts:
                        result.append(ServiceStatus(spec.name, pid, spec.ports, False, str(exc)))
                    else:
                        time.sleep(1.0)
        return result

    def log_path(self, name: str) -> Path:
        return self.paths.log(self.service(name).name)
