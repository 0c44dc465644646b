"""The write-ahead spool: order, durability, recovery from torn tails and kill -9, trimming, limits."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamer.spool import (
    Spool,
    SpoolCorrupt,
    SpoolFull,
    SpoolLocked,
    SpoolRecord,
    encode_record,
    segment_name,
)

REPO = Path(__file__).resolve().parents[3]


def _fill(spool: Spool, n: int, size: int = 100) -> list[SpoolRecord]:
    """Appends n records with a mix of keys and partitions; returns what was written."""
    written = []
    for i in range(n):
        key = None if i % 3 == 0 else f"key-{i}".encode()
        partition = None if i % 2 else i % 7
        value = (f"value-{i}-".encode() * size)[:size]
        seq = spool.append("events", key, value, partition)
        written.append(SpoolRecord(seq, "events", key, value, partition))
    return written


def _read_all(spool: Spool, after: int = 0, **limits: int) -> list[SpoolRecord]:
    out: list[SpoolRecord] = []
    while batch := spool.read(after, **limits):
        out += batch
        after = batch[-1].seq
    return out


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("spool-*.log"))


@pytest.mark.parametrize("tail_cache_bytes", [16 << 20, 0, 1000], ids=["cached", "disk", "small"])
def test_records_come_back_in_order_across_segment_rolls(
    tmp_path: Path, tail_cache_bytes: int
) -> None:
    with Spool(tmp_path, segment_bytes=4096, tail_cache_bytes=tail_cache_bytes) as spool:
        written = _fill(spool, 300)
        assert [r.seq for r in written] == list(range(1, 301))
        assert spool.sync() == 300
        assert len(_segments(tmp_path)) > 5
        assert all(p.stat().st_size <= 4096 for p in _segments(tmp_path))
        assert _read_all(spool, max_records=7) == written
        assert spool.read(150, max_records=3) == written[150:153]
        assert spool.read(300) == []
        assert spool.size_bytes == sum(p.stat().st_size for p in _segments(tmp_path))


def test_random_reads_from_disk_land_on_the_right_record(tmp_path: Path) -> None:
    # Several MiB, so reads start from the sparse offset index, before and after a reopen.
    def check(spool: Spool) -> None:
        for after in (0, 1, 333, 350, 999, 1000, 1500, 1998, 1999):
            assert spool.read(after, max_records=2) == written[after : after + 2]

    with Spool(tmp_path, segment_bytes=4 << 20, tail_cache_bytes=0) as spool:
        written = _fill(spool, 2000, size=3000)
        spool.sync()
        assert len(_segments(tmp_path)) == 2
        check(spool)
    with Spool(tmp_path, segment_bytes=4 << 20, tail_cache_bytes=0) as spool:
        check(spool)


def test_read_stops_at_max_bytes_but_returns_at_least_one(tmp_path: Path) -> None:
    with Spool(tmp_path, tail_cache_bytes=0) as spool:
        _fill(spool, 10, size=1000)
        spool.sync()
        assert [r.seq for r in spool.read(0, max_bytes=2500)] == [1, 2]
        assert [r.seq for r in spool.read(0, max_bytes=10)] == [1]


def test_read_returns_only_durable_records(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        _fill(spool, 3)
        assert spool.last_seq == 3 and spool.durable_seq == 0
        assert spool.read(0) == []
        assert spool.sync() == 3
        assert [r.seq for r in spool.read(0)] == [1, 2, 3]
        _fill(spool, 2)
        assert spool.read(3) == []
        assert spool.sync() == 5
        assert spool.sync() == 5  # nothing new: a no-op
        assert [r.seq for r in spool.read(3)] == [4, 5]


def test_a_rolled_segment_is_durable_before_the_next_begins(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=1000, tail_cache_bytes=0) as spool:
        _fill(spool, 30)
        # Never synced, but every segment before the active one was fsync'd when it rolled.
        active_first = int(_segments(tmp_path)[-1].name[6:26])
        assert spool.durable_seq == active_first - 1 > 0
        assert [r.seq for r in _read_all(spool)] == list(range(1, active_first))


def test_seq_continues_after_reopen_and_everything_on_disk_is_durable(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=2000) as spool:
        written = _fill(spool, 40)
    with Spool(tmp_path, segment_bytes=2000) as spool:
        assert spool.last_seq == spool.durable_seq == 40
        assert _read_all(spool) == written
        assert spool.append("events", None, b"after") == 41
        spool.sync()
        assert spool.read(40) == [SpoolRecord(41, "events", None, b"after")]


def test_seq_continues_even_when_every_old_segment_was_trimmed(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=500) as spool:
        _fill(spool, 20)
        spool.sync()
        spool.trim(20)
        assert len(_segments(tmp_path)) == 1
    with Spool(tmp_path, segment_bytes=500) as spool:
        assert spool.last_seq == 20
        assert spool.append("events", None, b"x") == 21


def test_half_a_record_at_the_tail_is_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(tmp_path) as spool:
        written = _fill(spool, 3)
    segment = _segments(tmp_path)[-1]
    good_size = segment.stat().st_size
    torn = encode_record(SpoolRecord(4, "events", b"k", b"v" * 500))
    with open(segment, "ab") as f:
        f.write(torn[: len(torn) // 2])

    with caplog.at_level(logging.WARNING, logger="streamer.spool"), Spool(tmp_path) as spool:
        assert spool.last_seq == 3
        assert _read_all(spool) == written
        assert segment.stat().st_size == good_size
        assert spool.append("events", None, b"next") == 4
        spool.sync()
        assert spool.read(3)[0].value == b"next"
    assert f"dropped {len(torn) // 2} bytes" in caplog.text


def test_a_crc_mismatch_at_the_tail_cuts_from_that_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(tmp_path) as spool:
        written = _fill(spool, 3)
    segment = _segments(tmp_path)[-1]
    data = bytearray(segment.read_bytes())
    third = len(encode_record(written[0])) + len(encode_record(written[1]))
    data[third + 5] ^= 0xFF  # a byte of the third record's crc
    segment.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="streamer.spool"), Spool(tmp_path) as spool:
        assert spool.last_seq == 2
        assert _read_all(spool) == written[:2]
        assert segment.stat().st_size == third
    assert "crc mismatch" in caplog.text
    assert f"dropped {len(data) - third} bytes" in caplog.text


def test_a_bad_magic_byte_at_the_tail_is_cut_off(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        written = _fill(spool, 2)
    with open(_segments(tmp_path)[-1], "ab") as f:
        f.write(b"\x00" * 40)
    with Spool(tmp_path) as spool:
        assert _read_all(spool) == written


def test_corruption_in_an_older_segment_is_reported_with_file_and_offset(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=1000) as spool:
        written = _fill(spool, 30)
    first = _segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    second = len(encode_record(written[0]))
    data[second + 30] ^= 0x01  # inside the second record's body
    first.write_bytes(bytes(data))

    with Spool(tmp_path, segment_bytes=1000, tail_cache_bytes=0) as spool:
        assert spool.last_seq == 30  # only the active segment is scanned on open
        assert [r.seq for r in spool.read(0, max_records=1)] == [1]
        with pytest.raises(SpoolCorrupt, match=rf"{first.name} is corrupt at offset {second}"):
            spool.read(0)


def test_trim_deletes_only_fully_acknowledged_inactive_segments(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=1000, tail_cache_bytes=0) as spool:
        _fill(spool, 50)
        spool.sync()
        before = _segments(tmp_path)
        first_size = before[0].stat().st_size
        size_before = spool.size_bytes
        second_first = int(before[1].name[6:26])

        assert spool.trim(second_first - 2) == 0  # the first segment's last record is not acked
        freed = spool.trim(second_first - 1)
        assert freed == first_size
        assert _segments(tmp_path) == before[1:]
        assert spool.size_bytes == size_before - freed
        assert spool.first_seq == second_first
        assert spool.read(0)[0].seq == second_first  # trimmed records are skipped

        spool.trim(10_000)
        assert _segments(tmp_path) == before[-1:]  # never the active segment
        assert spool.size_bytes == before[-1].stat().st_size


def test_spool_full_at_the_limit_with_warnings_on_the_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamer.spool")
    with Spool(tmp_path, max_bytes=20_000, segment_bytes=2_000, warn_ratio=0.8) as spool:
        with pytest.raises(SpoolFull) as full:
            _fill(spool, 1000)
        assert full.value.retriable
        assert str(tmp_path) in str(full.value) and "full" in str(full.value)
        assert spool.size_bytes <= 20_000
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) >= 4  # 80%, 85%, 90%, 95%
        assert warnings[0].startswith("spool at 80% of ")
        assert "Kafka may be unreachable" in warnings[0]

        caplog.clear()
        spool.sync()
        spool.trim(spool.durable_seq)
        assert spool.size_bytes < 16_000
        assert any(
            r.levelno == logging.INFO and "back below 80%" in r.getMessage() for r in caplog.records
        )
        spool.append("events", None, b"fits again")


def test_wait_durable_wakes_on_sync_from_another_thread(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        assert spool.wait_durable(0, timeout=0.01) is False
        woke: list[bool] = []
        waiter = threading.Thread(target=lambda: woke.append(spool.wait_durable(0, timeout=5)))
        waiter.start()
        time.sleep(0.05)
        spool.append("events", None, b"x")
        started = time.monotonic()
        spool.sync()
        waiter.join(5)
        assert woke == [True]
        assert time.monotonic() - started < 1


def test_close_wakes_a_waiter(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(spool.wait_durable(0, timeout=5)))
    waiter.start()
    time.sleep(0.05)
    spool.close()
    waiter.join(5)
    assert woke == [False]


def test_concurrent_appenders_and_a_reader(tmp_path: Path) -> None:
    threads, per_thread = 4, 1500
    with Spool(tmp_path, segment_bytes=64 << 10, tail_cache_bytes=32 << 10) as spool:

        def append(n: int) -> None:
            for i in range(per_thread):
                spool.append(f"t{n}", None, f"{n}:{i}:".encode() + b"x" * 200)
                if i % 50 == 0:
                    spool.sync()
            spool.sync()

        got: list[SpoolRecord] = []

        def send() -> None:
            after = 0
            while after < threads * per_thread:
                if spool.wait_durable(after, timeout=5):
                    batch = spool.read(after, max_records=100)
                    got.extend(batch)
                    after = batch[-1].seq
                    spool.trim(after)

        workers = [threading.Thread(target=append, args=(n,)) for n in range(threads)]
        sender = threading.Thread(target=send)
        for t in [*workers, sender]:
            t.start()
        for t in [*workers, sender]:
            t.join(10)
        assert [r.seq for r in got] == list(range(1, threads * per_thread + 1))
        for n in range(threads):
            mine = [int(r.value.split(b":")[1]) for r in got if r.topic == f"t{n}"]
            assert mine == list(range(per_thread))


def test_spool_id_is_kept_across_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path / "a") as spool:
        first = spool.spool_id
    with Spool(tmp_path / "a") as spool:
        assert spool.spool_id == first
    with Spool(tmp_path / "b") as other:
        assert other.spool_id != first
    assert len(first) == 32


def test_a_directory_is_opened_once(tmp_path: Path) -> None:
    with Spool(tmp_path), pytest.raises(SpoolLocked):
        Spool(tmp_path)
    Spool(tmp_path).close()


def test_closed_spool_refuses_appends(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.close()
    spool.close()
    with pytest.raises(Exception, match="closed"):
        spool.append("events", None, b"x")


_CHILD = """
import sys
from pathlib import Path
from streamer.spool import Spool

