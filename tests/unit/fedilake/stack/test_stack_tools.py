"""Finding Java and Maven, and the stack errors a person reads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedilake.stack import tools
from fedilake.stack.errors import MissingToolError, PortTakenError, ServiceStartError, StackError


@pytest.fixture
def no_tools_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """PATH, JAVA_HOME and /usr/lib/jvm all empty; returns the stand-in for /usr/lib/jvm."""
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    jvm_root = tmp_path / "jvm"
    jvm_root.mkdir()
    real_path = Path

    def fake_path(*parts: object) -> Path:
        if [str(part) for part in parts] == ["/usr/lib/jvm"]:
            return real_path(jvm_root)
        return real_path(*parts)  # type: ignore[arg-type]

    monkeypatch.setattr(tools, "Path", fake_path)
    return jvm_root


def test_find_java_without_any_java_says_how_to_install_it(
    no_tools_anywhere: Path, tmp_path: Path
) -> None:
    empty_home = tmp_path / "empty-jdk"
    empty_home.mkdir()
    with pytest.raises(MissingToolError) as caught:
        tools.find_java(empty_home)
    message = str(caught.value)
    assert "Java 11 to 21" in message
    assert "apt-get install openjdk-17-jdk-headless" in message
    assert "FEDILAKE_STACK_JAVA_HOME" in message
    assert f"{empty_home / 'bin' / 'java'} (not runnable)" in message


def test_find_java_without_a_configured_home_looked_at_nothing(no_tools_anywhere: Path) -> None:
    with pytest.raises(MissingToolError, match="Looked at: nothing"):
        tools.find_java(None)


def test_find_java_skips_a_java_that_does_not_answer(no_tools_anywhere: Path) -> None:
    broken = no_tools_anywhere / "broken-jdk" / "bin" / "java"
    broken.parent.mkdir(parents=True)
    broken.write_text("not an executable\n")
    with pytest.raises(MissingToolError) as caught:
        tools.find_java(None)
    assert f"{broken} (not runnable)" in str(caught.value)


def test_missing_tool_error_is_a_stack_error() -> None:
    assert issubclass(MissingToolError, StackError)
    assert issubclass(PortTakenError, StackError)
    assert issubclass(ServiceStartError, StackError)


def test_find_maven_without_maven_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(MissingToolError, match="Maven") as caught:
        tools.find_maven()
    assert "apt-get install maven" in str(caught.value)


def test_find_maven_returns_the_mvn_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mvn = tmp_path / "mvn"
    mvn.write_text("#!/bin/sh\n")
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tools.find_maven() == mvn


def test_stack_error_describe_includes_the_log_tail() -> None:
    error = ServiceStartError("kafka exited while starting", "line 1\nERROR boom\n\n")
    described = error.describe()
    assert described.startswith("kafka exited while starting\n")
    assert "--- last lines of its log ---" in described
    assert described.endswith("line 1\nERROR boom")
    assert error.log_tail == "line 1\nERROR boom\n\n"


@pytest.mark.parametrize("log_tail", [None, ""])
def test_stack_error_describe_without_a_log_is_the_message(log_tail: str | None) -> None:
    assert StackError("port 9092 is taken", log_tail).describe() == "port 9092 is taken"
