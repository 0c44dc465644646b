"""A durable, append-only write-ahead spool on local disk, holding events until Kafka has taken them.

The streamer appends every event it will publish here first; a sender thread reads the
durable records back in order and sends them to Kafka, and trims the spool once Kafka has
acknowledged them. It survives kill -9 and restarts, and grows during a Kafka outage up to
``max_bytes``.

On disk a spool is one directory::

    spool.id                          a random id, created once (marks this spool's records in Kafka)
    spool.lock                        flock'd by the one process that has the spool open
    spool-<first seq, 20 digits>.log  segments; the last one is active (appended to)

A segment is a sequence of records, every integer big-endian (network order)::

    u8  magic 0xA7
    u32 length of body
    u32 CRC-32C of body
    body:
      u64 seq
      u8  flags            bit 0: key present, bit 1: partition present
      u16 topic length, topic (UTF-8)
      [u32 key length, key]      if bit 0
      [i32 partition]            if bit 1
      value                      the rest of the body

Seqs are consecutive (1, 2, 3, ...) over the spool's life; a segment is named after its first
seq, so numbering continues after a restart even when every older segment was trimmed.
"""

from __future__ import annotations

import bisect
import collections
import errno
import fcntl
import itertools
import logging
import os
import re
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from crc32c import crc32c

log = logging.getLogger(__name__)

_MAGIC = 0xA7
_HEADER = struct.Struct(">BII")  # magic, body length, crc32c(body)
_BODY_HEAD = struct.Struct(">QBH")  # seq, flags, topic length
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_FLAG_KEY = 0x01
_FLAG_PARTITION = 0x02
_FLAGS_KNOWN = _FLAG_KEY | _FLAG_PARTITION

_SEGMENT_NAME = re.compile(r"spool-(\d{20})\.log")
_ID_FILE = "spool.id"
_LOCK_FILE = "spool.lock"

# Writes go through one large user-space buffer, so appending a 3 KB record is a memcpy
# rather than a system call; sync() flushes it before the fsync.
_WRITE_BUFFER = 1 << 20
# Disk reads fetch this much at a time; recent segment data is in the page cache anyway.
_READ_CHUNK = 1 << 20
# A sparse (seq, offset) entry per this many bytes of a segment, so a read that misses the
# tail cache starts scanning at most this far before the record it wants.
_INDEX_EVERY = 1 << 20
_WARN_STEP = 0.05
_TOPIC_CACHE_MAX = 256


class SpoolError(Exception):
    """The spool cannot do what was asked; `retriable` says whether waiting may help."""

    retriable = False


class SpoolFull(SpoolError):
    """Appending would take the spool past its size limit; retriable once Kafka catches up."""

    retriable = True


class SpoolCorrupt(SpoolError):
    """A retained segment holds a record that fails its checks (not a torn tail)."""


class SpoolLocked(SpoolError):
    """Another process (or another Spool object) already has the spool directory open."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One event as the spool keeps it; `partition` is the Kafka partition the caller chose."""

    seq: int
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None


@dataclass(slots=True, eq=False)
class _Segment:
    path: Path
    first_seq: int
    last_seq: int  # first_seq - 1 while empty
    size: int  # bytes appended, including what is still in the write buffer
    durable_size: int  # bytes known to be fsync'd: a read never goes past this
    index: list[tuple[int, int]] = field(default_factory=list)  # sparse (seq, offset)


class _BadFrame(Exception):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"{reason} at offset {offset}")
        self.offset = offset
        self.reason = reason


def segment_name(first_seq: int) -> str:
    return f"spool-{first_seq:020d}.log"


def encode_record(record: SpoolRecord) -> bytes:
    """The framed bytes of one record, exactly as the spool writes it."""
    flags, parts = _body_parts(record.topic.encode(), record.key, record.partition, record.value)
    body = b"".join([_BODY_HEAD.pack(record.seq, flags, len(parts[0])), *parts])
    return _HEADER.pack(_MAGIC, len(body), crc32c(body)) + body