spool = Spool(Path(sys.argv[1]), segment_bytes=1 << 20)
i = 0
while True:
    i += 1
    spool.append("events", str(i).encode(), (str(i).encode() + b".") * 500, i % 3)
    # More than the write buffer between syncs, so unsynced records have reached the
    # file, and a segment may be half full, when the kill lands.
    if i % 700 == 0:
        print(spool.sync(), flush=True)
"""


def test_kill_9_leaves_every_synced_record_readable(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert child.stdout is not None
    synced = 0
    try:
        while synced < 2000:
            line = child.stdout.readline()
            assert line, "the child died before syncing enough"
            synced = int(line)
        time.sleep(0.02)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    with Spool(tmp_path, segment_bytes=1 << 20) as spool:
        assert spool.last_seq >= synced
        records = _read_all(spool)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert all(
        r.value == (str(r.seq).encode() + b".") * 500 and r.partition == r.seq % 3 for r in records
    )


def test_segment_names_sort_by_seq() -> None:
    assert segment_name(1) == "spool-00000000000000000001.log"
    assert sorted([segment_name(10), segment_name(9)]) == [segment_name(9), segment_name(10)]


def test_a_tailer_in_another_process_reads_durable_records_in_order(tmp_path: Path) -> None:
    from streamer.spool import SpoolTailer

    spool = Spool(tmp_path / "s", segment_bytes=4096)
    for n in range(50):
        spool.append("t", f"k{n}".encode(), b"v" * 200)
    durable = spool.sync()
    for n in range(50, 60):
        spool.append("t", f"k{n}".encode(), b"v" * 200)  # appended, not yet durable
    tailer = SpoolTailer(tmp_path / "s", after_seq=10)
    got = tailer.read(durable, max_records=1000)
    assert [r.seq for r in got] == list(range(11, 51))  # across several segment files
    assert tailer.read(durable) == []
    assert [r.seq for r in tailer.read(spool.sync())] == list(range(51, 61))
    assert tailer.spool_id == spool.spool_id
    tailer.close()
    spool.close()
