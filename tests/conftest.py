"""Session fixtures shared by the integration and e2e tiers: the real local stack, started once."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from fedilake.pipeline import initialize
from fedilake.settings import HBaseSettings, KafkaSettings, StackSettings
from fedilake.stack.control import LocalStack, running_pid

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """The real stack; services this session started are stopped at its end, others are left."""
    local = LocalStack(StackSettings())
    already = {s.name for s in local.services if running_pid(local.paths, s.name) is not None}
    local.up()
    initialize(KafkaSettings(), HBaseSettings())
    yield local
    started = [s.name for s in local.services if s.name not in already]
    if started:
        local.down(started)
        left = [name for name in started if running_pid(local.paths, name) is not None]
        assert not left, f"stack down left processes running: {left}"


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test proves nothing: the suite fails if any test was skipped."""
    if _skipped and exitstatus == 0:
        session.exitstatus = 1
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(
                f"FAILED: {len(_skipped)} test(s) skipped: {', '.join(_skipped)}", red=True
            )
