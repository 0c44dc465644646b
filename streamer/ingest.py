"""Where every event from every source goes: checked, deduplicated by uri, written to the spool.

An event counts as published once it is in the spool and the spool is fsync'd; the
sender (`delivery.py`) moves it to Kafka from there. The state (identities, local ids,
checkpoints) commits right after each fsync, so after a crash the two agree up to the
last commit and `recover` re-reads the spool beyond it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from fedilake.contracts import (
    Envelope,
    EnvelopeError,
    EventKind,
    Topics,
    dead_letter_record,
    parse_time,
)

from .backfill import newer
from .envelopes import MalformedEvent, as_edit, identity_key, wrap_event
from .optouts import OptOutPolicy, apply_optout
from .sources import Source
from .spool import Spool, SpoolFull
from .sse import StreamEvent
from .state import StreamerState

log = logging.getLogger(__name__)

PublishedListener = Callable[[Envelope], None]

# Events whose ids are the position in the stream's timeline (edits and deletes are not).
_TIMELINE_EVENTS = ("update", "notification")


class IngestClosed(Exception):
    """The streamer is shutting down; the event was not taken (a restart backfills it)."""


class Ingestor:
    def __init__(
        self,
        spool: Spool,
        state: StreamerState,
        *,
        max_event_bytes: int,
        optout_policy: OptOutPolicy = OptOutPolicy.ANONYMIZE,
        spool_full_wait_s: float = 1.0,
        edit_hold_s: float = 5.0,
    ) -> None:
        self.spool = spool
        self.state = state
        self.max_event_bytes = max_event_bytes
        self.optout_policy = optout_policy
        self.spool_full_wait_s = spool_full_wait_s
        self.edit_hold_s = edit_hold_s
        # Edits a backfill found, by uri: the source whose backfill found them (None: an
        # earlier run), and when each goes out unless the stream settles it first; undated
        # until that backfill is over, since its stream is read only then.
        self._held_from: dict[str, str | None] = dict.fromkeys(state.held_edits())
        self._held_due: dict[str, float | None] = dict.fromkeys(self._held_from)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = False
        self._published_listeners: list[PublishedListener] = []
        # Told each durable spool position (the daemon passes it to the sender process).
        self.on_durable: Callable[[int], None] | None = None
        # Told when the periodic sync failed (the daemon stops); `failure` keeps the error.
        self.on_failure: Callable[[BaseException], None] | None = None
        self.failure: BaseException | None = None

    # ------------------------------------------------------------------ intake

    def offer(self, source: Source, item: StreamEvent, backfilled: bool = False) -> str:
        """Take one event; returns what became of it (for counters and tests)."""
        try:
            envelope = wrap_event(
                item.event,
                item.data,
                instance=source.instance_url,
                stream=source.stream,
                received_at=datetime.now(UTC),
                max_bytes=self.max_event_bytes,
            )
        except MalformedEvent as exc:
            self.dead_letter(str(exc), item.data, str(source))
            return "dead-lettered"
        return self.take(source, envelope, backfilled)

    def take(self, source: Source | None, envelope: Envelope, backfilled: bool = False) -> str:
        with self._lock:
            if self._closed:
                raise IngestClosed()
            outcome = self._take_locked(source, envelope, backfilled)
            self.counts[outcome] += 1  # under the lock: listeners and backfills count at once
        return outcome

    def _take_locked(self, source: Source | None, envelope: Envelope, backfilled: bool) -> str:
        state = self.state
        kind = envelope.kind
        if kind in (EventKind.STATUS, EventKind.EDIT) and envelope.status_id and envelope.uri:
            # Every copy's local id, duplicates included: a later delete names only that id.
            state.map_id(envelope.instance, envelope.status_id, envelope.uri)
        elif kind is EventKind.DELETE and envelope.status_id and not envelope.uri:
            envelope = replace(envelope, uri=state.uri_of(envelope.instance, envelope.status_id))
        if self._held_due and envelope.uri in self._held_due:
            self._settle_held_locked(envelope)
        outcome = self._publish_locked(envelope, backfilled, source)
        # The checkpoint moves only once the event is dealt with: one that never reached
        # the spool (shutdown while the spool was full) is backfilled after a restart.
        if source is not None and envelope.event in _TIMELINE_EVENTS:
            position = _timeline_id(envelope)
            if position is not None:
                state.advance(
                    source.name, newer(state.checkpoint(source.name), position) or position
                )
        return outcome

    def _publish_locked(
        self, envelope: Envelope, backfilled: bool, source: Source | None = None
    ) -> str:
        state = self.state
        kind = envelope.kind
        key = identity_key(envelope)
        if key is not None and state.seen(key):
            if not (backfilled and kind is EventKind.STATUS):
                return "duplicate"
            # A status backfilled after a gap may have been edited meanwhile.
            edited_at = envelope.payload_json.get("edited_at")
            if not edited_at:
                return "duplicate"
            envelope = as_edit(envelope)
            key = identity_key(envelope)
            if key is None or state.seen(key):
                return "duplicate"
            return self._hold_locked(envelope, str(edited_at), source)
        published = apply_optout(envelope, self.optout_policy)
        if published is None:
            if key is not None:
                state.mark_seen(key)
            return "withheld"
        value = published.to_bytes()
        raw_key = published.kafka_key()
        # The producer's partitioner places it (as for any client); see `delivery.py`.
        self._append(Topics.EVENTS.name, raw_key, value, None)
        if key is not None:
            state.mark_seen(key)
        for listener in self._published_listeners:
            listener(published)
        return "published"

    # ------------------------------------------------------------------ held edits
    #
    # A listener opens its stream, then backfills. A status edited in between is fetched in
    # its newest version while the stream still holds the older edits, so publishing the
    # backfilled version at once would put the edits of that status out of order. It is
    # held instead, and goes out just before the first later event of its status the
    # stream brings (a newer edit, a delete), is dropped if the stream brings the same
    # version, and goes out by itself `edit_hold_s` after the backfill that found it ended
    # (when the listener starts reading its stream). Held edits are committed with the
    # state, so neither a crash nor a shutdown loses them: the next run holds them again.

    def _hold_locked(self, edit: Envelope, edited_at: str, source: Source | None) -> str:
        assert edit.uri is not None  # identity_key gave an edit key, so it has a uri
        held = self.state.held_edit(edit.uri)
        if held is None or _edited(held[0]) <= _edited(edited_at):
            self.state.hold_edit(edit.uri, edited_at, edit.to_bytes())
        if edit.uri not in self._held_due:
            self._held_due[edit.uri] = None
            self._held_from[edit.uri] = source.name if source is not None else None
        return "held"

    def backfill_done(self, source: Source) -> None:
        """The listener of `source` reads its stream now: the edits its backfill held (and
        those of an earlier run) wait `edit_hold_s` more for the stream's older edits."""
        with self._lock:
            due = time.monotonic() + self.edit_hold_s
            for uri, at in self._held_due.items():
                if at is None and self._held_from.get(uri) in (source.name, None):
                    self._held_due[uri] = due

    def _settle_held_locked(self, arriving: Envelope) -> None:
        uri = arriving.uri
        assert uri is not None
        held = self.state.held_edit(uri)
        if held is None:
            self._forget_held_locked(uri)
            return
        if arriving.kind is EventKind.EDIT:
            theirs = arriving.payload_json.get("edited_at")
            if not theirs:
                return
            if _edited(str(theirs)) < _edited(held[0]):
                return  # an older edit, queued by the stream: it goes first
            if _edited(str(theirs)) == _edited(held[0]):
                self._drop_held_locked(uri)  # the stream brings this very version
                return
        elif arriving.kind is not EventKind.DELETE:
            return
        self._release_locked(uri)  # it predates what arrives: before it

    def _release_locked(self, uri: str) -> None:
        held = self.state.held_edit(uri)
        if held is not None:
            # Published before it is forgotten: a shutdown while the spool is full raises
            # here, and the edit stays held for the next run.
            outcome = self._publish_locked(Envelope.from_bytes(held[1]), backfilled=True)
            self.counts[outcome] += 1
        self._drop_held_locked(uri)

    def _drop_held_locked(self, uri: str) -> None:
        self.state.release_edit(uri)
        self._forget_held_locked(uri)

    def _forget_held_locked(self, uri: str) -> None:
        self._held_due.pop(uri, None)
        self._held_from.pop(uri, None)

    def release_held(self, everything: bool = False) -> int:
        """Publish the held edits whose time is up (all of them with `everything`)."""
        with self._lock:
            if self._closed:
                raise IngestClosed()
            return self._release_due_locked(everything)

    def _release_due_locked(self, everything: bool = False) -> int:
        if not self._held_due:
            return 0
        now = time.monotonic()
        due = [
            uri
            for uri, at in self._held_due.items()
            if everything or (at is not None and at <= now)
        ]
        for uri in due:
            self._release_locked(uri)
        return len(due)

    def dead_letter(self, reason: str, original: bytes, where: str) -> None:
        log.warning("dead-lettering an event from %s: %s", where, reason)
        record = dead_letter_record(reason, original, where)
        with self._lock:
            if self._closed:
                raise IngestClosed()
            self._append(Topics.DEAD_LETTER.name, None, record, 0)
            self.counts["dead-lettered"] += 1

    def state_checkpoint(self, source: Source) -> str | None:
        with self._lock:
            return self.state.checkpoint(source.name)

    def subscribe(self, listener: PublishedListener) -> None:
        """Called (under the ingest lock, so keep it quick) with every published envelope."""
        self._published_listeners.append(listener)

    def _append(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        while True:
            try:
                self.spool.append(topic, key, value, partition)
                return
            except SpoolFull:
                # Hold the sources back rather than drop: their sockets fill, servers
                # buffer or disconnect us, and the gap is backfilled after.
                log.error("spool full; holding events until Kafka takes some")
                self._lock.release()
                try:
                    time.sleep(self.spool_full_wait_s)
                finally:
                    self._lock.acquire()
                if self._closed:
                    raise IngestClosed() from None

    # ------------------------------------------------------------------ durability

    def sync(self) -> int:
        """fsync the spool, then commit the state to that position (a failed commit keeps
        its rows staged for the next one).

        The readers wait for it (the ingest lock is held throughout). Running the fsync and
        the commit beside them was tried: 3 of 3 runs of the 100,000-event scenario then
        published a status's edits out of order or lost one created and deleted around a
        kill, against 0 of 3 with the lock held; the cause was not found, so it stays held."""
        with self._lock:
            if self._closed:
                raise IngestClosed()
            self._release_due_locked()
            durable = self.spool.sync()
            self.state.commit(durable)
            if self.on_durable is not None:
                self.on_durable(durable)
            return durable

    def trim_spool(self, acked_seq: int) -> int:
        """Drop spool segments Kafka acknowledged and the state no longer needs."""
        with self._lock:
            if self._closed:
                return 0
            return self.spool.trim(min(acked_seq, self.state.spool_seq))

    def sync_periodically(self, every_s: float, stop: threading.Event) -> None:
        last_expiry = time.monotonic()
        while not stop.wait(every_s):
            try:
                self.sync()
                if time.monotonic() - last_expiry > 600:
                    with self._lock:
                        expired = self.state.expire()
                    last_expiry = time.monotonic()
                    log.info("forgot %d identities older than the dedup window", expired)
            except IngestClosed:
                return
            except Exception as exc:  # noqa: BLE001 - reported, then the streamer stops
                # Fail-stop: after a failed fsync the kernel may have dropped the pages while
                # a retry reports success, so nothing more is made durable by this process.
                # The next start recovers from what is on disk and backfills the gap.
                self.failure = exc
                log.critical(
                    "making the spool and the state durable failed (%s: %s); the streamer "
                    "stops, and its next start recovers from what is on disk",
                    exc.__class__.__name__,
                    exc,
                )
                if self.on_failure is not None:
                    self.on_failure(exc)
                return

    def recover(self) -> int:
        """Restore the state of records the spool holds beyond the last state commit."""
        after = self.state.spool_seq
        restored = 0
        with self._lock:
            while True:
                records = self.spool.read(after, max_records=1000)
                if not records:
                    break
                for record in records:
                    after = record.seq
                    if record.topic != Topics.EVENTS.name:
                        continue
                    try:
                        envelope = Envelope.from_bytes(record.value)
                    except EnvelopeError:
                        continue
                    source = Source(envelope.instance, envelope.stream)
                    self._restore_locked(source, envelope)
                    restored += 1
            self.state.commit(self.spool.durable_seq)
        if restored:
            log.info("restored %d events from the spool beyond the last checkpoint", restored)
        return restored

    def _restore_locked(self, source: Source, envelope: Envelope) -> None:
        state = self.state
        if (
            envelope.status_id
            and envelope.uri
            and envelope.kind
            in (
                EventKind.STATUS,
                EventKind.EDIT,
            )
        ):
            state.map_id(envelope.instance, envelope.status_id, envelope.uri)
        if envelope.event in _TIMELINE_EVENTS:
            position = _timeline_id(envelope)
            if position is not None:
                state.advance(
                    source.name, newer(state.checkpoint(source.name), position) or position
                )
        key = identity_key(envelope)
        if key is not None:
            state.mark_seen(key)

    def close(self) -> None:
        """Sync one last time and refuse further events."""
        with self._lock:
            if self._closed:
                return
            if self.failure is not None:
                self._closed = True  # nothing more is trusted to become durable
                return
            durable = self.spool.sync()  # held edits stay held: they are in the state
            self.state.commit(durable)
            if self.on_durable is not None:
                self.on_durable(durable)
            self._closed = True


def _edited(text: str) -> datetime:
    try:
        return parse_time(text)
    except (ValueError, OverflowError):
        return datetime.min.replace(tzinfo=UTC)


def _timeline_id(envelope: Envelope) -> str | None:
    if envelope.event == "update":
        return envelope.status_id
    try:
        found = envelope.payload_json.get("id")
    except ValueError:
        return None
    return str(found) if found is not None else None
