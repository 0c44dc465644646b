"""The lake writer's pure parts: per-partition buffers, hour partitions, part file contents."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta, timezone

from fedilake.contracts import raw_hour_dir
from sinks.lake import PartitionBuffer, encode_part, hour_of

TEN = datetime(2026, 11, 23, 10, tzinfo=UTC)
ELEVEN = datetime(2026, 11, 23, 11, tzinfo=UTC)


def test_empty_buffer() -> None:
    buffer = PartitionBuffer()
    assert buffer.first is None and buffer.last is None
    assert len(buffer) == 0
    assert dict(buffer.by_hour) == {}


def test_buffer_tracks_first_and_last_offsets_and_groups_by_hour() -> None:
    buffer = PartitionBuffer()
    buffer.add(40, TEN, b"a")
    buffer.add(41, ELEVEN, b"b")
    buffer.add(42, TEN, b"c")
    buffer.add(45, ELEVEN, b"d")
    assert buffer.first == 40
    assert buffer.last == 45
    assert len(buffer) == 4
    assert dict(buffer.by_hour) == {TEN: [b"a", b"c"], ELEVEN: [b"b", b"d"]}


def test_buffers_do_not_share_their_hours() -> None:
    one, two = PartitionBuffer(), PartitionBuffer()
    one.add(0, TEN, b"a")
    assert len(two) == 0 and dict(two.by_hour) == {}


def test_hour_of_truncates_to_the_hour() -> None:
    moment = datetime(2026, 11, 23, 10, 59, 59, 999999, tzinfo=UTC)
    assert hour_of(moment) == TEN
    assert hour_of(TEN) == TEN


def test_hour_of_is_a_utc_hour_for_any_offset() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    moment = datetime(2026, 11, 23, 10, 45, tzinfo=india)  # 05:15 UTC
    assert hour_of(moment) == datetime(2026, 11, 23, 5, tzinfo=UTC)
    assert raw_hour_dir("t", hour_of(moment)).endswith("hr=05")


def test_encode_part_is_gzip_json_lines() -> None:
    lines = [b'{"v":1,"payload":"caf\xc3\xa9"}', b'{"v":1}', b""]
    part = encode_part(lines)
    assert part[:2] == b"\x1f\x8b"
    assert gzip.decompress(part) == b'{"v":1,"payload":"caf\xc3\xa9"}\n{"v":1}\n\n'
    assert gzip.decompress(part).splitlines() == lines


def test_encode_part_of_nothing_is_an_empty_file() -> None:
    assert gzip.decompress(encode_part([])) == b""


def test_encode_part_accepts_a_generator() -> None:
    part = encode_part(line for line in (b"a", b"b"))
    assert gzip.decompress(part) == b"a\nb\n"
