"""`fedilake stream`: every configured source, the spool, the Kafka sender and the refreshers, in one process."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import os
import threading
import time
from pathlib import Path

import requests

from fedilake.settings import KafkaSettings, StreamerSettings

from .backfill import GapBackfiller
from .delivery import run_sender_process
from .ingest import Ingestor
from .listener import StreamListener
from .optouts import OptOutPolicy
from .ratelimit import RateLimit
from .refresh import EngagementRefresher
from .sources import Source, SourceConfigError
from .spool import Spool
from .state import StreamerState

log = logging.getLogger(__name__)


class Streamer:
    """Owns the durable pieces (spool, state) and the threads around them.

    `start` recovers the state from the spool, then starts the sender, the periodic
    fsync and one listener per source; `stop` closes the intake (a final fsync), gives
    the sender `drain_s` to empty the spool into Kafka, and saves its position. What
    Kafka has not taken stays in the spool for the next start.
    """

    def __init__(
        self,
        settings: StreamerSettings,
        kafka: KafkaSettings,
        sources: list[Source],
        drain_s: float = 10.0,
    ) -> None:
        try:
            policy = OptOutPolicy(settings.optout_policy)
        except ValueError as exc:
            raise SourceConfigError(
                f"FEDILAKE_STREAMER_OPTOUT_POLICY must be anonymize, drop or keep, "
                f"not {settings.optout_policy!r}"
            ) from exc
        self.settings = settings
        self.sources = sources
        self.drain_s = drain_s
        state_dir: Path = settings.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        # No tail cache: this process reads its spool only when it starts (`recover`); the
        # sender process reads it from the files.
        self.spool = Spool(
            state_dir / "spool", max_bytes=settings.spool_max_bytes, tail_cache_bytes=0
        )
        self.state = StreamerState(state_dir / "state.sqlite3", settings.dedup_window_s)
        self.ingestor = Ingestor(
            self.spool,
            self.state,
            max_event_bytes=settings.max_event_bytes,
            optout_policy=policy,
            edit_hold_s=settings.edit_hold_s,
        )
        self.kafka = kafka
        self.state_dir = state_dir
        context = multiprocessing.get_context("spawn")
        self._context = context
        self._durable = context.Value("q", 0, lock=False)
        self._acked = context.Value("q", 0, lock=False)
        self._delivered = context.Value("q", 0, lock=False)
        self._sender_stop = context.Event()
        self._sender: multiprocessing.process.BaseProcess | None = None
        self.sender_restarts = 0
        self.ingestor.on_durable = self._set_durable
        self.ingestor.on_failure = self._on_ingest_failure
        self.stop_requested = threading.Event()
        session = requests.Session()
        rate_limits: dict[str, RateLimit] = {}
        backfiller = GapBackfiller(
            session,
            settings.backfill_page_size,
            settings.backfill_max_pages,
            settings.backfill_overlap_s,
            self.stop_requested,
        )
        self.listeners: list[StreamListener] = []
        self.refreshers: list[EngagementRefresher] = []
        ages = settings.refresh_ages()
        for source in sources:
            limit = rate_limits.setdefault(source.instance_url, RateLimit())
            self.listeners.append(
                StreamListener(
                    source,
                    self.ingestor,
                    backfiller,
                    limit,
                    stall_timeout_s=settings.stall_timeout_s,
                    reconnect_max_s=settings.reconnect_max_s,
                )
            )
            if ages and not any(r.instance_url == source.instance_url for r in self.refreshers):
                refresher = EngagementRefresher(
                    source.instance_url, source, self.ingestor, limit, ages, settings.refresh_share
                )
                self.ingestor.subscribe(refresher.track)
                self.refreshers.append(refresher)
        self._threads: list[threading.Thread] = []
        self._sync_stop = threading.Event()
        self.ingestor_closed = False

    def _on_ingest_failure(self, exc: BaseException) -> None:
        self.stop_requested.set()  # `wait` returns 3 and the caller stops everything

    def _set_durable(self, seq: int) -> None:
        self._durable.value = seq

    @property
    def delivered_events(self) -> int:
        """Messages Kafka acknowledged since start (dead letters included)."""
        return int(self._delivered.value)

    @property
    def acked_seq(self) -> int:
        return int(self._acked.value)

    def _start_sender(self) -> None:
        self._sender = self._context.Process(
            target=run_sender_process,
            name="fedilake-sender",
            args=(
                str(self.spool.directory),
                str(self.state_dir),
                self.kafka.bootstrap_servers,
                self.kafka.client_id,
                self._durable,
                self._acked,
                self._delivered,
                self._sender_stop,
                os.getpid(),
            ),
            daemon=False,
        )
        self._sender.start()

    def _watch_sender(self) -> None:
        """Trim what Kafka took; restart the sender if it died (it reconciles on start)."""
        while not self._sender_stop.wait(1.0):
            self.ingestor.trim_spool(self.acked_seq)
            sender = self._sender
            if sender is not None and not sender.is_alive() and not self.stop_requested.is_set():
                self.sender_restarts += 1
                log.error(
                    "the Kafka sender exited (code %s); restarting it (%d restarts)",
                    sender.exitcode,
                    self.sender_restarts,
                )
                self._start_sender()

    def start(self) -> None:
        self.ingestor.recover()
        self._durable.value = self.spool.durable_seq
        self._acked.value = 0
        for refresher in self.refreshers:
            resumed = refresher.resume(self.state)
            if resumed:
                log.info("re-scheduled %d refreshes of %s", resumed, refresher.instance_url)
        self._start_sender()
        self._spawn("watch-sender", self._watch_sender, daemon=True)
        self._spawn(
            "spool-sync",
            self.ingestor.sync_periodically,
            self.settings.spool_sync_interval_s,
            self._sync_stop,
        )
        for refresher in self.refreshers:
            self._spawn(f"refresh {refresher.instance_url}", refresher.run)
        for listener in self.listeners:
            self._spawn(f"listen {listener.source.name}", listener.run, daemon=True)
        self._spawn("reporter", self._report, daemon=True)
        log.info("streaming %d sources: %s", len(self.sources), ", ".join(map(str, self.sources)))

    def _spawn(self, name: str, target: object, *args: object, daemon: bool = False) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=daemon)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def wait(self) -> int:
        """Block until stopped or until every source failed for good; the exit status."""
        while not self.stop_requested.wait(0.5):
            if all(listener.error is not None for listener in self.listeners):
                log.error("no source can be read; stopping")
                self.stop()
                return 2
        return 3 if self.ingestor.failure is not None else 0

    def stop(self) -> None:
        if self.stop_requested.is_set() and self.ingestor_closed:
            return
        self.stop_requested.set()
        for listener in self.listeners:
            listener.stop()
        for refresher in self.refreshers:
            refresher.stop()
        self._sync_stop.set()
        self.ingestor.close()
        self.ingestor_closed = True
        deadline = time.monotonic() + self.drain_s
        while self.acked_seq < self.spool.durable_seq and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.acked_seq < self.spool.durable_seq:
            log.warning(
                "Kafka did not take everything within %.0fs; %d events stay in the spool "
                "for the next start",
                self.drain_s,
                self.spool.durable_seq - self.acked_seq,
            )
        self._sender_stop.set()
        sender = self._sender
        if sender is not None:
            sender.join(30)
            if sender.is_alive():
                sender.terminate()
                sender.join(5)
        for thread in self._threads:
            if not thread.daemon:
                thread.join(30)
        self.spool.close()
        self.state.close()
        counts = self.ingestor.counts
        log.info(
            "streamer stopped: %d published, %d duplicates dropped, %d dead-lettered, "
            "%d withheld (opt-outs), %d sent to Kafka",
            counts["published"],
            counts["duplicate"],
            counts["dead-lettered"],
            counts["withheld"],
            self.delivered_events,
        )

    def _report(self, every_s: float = 10.0) -> None:
        last, last_t = 0, time.monotonic()
        while not self.stop_requested.wait(every_s):
            now = time.monotonic()
            published = self.ingestor.counts["published"]
            rate = (published - last) / (now - last_t)
            last, last_t = published, now
            log.info(
                "published %d events (%.0f/s), %d duplicates dropped, %d in the spool "
                "not yet in Kafka",
                published,
                rate,
                self.ingestor.counts["duplicate"],
                max(self.spool.last_seq - self.acked_seq, 0),
            )