def _body_parts(
    topic: bytes, key: bytes | None, partition: int | None, value: bytes
) -> tuple[int, list[bytes]]:
    """Flags and the body after its seq/flags/topic-length head, built before taking the lock."""
    flags = 0
    parts = [topic]
    if key is not None:
        flags |= _FLAG_KEY
        parts += (_U32.pack(len(key)), key)
    if partition is not None:
        flags |= _FLAG_PARTITION
        parts.append(_I32.pack(partition))
    parts.append(value)
    return flags, parts


def _body_seq(body: memoryview) -> int:
    return int.from_bytes(body[:8], "big")


def _decode_body(body: memoryview, offset: int) -> SpoolRecord:
    try:
        seq, flags, topic_len = _BODY_HEAD.unpack_from(body, 0)
        pos = _BODY_HEAD.size
        if flags & ~_FLAGS_KNOWN or pos + topic_len > len(body):
            raise _BadFrame(offset, "malformed body")
        topic = str(body[pos : pos + topic_len], "utf-8")
        pos += topic_len
        key = None
        if flags & _FLAG_KEY:
            (key_len,) = _U32.unpack_from(body, pos)
            pos += _U32.size
            if pos + key_len > len(body):
                raise _BadFrame(offset, "malformed body")
            key = bytes(body[pos : pos + key_len])
            pos += key_len
        partition = None
        if flags & _FLAG_PARTITION:
            (partition,) = _I32.unpack_from(body, pos)
            pos += _I32.size
    except (struct.error, UnicodeDecodeError) as exc:
        raise _BadFrame(offset, f"malformed body ({exc})") from exc
    return SpoolRecord(seq, topic, key, bytes(body[pos:]), partition)


