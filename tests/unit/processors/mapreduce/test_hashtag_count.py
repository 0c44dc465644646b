"""The Hadoop Streaming hashtag job, piped `map | sort | reduce` as Hadoop would run it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fedilake.contracts import Envelope, EventKind
from processors.mapreduce.hashtag_count import main, map_lines, reduce_lines

REPO = Path(__file__).resolve().parents[4]
RECEIVED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _line(
    tags: list[str],
    created_at: str = "2026-11-23T10:15:00.000Z",
    kind: EventKind = EventKind.STATUS,
    reblog: dict[str, Any] | None = None,
    payload: str | None = None,
) -> str:
    status = {
        "id": "1",
        "uri": "https://example.social/users/a/statuses/1",
        "created_at": created_at,
        "tags": [{"name": tag} for tag in tags],
        "reblog": reblog,
    }
    return Envelope(
        kind=kind,
        instance="https://example.social",
        stream="public",
        event="update",
        received_at=RECEIVED,
        created_at=datetime.fromisoformat(created_at.replace("Z", "+00:00")),
        uri=status["uri"],
        status_id="1",
        payload=json.dumps(status) if payload is None else payload,
    ).to_json()


LAKE_LINES = [
    _line(["Rust", "python"]),
    _line(["rust", "RUST"]),
    _line(["rust"], created_at="2026-11-23T11:59:59.999Z"),
    _line(["caf\u00e9", "rust2"], created_at="2026-11-23T11:00:00.000Z"),
    _line(["rust"], reblog={"id": "0"}),  # a boost: counts nothing
    _line(["rust"], kind=EventKind.EDIT),  # an edit: counts nothing
    _line([]),
    "",
    "   ",
    "garbage",
    "{}",
    '{"kind": "status"}',
    "[1, 2, 3]",
]
EXPECTED = [
    "2026112310\tpython\t1",
    "2026112310\trust\t2",
    "2026112311\tcaf\u00e9\t1",
    "2026112311\trust\t1",
    "2026112311\trust2\t1",
]


def _sort(lines: list[str]) -> list[str]:
    """Byte order, as Hadoop's shuffle (and `LC_ALL=C sort`) delivers keys."""
    return sorted(lines, key=lambda line: line.encode())


def _pipeline(lines: list[str]) -> list[str]:
    return list(reduce_lines(_sort(list(map_lines(lines)))))


def test_map_emits_bucket_hashtag_one() -> None:
    mapped = list(map_lines([_line(["Rust", "python"])]))
    assert sorted(mapped) == ["2026112310\tpython\t1", "2026112310\trust\t1"]


def test_map_ignores_garbage_and_statuses_without_counts() -> None:
    assert list(map_lines(LAKE_LINES[4:])) == []


def test_map_accepts_lines_with_their_newline() -> None:
    assert list(map_lines([_line(["rust"]) + "\n"])) == ["2026112310\trust\t1"]


def test_map_skips_a_status_envelope_whose_payload_is_not_json() -> None:
    poison = _line(["rust"], payload="{not json")
    assert list(map_lines([poison, _line(["rust"])])) == ["2026112310\trust\t1"]


def test_map_sort_reduce_counts_hashtags_per_hour() -> None:
    assert _pipeline(LAKE_LINES) == EXPECTED


def test_reduce_sums_counts_of_each_key() -> None:
    lines = ["b\tx\t1\n", "b\tx\t4\n", "b\ty\t2\n", "\n", "c\tx\t1\n"]
    assert list(reduce_lines(lines)) == ["b\tx\t5", "b\ty\t2", "c\tx\t1"]


def test_combiner_output_fed_to_the_reducer_equals_the_reducer_alone() -> None:
    mapped = list(map_lines(LAKE_LINES * 3))
    # Each map task combines its own sorted output; the reducer gets all of it, sorted again.
    halves = (mapped[: len(mapped) // 2], mapped[len(mapped) // 2 :])
    combined = [line for half in halves for line in reduce_lines(_sort(half))]
    assert len(combined) < len(mapped)
    with_combiner = list(reduce_lines(_sort(combined)))
    without = list(reduce_lines(_sort(mapped)))
    assert with_combiner == without
    assert [line.rsplit("\t", 1)[1] for line in without] == ["3", "6", "3", "3", "3"]


def _run_main(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stage: str,
    lines: list[str],
) -> list[str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    assert main([stage]) == 0
    return capsys.readouterr().out.splitlines()


def test_main_pipes_stdin_to_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mapped = _run_main(monkeypatch, capsys, "map", LAKE_LINES)
    combined = _run_main(monkeypatch, capsys, "combine", _sort(mapped))
    reduced = _run_main(monkeypatch, capsys, "reduce", _sort(combined))
    assert reduced == EXPECTED


@pytest.mark.parametrize("argv", [[], ["bogus"], ["map", "reduce"], ["MAP"]])
def test_main_usage_error_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "usage:" in captured.err
    assert "map|combine|reduce" in captured.err
    assert captured.out == ""


def _step(stage: str, data: bytes, env: dict[str, str]) -> bytes:
    return subprocess.run(
        [sys.executable, "-m", "processors.mapreduce.hashtag_count", stage],
        input=data,
        capture_output=True,
        check=True,
        cwd=REPO,
        env=env,
        timeout=30,
    ).stdout


@pytest.mark.timeout(30)
def test_map_sort_reduce_as_processes_with_real_sort() -> None:
    env = dict(os.environ, LC_ALL="C", PYTHONIOENCODING="utf-8")
    lake = "".join(line + "\n" for line in LAKE_LINES).encode()
    mapped = _step("map", lake, env)
    shuffled = subprocess.run(
        ["sort"], input=mapped, capture_output=True, check=True, env=env, timeout=30
    ).stdout
    reduced = _step("reduce", shuffled, env)
    assert reduced.decode().splitlines() == EXPECTED

    usage = subprocess.run(
        [sys.executable, "-m", "processors.mapreduce.hashtag_count"],
        capture_output=True,
        cwd=REPO,
        env=env,
        timeout=30,
        check=False,
    )
    assert usage.returncode == 2
    assert b"usage:" in usage.stderr
