"""The `fedilake` command line: parsing, and errors reported without a traceback."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from fedilake import cli


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No FEDILAKE_* from the caller, the stack state in tmp_path, logging restored after."""
    for name in list(os.environ):
        if name.startswith("FEDILAKE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FEDILAKE_STACK_STATE_DIR", str(tmp_path / "state"))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in cli.QUIET_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


@pytest.fixture
def no_hbase(monkeypatch: pytest.MonkeyPatch) -> None:
    import sinks.hbase

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CLI connected to HBase")

    monkeypatch.setattr(sinks.hbase, "connect", refuse)


def test_stack_up() -> None:
    args = cli.build_parser().parse_args(["stack", "up"])
    assert (args.command, args.action, args.services) == ("stack", "up", [])
    assert args.func is cli.cmd_stack
    assert args.verbose is False


def test_stack_status() -> None:
    args = cli.build_parser().parse_args(["-v", "stack", "status"])
    assert args.action == "status" and args.verbose is True


def test_stack_logs_of_one_service() -> None:
    args = cli.build_parser().parse_args(["stack", "logs", "kafka", "-n", "5"])
    assert (args.action, args.services, args.lines) == ("logs", ["kafka"], 5)
    assert cli.build_parser().parse_args(["stack", "logs", "kafka"]).lines == 40


def test_stack_up_some_services() -> None:
    args = cli.build_parser().parse_args(["stack", "up", "kafka", "namenode"])
    assert args.services == ["kafka", "namenode"]


def test_batch_hashtags_of_a_day() -> None:
    args = cli.build_parser().parse_args(["batch", "hashtags", "--day", "2026-11-20"])
    assert args.func is cli.cmd_batch
    assert args.metric == "hashtags"
    assert args.day == date(2026, 11, 20)


def test_query_top_hashtags_of_an_hour() -> None:
    args = cli.build_parser().parse_args(["query", "top-hashtags", "--hour", "2026-11-20T10"])
    assert args.func is cli.cmd_query
    assert (args.report, args.hour, args.limit) == ("top-hashtags", "2026-11-20T10", 20)


def test_sink_hdfs() -> None:
    args = cli.build_parser().parse_args(["sink", "hdfs"])
    assert (args.func, args.target) == (cli.cmd_sink, "hdfs")


def test_simulate_with_events_and_rate() -> None:
    args = cli.build_parser().parse_args(["simulate", "--events", "5", "--rate", "10"])
    assert args.func is cli.cmd_simulate
    assert args.events == 5 and args.rate == 10.0
    assert args.port is None and args.seed is None and args.ground_truth is None


@pytest.mark.parametrize(
    "argv",
    [
        ["stream"],
        ["process"],
        ["init"],
        ["run"],
        ["run", "--stop"],
        ["stack", "down"],
        ["stack", "kill", "hbase"],
    ],
)
def test_other_commands_parse(argv: list[str]) -> None:
    assert callable(cli.build_parser().parse_args(argv).func)


@pytest.mark.parametrize("day", ["2026-11-31", "2026-11", "tomorrow", "2026-11-20T10"])
def test_bad_day_exits_2_with_a_message(day: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(["batch", "hashtags", "--day", day])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"day must look like 2026-11-23, got {day!r}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["stack"],
        ["stack", "start"],
        ["sink", "s3"],
        ["batch", "hashtags"],
        ["batch", "mentions", "--day", "2026-11-20"],
        ["query", "top-hashtags"],
        ["simulate", "--events", "five"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(argv)
    assert caught.value.code == 2
    assert "usage: fedilake" in capsys.readouterr().err


def test_main_with_a_bad_day_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["batch", "hashtags", "--day", "nonsense"])
    assert caught.value.code == 2
    assert "day must look like" in capsys.readouterr().err


def test_query_with_a_bad_hour_returns_2_with_a_clear_message(
    no_hbase: None, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.ERROR, logger="fedilake"):
        assert cli.main(["query", "top-hashtags", "--hour", "nonsense"]) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "fedilake"
    assert errors[0].getMessage() == "hour must look like 2026-11-23T14, got 'nonsense'"
    assert errors[0].exc_info is None
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert captured.out == ""


def test_stack_logs_without_a_service_returns_2(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="fedilake"):
        assert cli.main(["stack", "logs"]) == 2
    assert "takes exactly one SERVICE" in caplog.text


def test_stack_logs_of_an_unknown_service_returns_2(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="fedilake"):
        assert cli.main(["stack", "logs", "zookeeper"]) == 2
    assert "unknown service 'zookeeper'" in caplog.text
    assert "kafka, namenode, datanode, hbase, thrift" in caplog.text


def test_stack_logs_of_a_service_that_never_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["stack", "logs", "kafka"]) == 0
    expected = tmp_path / "state" / "logs" / "kafka.log"
    assert capsys.readouterr().out == f"(no log at {expected})\n"


def test_stack_fetch_resolves_each_component_once_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fedilake.stack.control as control

    resolved: list[str] = []

    def ensure_jars(component: str, lib_root: Path, java: object) -> Path:
        resolved.append(component)
        return lib_root / component

    monkeypatch.setattr(control, "find_java", lambda java_home: object())
    monkeypatch.setattr(control, "ensure_jars", ensure_jars)
    monkeypatch.setattr(control.LocalStack, "up", lambda *a, **k: pytest.fail("started"))
    assert cli.main(["stack", "fetch", "thrift", "hbase", "kafka"]) == 0
    assert resolved == ["kafka", "hbase"]  # in start order, HBase's jars once for both
    lib = tmp_path / "state" / "lib"
    assert capsys.readouterr().out.splitlines() == [
        f"kafka     jars in {lib / 'kafka'}",
        f"hbase     jars in {lib / 'hbase'}",
    ]
    resolved.clear()
    assert cli.main(["stack", "fetch"]) == 0
    assert resolved == ["kafka", "hadoop", "hbase"]


def test_stack_fetch_of_an_unknown_service_returns_2(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="fedilake"):
        assert cli.main(["stack", "fetch", "zookeeper"]) == 2
    assert "unknown service 'zookeeper'" in caplog.text