class _FrameScanner:
    """Walks the frames of one segment file between two offsets, reading in large chunks."""

    def __init__(self, f: BinaryIO, offset: int, end: int, chunk: int = _READ_CHUNK) -> None:
        self._f = f
        self._end = end
        self._chunk = chunk
        self.pos = offset
        self._buf = b""
        self._buf_start = offset
        f.seek(offset)

    def _ensure(self, n: int) -> memoryview:
        """At least n bytes from `pos` (the caller checked they exist before `end`)."""
        have = self._buf_start + len(self._buf) - self.pos
        if have < n:
            keep = self._buf[self.pos - self._buf_start :]
            want = min(max(self._chunk, n - have), self._end - (self.pos + have))
            pieces = [keep]
            got = 0
            while got < want:
                piece = self._f.read(want - got)
                if not piece:
                    break
                pieces.append(piece)
                got += len(piece)
            if got < n - have:
                raise _BadFrame(self.pos, "file shorter than expected")
            self._buf = b"".join(pieces)
            self._buf_start = self.pos
        start = self.pos - self._buf_start
        return memoryview(self._buf)[start : start + n]

    def next(self, verify: bool = True) -> tuple[int, memoryview] | None:
        """(offset, body) of the next frame, None at `end`; _BadFrame if it is torn or damaged."""
        pos = self.pos
        if pos >= self._end:
            return None
        if self._end - pos < _HEADER.size:
            raise _BadFrame(pos, "partial record header")
        magic, length, crc = _HEADER.unpack(self._ensure(_HEADER.size))
        if magic != _MAGIC:
            raise _BadFrame(pos, f"bad magic byte 0x{magic:02x}")
        if length < _BODY_HEAD.size:
            raise _BadFrame(pos, f"impossible body length {length}")
        if pos + _HEADER.size + length > self._end:
            raise _BadFrame(pos, "partial record")
        frame = self._ensure(_HEADER.size + length)
        body = frame[_HEADER.size :]
        if verify and crc32c(body) != crc:
            raise _BadFrame(pos, "crc mismatch")
        self.pos = pos + _HEADER.size + length
        return pos, body


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool in one directory; see the module docstring for the layout.

    Thread-safe: several threads may append and sync while one sender thread reads, waits
    and trims. One lock guards the in-memory state; fsyncs and disk reads happen outside it
    (on duplicated or separate file descriptors) so appenders are not held up by the disk.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 64 << 20,
        warn_ratio: float = 0.8,
        tail_cache_bytes: int = 16 << 20,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0 or tail_cache_bytes < 0:
            raise ValueError("max_bytes and segment_bytes must be positive, tail_cache_bytes >= 0")
        if not 0 < warn_ratio <= 1:
            raise ValueError(f"warn_ratio must be in (0, 1], not {warn_ratio}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.warn_ratio = warn_ratio
        self.tail_cache_bytes = tail_cache_bytes

        self._lock = threading.Lock()
        self._durable_changed = threading.Condition(self._lock)
        # Serialises sync() callers, so the fsync itself can run without holding _lock.
        self._sync_lock = threading.Lock()
        self._closed = False
        self._broken: BaseException | None = None
        self._dir_dirty = False
        self._topics: dict[str, bytes] = {}
        # Recently appended records, so the sender usually reads them without touching disk.
        self._tail: collections.deque[tuple[SpoolRecord, int]] = collections.deque()
        self._tail_bytes = 0
        # Where the sender's last disk read stopped: (next seq, its segment, its offset).
        self._hint: tuple[int, _Segment, int] | None = None
        self._warn_level: int | None = None
        self._last_trim = time.monotonic()

        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        try:
            self._spool_id = self._load_or_create_id()
            self._segments = self._recover()
            self._active = self._segments[-1]
            self._file = open(self._active.path, "ab", buffering=_WRITE_BUFFER)  # noqa: SIM115
            try:
                # What survived in the page cache of a killed process counts as durable, so
                # make it so; the directory too, for a segment we may just have created.
                os.fsync(self._file.fileno())
                _fsync_dir(self.directory)
            except BaseException:
                self._file.close()
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._last_seq = self._active.last_seq
        self._durable_seq = self._last_seq
        self._size = sum(s.size for s in self._segments)
        self._next_warn_at = self._warn_threshold(0)
        with self._lock:
            self._check_fill_locked()

    # ---- opening -------------------------------------------------------------------------

    def _take_lock(self) -> int:
        fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SpoolLocked(f"spool {self.directory} is already open elsewhere") from exc
            raise
        return fd

    def _load_or_create_id(self) -> str:
        path = self.directory / _ID_FILE
        try:
            spool_id = path.read_text().strip()
        except FileNotFoundError:
            spool_id = ""
        if spool_id:
            return spool_id
        spool_id = uuid.uuid4().hex
        tmp = path.with_name(_ID_FILE + ".tmp")
        with open(tmp, "w") as f:
            f.write(spool_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        return spool_id

    def _recover(self) -> list[_Segment]:
        found = sorted(
            (int(m.group(1)), p)
            for p in self.directory.iterdir()
            if (m := _SEGMENT_NAME.fullmatch(p.name))
        )
        if not found:
            path = self.directory / segment_name(1)
            path.touch()
            return [_Segment(path, 1, 0, 0, 0, [(1, 0)])]
        segments = []
        # Earlier segments were fsync'd whole before the next one was created (see _roll),
        # so they are trusted here and checked only as they are read.
        for (first, path), (next_first, _) in itertools.pairwise(found):
            size = path.stat().st_size
            segments.append(_Segment(path, first, next_first - 1, size, size, [(first, 0)]))
        first, path = found[-1]
        segments.append(self._recover_last(path, first))
        return segments

    def _recover_last(self, path: Path, first_seq: int) -> _Segment:
        """Scans the active segment and cuts off whatever follows its last good record."""
        size = path.stat().st_size
        segment = _Segment(path, first_seq, first_seq - 1, 0, 0, [(first_seq, 0)])
        with open(path, "rb", buffering=0) as f:
            scanner = _FrameScanner(f, 0, size)
            try:
                while (frame := scanner.next()) is not None:
                    offset, body = frame
                    seq = _body_seq(body)
                    if seq != segment.last_seq + 1:
                        raise _BadFrame(offset, f"seq {seq} where {segment.last_seq + 1} was due")
                    _decode_body(body, offset)
                    segment.last_seq = seq
                    if offset - segment.index[-1][1] >= _INDEX_EVERY:
                        segment.index.append((seq, offset))
                good = size
            except _BadFrame as bad:
                good = bad.offset
                log.warning(
                    "spool %s: dropped %s bytes of a torn tail from %s at offset %s (%s); "
                    "continuing after seq %s",
                    self.directory,
                    size - good,
                    path.name,
                    good,
                    bad.reason,
                    segment.last_seq,
                )
        if good < size:
            with open(path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        segment.size = segment.durable_size = good
        return segment

    # ---- properties ----------------------------------------------------------------------

    @property
    def spool_id(self) -> str:
        return self._spool_id

    @property
    def durable_seq(self) -> int:
        with self._lock:
            return self._durable_seq

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    @property
    def first_seq(self) -> int:
        """Seq of the oldest retained record (last_seq + 1 when the spool holds none)."""
        with self._lock:
            return self._segments[0].first_seq

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._size

    # ---- writing -------------------------------------------------------------------------

    def append(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> int:
        """Adds one record and returns its seq. It goes into a 1 MiB write buffer on its way to
        the OS; only sync() makes it durable (and readable), so a kill -9 before that may lose it."""
        topic_bytes = self._topics.get(topic)
        if topic_bytes is None:
            topic_bytes = topic.encode()
            if len(topic_bytes) > 0xFFFF:
                raise ValueError(f"topic name too long: {len(topic_bytes)} bytes")
            if len(self._topics) >= _TOPIC_CACHE_MAX:
                self._topics.clear()
            self._topics[topic] = topic_bytes
        # Copies of mutable buffers, since the tail cache keeps what it is given.
        if key is not None and type(key) is not bytes:
            key = bytes(key)
        if type(value) is not bytes:
            value = bytes(value)
        if partition is not None and not -(1 << 31) <= partition < (1 << 31):
            raise ValueError(f"partition out of range: {partition}")
        flags, parts = _body_parts(topic_bytes, key, partition, value)
        body_len = _BODY_HEAD.size + sum(map(len, parts))
        frame_len = _HEADER.size + body_len

        with self._lock:
            self._check_writable_locked()
            if self._size + frame_len > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.directory} is full: {_human(self._size)} of {_human(self.max_bytes)} "
                    f"({100 * self._size / self.max_bytes:.0f}%) used by seqs "
                    f"{self._segments[0].first_seq}..{self._last_seq}, no room for a "
                    f"{_human(frame_len)} record; Kafka may be unreachable"
                )
            active = self._active
            if active.size > 0 and active.size + frame_len > self.segment_bytes:
                self._roll_locked()
                active = self._active
            seq = self._last_seq + 1
            # One join, so the value is copied once before the buffered write copies it again.
            body = b"".join([_BODY_HEAD.pack(seq, flags, len(topic_bytes)), *parts])
            try:
                self._file.write(_HEADER.pack(_MAGIC, body_len, crc32c(body)))
                self._file.write(body)
            except BaseException as exc:
                # Part of the frame may have reached the file; anything appended after it
                # would be lost to the torn-tail cut on reopen, so take no more appends.
                self._broken = exc
                raise
            if active.size - active.index[-1][1] >= _INDEX_EVERY:
                active.index.append((seq, active.size))
            active.size += frame_len
            active.last_seq = seq
            self._last_seq = seq
            self._size += frame_len
            if self.tail_cache_bytes:
                self._tail.append((SpoolRecord(seq, topic, key, value, partition), frame_len))
                self._tail_bytes += frame_len
                while self._tail_bytes > self.tail_cache_bytes and len(self._tail) > 1:
                    self._tail_bytes -= self._tail.popleft()[1]
            if self._size >= self._next_warn_at:
                self._check_fill_locked()
            return seq

    def _roll_locked(self) -> None:
        """Starts a new segment. The old one is fsync'd first: a segment only exists once
        every earlier one is complete on disk, which is why reopening checks only the last."""
        old = self._active
        self._file.flush()
        os.fsync(self._file.fileno())
        new = _Segment(
            self.directory / segment_name(self._last_seq + 1),
            self._last_seq + 1,
            self._last_seq,
            0,
            0,
        )
        new.index.append((new.first_seq, 0))
        new_file = open(new.path, "ab", buffering=_WRITE_BUFFER)  # noqa: SIM115
        self._file.close()
        self._file = new_file
        old.durable_size = old.size
        self._segments.append(new)
        self._active = new
        self._dir_dirty = True
        if old.last_seq > self._durable_seq:
            self._durable_seq = old.last_seq
            self._durable_changed.notify_all()

    def sync(self) -> int:
        """Makes everything appended so far durable; returns the highest durable seq."""
        with self._sync_lock:
            with self._lock:
                self._check_writable_locked()
                target = self._last_seq
                if target == self._durable_seq and not self._dir_dirty:
                    return target
                active = self._active
                self._file.flush()
                flushed = active.size
                # A duplicate, so a roll or close() during the fsync cannot close it under us.
                fd = os.dup(self._file.fileno())
                sync_dir, self._dir_dirty = self._dir_dirty, False
            try:
                os.fsync(fd)
                if sync_dir:
                    _fsync_dir(self.directory)
            except BaseException:
                with self._lock:
                    self._dir_dirty = self._dir_dirty or sync_dir
                raise
            finally:
                os.close(fd)
            with self._lock:
                active.durable_size = max(active.durable_size, flushed)
                if target > self._durable_seq:
                    self._durable_seq = target
                    self._durable_changed.notify_all()
                return self._durable_seq

    def _check_writable_locked(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self.directory} is closed")
        if self._broken is not None:
            raise SpoolError(
                f"spool {self.directory} stopped taking appends after a write failed: {self._broken}; "
                "reopen it to recover"
            )

    # ---- reading -------------------------------------------------------------------------

    def wait_durable(self, after_seq: int, timeout: float) -> bool:
        """Blocks until a record with seq > after_seq is durable (True) or timeout/close (False)."""
        with self._lock:
            self._durable_changed.wait_for(
                lambda: self._durable_seq > after_seq or self._closed, timeout
            )
            return self._durable_seq > after_seq

    def read(
        self, after_seq: int, max_records: int = 1000, max_bytes: int = 8 << 20
    ) -> list[SpoolRecord]:
        """Durable records with seq > after_seq, in order, at least one if there is one.

        Stops before max_records or before the framed size passes max_bytes. Records already
        trimmed are skipped: read(0) starts at the oldest retained record.
        """
        if max_records <= 0:
            return []
        for _attempt in range(3):
            with self._lock:
                if self._closed:
                    raise SpoolError(f"spool {self.directory} is closed")
                durable = self._durable_seq
                start = max(after_seq + 1, self._segments[0].first_seq)
                if start > durable:
                    return []
                if self._tail and self._tail[0][0].seq <= start:
                    return self._read_tail_locked(start, durable, max_records, max_bytes)
                plan = self._plan_locked(start)
            try:
                return self._read_disk(plan, start, durable, max_records, max_bytes)
            except FileNotFoundError:
                # trim() removed a segment between planning and opening; plan again.
                continue
        raise SpoolError(
            f"spool {self.directory}: segments kept vanishing while reading after seq {after_seq}"
        )

    def _read_tail_locked(
        self, start: int, durable: int, max_records: int, max_bytes: int
    ) -> list[SpoolRecord]:
        out: list[SpoolRecord] = []
        total = 0
        for record, size in itertools.islice(self._tail, start - self._tail[0][0].seq, None):
            if record.seq > durable or (
                out and (len(out) >= max_records or total + size > max_bytes)
            ):
                break
            out.append(record)
            total += size
        return out

    def _plan_locked(self, start: int) -> list[tuple[_Segment, int, int, int]]:
        """(segment, offset, seq found at offset, durable end) for each segment to read."""
        i = bisect.bisect_right(self._segments, start, key=lambda s: s.first_seq) - 1
        segment = self._segments[i]
        j = bisect.bisect_right(segment.index, start, key=lambda e: e[0]) - 1
        seq_at, offset = segment.index[j]
        hint = self._hint
        if hint is not None and hint[1] is segment and seq_at < hint[0] <= start:
            seq_at, offset = hint[0], hint[2]
        plan = [(segment, offset, seq_at, segment.durable_size)]
        plan += [(s, 0, s.first_seq, s.durable_size) for s in self._segments[i + 1 :]]
        return plan

    def _read_disk(
        self,
        plan: list[tuple[_Segment, int, int, int]],
        start: int,
        durable: int,
        max_records: int,
        max_bytes: int,
    ) -> list[SpoolRecord]:
        out: list[SpoolRecord] = []
        total = 0
        chunk = min(_READ_CHUNK, max(64 << 10, max_bytes))
        hint: tuple[int, _Segment, int] | None = None
        for segment, offset, expected, end in plan:
            if offset >= end:
                continue
            with open(segment.path, "rb", buffering=0) as f:
                scanner = _FrameScanner(f, offset, end, chunk)
                try:
                    while True:
                        if len(out) >= max_records:
                            # Stop before touching the next frame, which may not be needed.
                            hint = (expected, segment, scanner.pos)
                            break
                        frame = scanner.next(verify=expected >= start)
                        if frame is None:
                            break
                        at, body = frame
                        seq = _body_seq(body)
                        if seq != expected:
                            raise _BadFrame(at, f"seq {seq} where {expected} was due")
                        expected += 1
                        if seq < start:
                            continue
                        size = _HEADER.size + len(body)
                        if seq > durable or (out and total + size > max_bytes):
                            hint = (seq, segment, at)
                            break
                        out.append(_decode_body(body, at))
                        total += size
                except _BadFrame as bad:
                    raise SpoolCorrupt(
                        f"spool segment {segment.path} is corrupt at offset {bad.offset}: "
                        f"{bad.reason}"
                    ) from None
            if hint is not None:
                break
        if hint is not None:
            with self._lock:
                self._hint = hint
        return out

    # ---- trimming and closing ------------------------------------------------------------

    def trim(self, upto_seq: int) -> int:
        """Deletes whole segments whose records are all <= upto_seq (never the active one);
        returns the bytes freed. Only durable records count as acknowledged."""
        with self._lock:
            upto = min(upto_seq, self._durable_seq)
            victims: list[_Segment] = []
            while len(self._segments) > 1 and self._segments[0].last_seq <= upto:
                victims.append(self._segments.pop(0))
            if not victims:
                return 0
            freed = sum(v.size for v in victims)
            self._size -= freed
            self._last_trim = time.monotonic()
            if self._hint is not None and self._hint[1] in victims:
                self._hint = None
            self._check_fill_locked()
        for victim in victims:
            victim.path.unlink(missing_ok=True)
        # Not needed for safety (a trimmed segment that reappears after a crash is only sent
        # again), but it keeps a crash from resurrecting a lot of already-sent data.
        _fsync_dir(self.directory)
        return freed

    def close(self) -> None:
        """Syncs and closes; idempotent. Wakes anyone in wait_durable()."""
        with self._lock:
            if self._closed:
                return
        try:
            if self._broken is None:
                self.sync()
        finally:
            with self._sync_lock, self._lock:
                if not self._closed:
                    self._closed = True
                    try:
                        self._file.close()
                    except OSError as exc:
                        log.warning(
                            "spool %s: closing the active segment failed: %s", self.directory, exc
                        )
                    os.close(self._lock_fd)
                    self._tail.clear()
                    self._durable_changed.notify_all()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- fill warnings -------------------------------------------------------------------

    def _warn_threshold(self, level: int) -> float:
        return self.max_bytes * (self.warn_ratio + _WARN_STEP * level)

    def _check_fill_locked(self) -> None:
        """Warns on crossing warn_ratio and each further 5% step; says so on dropping below."""
        ratio = self._size / self.max_bytes
        if self._size < self._warn_threshold(0):
            if self._warn_level is not None:
                log.info(
                    "spool %s is back below %.0f%% of %s (%.0f%%)",
                    self.directory,
                    100 * self.warn_ratio,
                    _human(self.max_bytes),
                    100 * ratio,
                )
            self._warn_level = None
            self._next_warn_at = self._warn_threshold(0)
            return
        # A small epsilon so 0.85 of max_bytes counts as step 1 despite float rounding.
        level = int((ratio - self.warn_ratio) / _WARN_STEP + 1e-9)
        if self._warn_level is None or level > self._warn_level:
            log.warning(
                "spool at %.0f%% of %s in %s (seqs %s..%s, nothing trimmed for %.0f s): "
                "it is filling up, so Kafka may be unreachable or too slow",
                100 * ratio,
                _human(self.max_bytes),
                self.directory,
                self._segments[0].first_seq,
                self._last_seq,
                time.monotonic() - self._last_trim,
            )
            self._warn_level = level
        # Only new highs warn again; a trim that lowers usage without going below
        # warn_ratio would otherwise make every small climb back repeat the warning.
        self._next_warn_at = self._warn_threshold(max(level, self._warn_level) + 1)


class SpoolTailer:
    """Reads a spool's records in order from another process: no lock, no writes.

    The owning process tells it how far the spool is durable (`read(durable_seq, ...)`);
    it never returns a record beyond that, so a half-written frame is never seen. The
    owner trims only what the tailer's reader acknowledged, so the segment being read
    stays in place.
    """

    def __init__(self, directory: Path, after_seq: int) -> None:
        self.directory = Path(directory)
        self.spool_id = (self.directory / _ID_FILE).read_text().strip()
        self._next = after_seq + 1
        self._file: BinaryIO | None = None
        self._offset = 0

    def _segments(self) -> list[tuple[int, Path]]:
        return sorted(
            (int(m.group(1)), p)
            for p in self.directory.iterdir()
            if (m := _SEGMENT_NAME.fullmatch(p.name))
        )

    def _open_for(self, seq: int) -> bool:
        """Open the segment holding `seq`, positioned at its start; False if there is none."""
        candidates = [(first, path) for first, path in self._segments() if first <= seq]
        if not candidates:
            return False
        _, path = candidates[-1]
        if self._file is not None:
            self._file.close()
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115
        self._offset = 0
        return True

    def read(self, durable_seq: int, max_records: int = 1000) -> list[SpoolRecord]:
        out: list[SpoolRecord] = []
        if self._next > durable_seq:
            return out
        if self._file is None and not self._open_for(self._next):
            return out
        while len(out) < max_records and self._next <= durable_seq:
            assert self._file is not None
            end = os.fstat(self._file.fileno()).st_size
            scanner = _FrameScanner(self._file, self._offset, end)
            progressed = False
            while len(out) < max_records:
                try:
                    frame = scanner.next()
                except _BadFrame:
                    break  # a frame still being written: it is beyond durable_seq
                if frame is None:
                    break
                at, body = frame
                seq = _body_seq(body)
                if seq > durable_seq:
                    break
                self._offset = scanner.pos
                progressed = True
                if seq < self._next:
                    continue  # before where we start
                if seq != self._next:
                    raise SpoolCorrupt(
                        f"spool {self.directory}: seq {seq} where {self._next} was due"
                    )
                out.append(_decode_body(body, at))
                self._next += 1
            if len(out) >= max_records or self._next > durable_seq:
                break
            if not progressed:
                # This segment is done: the next record is in the next segment.
                nxt = self.directory / segment_name(self._next)
                if not nxt.exists():
                    break
                if self._file is not None:
                    self._file.close()
                self._file = open(nxt, "rb", buffering=0)  # noqa: SIM115
                self._offset = 0
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
