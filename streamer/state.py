"""The streamer's durable memory: what it published, which local id is which uri, checkpoints.

One SQLite file, committed right after the spool's fsync so that it never claims more
than the spool holds. On start, whatever the spool holds beyond the last commit is
read back (see `Ingestor.recover`).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from rbloom import Bloom

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS local_ids (
    instance TEXT NOT NULL, id TEXT NOT NULL, uri TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (instance, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (source TEXT PRIMARY KEY, last_id TEXT NOT NULL,
    at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held_edits (uri TEXT PRIMARY KEY, edited_at TEXT NOT NULL,
    envelope BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
CREATE INDEX IF NOT EXISTS local_ids_at ON local_ids (at);
"""


@dataclass
class _Generation:
    bloom: Bloom
    capacity: int
    started_at: float
    last_added_at: float
    count: int = 0


class SeenFilter:
    """Which identities may have been seen within the dedup window: never a false "no",
    a false "maybe" for about 1 in 100 (the caller asks SQLite then).

    Bloom filters forget nothing, so the window is cut into generations: the newest takes
    every addition until it is a window old or full, and a generation goes once its last
    addition has left the window. Each new one is sized from the rate of the one before.
    At 48 h of a busy federated timeline (10 million identities) that is ~12 MB per
    generation, where a Python set of the same hashes took ~700 MB.
    """

    MIN_CAPACITY = 1 << 18
    FALSE_POSITIVES = 0.01

    def __init__(
        self, window_s: float, capacity: int = MIN_CAPACITY, now: float | None = None
    ) -> None:
        self.window_s = window_s
        self._generations: list[_Generation] = []
        self._open(capacity, time.time() if now is None else now)

    def _open(self, capacity: int, now: float) -> _Generation:
        capacity = max(capacity, self.MIN_CAPACITY)
        generation = _Generation(Bloom(capacity, self.FALSE_POSITIVES), capacity, now, now)
        self._generations.append(generation)
        return generation

    def __contains__(self, identity: int) -> bool:
        return any(identity in g.bloom for g in reversed(self._generations))

    def add(self, identity: int, now: float) -> None:
        newest = self._generations[-1]
        if newest.count >= newest.capacity:
            newest = self._open(2 * newest.capacity, now)
        elif now - newest.started_at >= self.window_s:
            newest = self._open(newest.count + newest.count // 2, now)
        newest.bloom.add(identity)
        newest.count += 1
        newest.last_added_at = max(newest.last_added_at, now)  # a clock set back

    def expire(self, cutoff: float) -> int:
        """Drop the generations whose every identity was added before `cutoff`."""
        keep = [g for g in self._generations[:-1] if g.last_added_at >= cutoff]
        dropped = len(self._generations) - 1 - len(keep)
        self._generations = [*keep, self._generations[-1]]
        return dropped

    @property
    def generations(self) -> int:
        return len(self._generations)

    @property
    def size_bytes(self) -> int:
        return sum(g.bloom.size_in_bits for g in self._generations) // 8


class StreamerState:
    """Not thread-safe: the `Ingestor` calls it under its lock."""

    def __init__(self, path: Path, window_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.window_s = window_s
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Identities of the dedup window: those since the last commit in memory, the rest
        # in SQLite behind a Bloom filter, so that only duplicates (and 1% of the others)
        # read SQLite and memory stays ~1 byte per identity.
        self._staged_seen: dict[str, float] = {}
        self._filter = self._load_filter()
        # (instance, local id) -> (uri, first seen), until the next commit; after it, SQLite
        # answers (only deletes ask, and they are few), so memory does not grow with ids.
        self._staged_ids: dict[tuple[str, str], tuple[str, float]] = {}
        self._checkpoints: dict[str, str] = dict(
            self._db.execute("SELECT source, last_id FROM checkpoints").fetchall()
        )
        self._dirty_checkpoints: set[str] = set()
        # Edits found by a backfill, waiting for the stream (see `Ingestor`): uri ->
        # (edited_at, envelope bytes); committed with the checkpoints they came with.
        self._held: dict[str, tuple[str, bytes]] = {
            str(uri): (str(at), bytes(raw))
            for uri, at, raw in self._db.execute("SELECT uri, edited_at, envelope FROM held_edits")
        }
        self._dirty_held: set[str] = set()

    # ------------------------------------------------------------------ reads

    def _load_filter(self) -> SeenFilter:
        cutoff = time.time() - self.window_s
        (count,) = self._db.execute("SELECT count(*) FROM seen WHERE at >= ?", (cutoff,)).fetchone()
        loaded = SeenFilter(self.window_s, capacity=2 * int(count))
        now = time.time()
        for (key,) in self._db.execute("SELECT key FROM seen WHERE at >= ?", (cutoff,)):
            loaded.add(hash(key), now)
        return loaded

    def seen(self, key: str) -> bool:
        if key in self._staged_seen:
            return True
        if hash(key) not in self._filter:
            return False
        return self._db.execute("SELECT 1 FROM seen WHERE key = ?", (key,)).fetchone() is not None

    def uri_of(self, instance: str, local_id: str) -> str | None:
        staged = self._staged_ids.get((instance, local_id))
        if staged is not None:
            return staged[0]
        row = self._db.execute(
            "SELECT uri FROM local_ids WHERE instance = ? AND id = ?", (instance, local_id)
        ).fetchone()
        return row[0] if row else None

    def recent_ids(self, instance: str, since: float) -> list[tuple[str, str, float]]:
        """(local id, uri, first seen) of the statuses of `instance` seen since `since` (epoch s)."""
        rows = self._db.execute(
            "SELECT id, uri, at FROM local_ids WHERE instance = ? AND at >= ? ORDER BY at",
            (instance, since),
        )
        return [(str(i), str(u), float(a)) for i, u, a in rows]

    def checkpoint(self, source: str) -> str | None:
        return self._checkpoints.get(source)

    def held_edit(self, uri: str) -> tuple[str, bytes] | None:
        return self._held.get(uri)

    def held_edits(self) -> dict[str, tuple[str, bytes]]:
        return dict(self._held)

    @property
    def spool_seq(self) -> int:
        row = self._db.execute("SELECT v FROM meta WHERE k = 'spool_seq'").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ staged writes

    def mark_seen(self, key: str) -> None:
        now = time.time()
        self._filter.add(hash(key), now)
        self._staged_seen[key] = now

    def map_id(self, instance: str, local_id: str, uri: str) -> None:
        """A local id names one status for good: the first mapping (and its time) stays."""
        self._staged_ids.setdefault((instance, local_id), (uri, time.time()))

    def advance(self, source: str, last_id: str) -> None:
        self._checkpoints[source] = last_id
        self._dirty_checkpoints.add(source)

    def hold_edit(self, uri: str, edited_at: str, envelope: bytes) -> None:
        self._held[uri] = (edited_at, envelope)
        self._dirty_held.add(uri)

    def release_edit(self, uri: str) -> None:
        if self._held.pop(uri, None) is not None:
            self._dirty_held.add(uri)

    def commit(self, spool_seq: int) -> None:
        """Make everything staged durable, with the spool position it corresponds to."""
        db = self._db
        db.execute("BEGIN")
        try:
            if self._staged_seen:
                # A key published again (its old row had left the window) is young again.
                db.executemany(
                    "INSERT INTO seen VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET at = excluded.at",
                    self._staged_seen.items(),
                )
            if self._staged_ids:
                db.executemany(
                    "INSERT OR IGNORE INTO local_ids VALUES (?, ?, ?, ?)",
                    [(i, local, uri, at) for (i, local), (uri, at) in self._staged_ids.items()],
                )
            now = time.time()
            db.executemany(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)",
                [(s, self._checkpoints[s], now) for s in self._dirty_checkpoints],
            )
            for uri in self._dirty_held:
                held = self._held.get(uri)
                if held is None:
                    db.execute("DELETE FROM held_edits WHERE uri = ?", (uri,))
                else:
                    db.execute("INSERT OR REPLACE INTO held_edits VALUES (?, ?, ?)", (uri, *held))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('spool_seq', ?)", (str(spool_seq),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._staged_seen.clear()
        self._staged_ids.clear()
        self._dirty_checkpoints.clear()
        self._dirty_held.clear()

    def expire(self) -> int:
        """Forget identities older than the dedup window; returns how many."""
        cutoff = time.time() - self.window_s
        db = self._db
        removed = db.execute("DELETE FROM seen WHERE at < ?", (cutoff,)).rowcount
        removed += db.execute("DELETE FROM local_ids WHERE at < ?", (cutoff,)).rowcount
        self._filter.expire(cutoff)
        return removed

    def close(self) -> None:
        self._db.close()
