"""The streamer's durable memory: what it published, which local id is which uri, checkpoints.

One SQLite file, committed right after the spool's fsync so that it never claims more
than the spool holds. On start, whatever the spool holds beyond the last commit is
read back (see `Ingestor.recover`).
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS local_ids (
    instance TEXT NOT NULL, id TEXT NOT NULL, uri TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (instance, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (source TEXT PRIMARY KEY, last_id TEXT NOT NULL,
    at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
CREATE INDEX IF NOT EXISTS local_ids_at ON local_ids (at);
"""

MEMORY_IDS = 200_000  # recent local ids answered from memory; older ones from SQLite


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
        # Every identity of the dedup window, as 64-bit hashes: the hot path never reads
        # SQLite (a collision, ~1e-8 at a million keys, would drop one event).
        self._known: set[int] = set()
        self._load_known()
        self._uris: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._staged_seen: list[tuple[str, float]] = []
        self._staged_ids: list[tuple[str, str, str, float]] = []
        self._checkpoints: dict[str, str] = dict(
            self._db.execute("SELECT source, last_id FROM checkpoints").fetchall()
        )
        self._dirty_checkpoints: set[str] = set()

    # ------------------------------------------------------------------ reads

    def _load_known(self) -> None:
        cutoff = time.time() - self.window_s
        rows = self._db.execute("SELECT key FROM seen WHERE at >= ?", (cutoff,))
        self._known = {hash(key) for (key,) in rows}

    def seen(self, key: str) -> bool:
        return hash(key) in self._known

    def uri_of(self, instance: str, local_id: str) -> str | None:
        found = self._uris.get((instance, local_id))
        if found is not None:
            return found
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

    @property
    def spool_seq(self) -> int:
        row = self._db.execute("SELECT v FROM meta WHERE k = 'spool_seq'").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ staged writes

    def mark_seen(self, key: str) -> None:
        self._known.add(hash(key))
        self._staged_seen.append((key, time.time()))

    def map_id(self, instance: str, local_id: str, uri: str) -> None:
        if self._uris.get((instance, local_id)) == uri:
            return
        self._remember(self._uris, (instance, local_id), uri)
        self._staged_ids.append((instance, local_id, uri, time.time()))

    def advance(self, source: str, last_id: str) -> None:
        self._checkpoints[source] = last_id
        self._dirty_checkpoints.add(source)

    def commit(self, spool_seq: int) -> None:
        """Make everything staged durable, with the spool position it corresponds to."""
        db = self._db
        db.execute("BEGIN")
        try:
            if self._staged_seen:
                db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", self._staged_seen)
            if self._staged_ids:
                db.executemany(
                    "INSERT OR REPLACE INTO local_ids VALUES (?, ?, ?, ?)", self._staged_ids
                )
            now = time.time()
            db.executemany(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)",
                [(s, self._checkpoints[s], now) for s in self._dirty_checkpoints],
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('spool_seq', ?)", (str(spool_seq),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._staged_seen.clear()
        self._staged_ids.clear()
        self._dirty_checkpoints.clear()

    def expire(self) -> int:
        """Forget identities older than the dedup window; returns how many."""
        cutoff = time.time() - self.window_s
        db = self._db
        removed = db.execute("DELETE FROM seen WHERE at < ?", (cutoff,)).rowcount
        removed += db.execute("DELETE FROM local_ids WHERE at < ?", (cutoff,)).rowcount
        if removed:
            self._load_known()
            self._known.update(hash(key) for key, _ in self._staged_seen)
        return removed

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _remember(cache: OrderedDict, key: object, value: object) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > MEMORY_IDS:
            cache.popitem(last=False)
