"""`fedilake simulate`: a small simulated fediverse of Mastodon-compatible servers, with ground truth.

One process serves `instances` simulated Mastodon instances (instance k on `port + k`,
instance 0 named `DEFAULT_DOMAIN`, the others `sim{k}.fedilake.example`). They share
one seeded `StatusGenerator`: every new status has an origin instance (its author's,
or for an author on a non-simulated server a random one), appears there and, with
probability `federation_share`, on each other instance too: the same `uri` under an
instance-local numeric `id` (snowflake-like, strictly increasing in emission order
per instance, whatever the `created_at`). Each instance renders it as Mastodon
would (`acct` relative to itself, its own tag URLs, `application` on local statuses,
replies pointing at the parent's local id there); account ids, media URLs and
engagement counts are the same everywhere, a simplification.

Each instance speaks the parts of the Mastodon API a streaming client uses:

* Streaming, SSE: `/api/v1/streaming/public` (`?only_media=true`), `/public/local`,
  `/public/remote`, `/hashtag?tag=X`, `/hashtag/local?tag=X`, `/user`,
  `/user/notification`, and `/api/v1/streaming?stream=...`; WebSocket: an upgrade
  of `GET /api/v1/streaming`, token by `Authorization`, `access_token` or
  `Sec-WebSocket-Protocol`, streams from `stream`/`tag` and `subscribe` /
  `unsubscribe` messages. `public:local` carries the statuses of that instance's
  own users, `public:remote` the others; `user` carries the same as `public`
  (the simulated user follows the whole federated timeline) and
  `user:notification` nothing. Events: `update`, `status.update` (an edit: same id
  and uri, new content and tags, a later `edited_at`) and `delete` (the bare local
  id). Boosts and replies are streamed on `public` like any status (Mastodon keeps
  them to home timelines; here the pipeline's one stream sees them).
* REST, with a token: `/api/v1/timelines/public` and `/api/v1/timelines/tag/{tag}`
  (Mastodon's `max_id` / `since_id` / `min_id` / `limit` paging and `Link` header),
  `/api/v1/statuses/{id}` with engagement counts growing with the status's age
  (`engagement_counts`); per-token rate limits with Mastodon's `X-RateLimit-*`
  headers. Each instance keeps its newest `timeline_limit` statuses for these.
* `/api/v1/instance` (v1 and v2) and `/api/v1/streaming/health`.
* `/api/v1/_fedilake/ground-truth` and `POST /api/v1/_fedilake/faults` (see
  `SimulatorServer.inject`): drop, stall, malformed and duplicate events.

Emission starts when the first subscriber ever connects. Paced (`rate > 0`), it then
runs on whether or not anyone is connected, so a dropped client finds the statuses of
its gap in the timelines. Unpaced (`rate == 0`), it runs while any instance has a
connection and never outruns the slowest live subscriber.

New statuses are posted (into the timelines) whether or not anyone listens. Edits and
deletes target recent statuses whose `update` a connection has received, and are drawn
only while one of the target's instances has a live (connected, not stalled)
subscriber of a stream that carries it. They count in the ground truth once written
to a connection (a delete: of an instance where the `update` was written, since it
names the status by that instance's id only); one written nowhere is undone, so the
timelines a client backfills from agree with the ground truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import random
import signal
import time
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from fedilake.contracts import format_time, parse_time
from fedilake.settings import SimulatorSettings
from streamer.generator import (
    DEFAULT_DOMAIN,
    REMOTE_DOMAINS,
    GroundTruth,
    StatusGenerator,
    engagement_counts,
    snowflake,
    status_domain,
)

log = logging.getLogger(__name__)

MASTODON_VERSION = "4.3.0"
MASTODON_API_VERSION = 2

# Framing of Mastodon's streaming server (streaming/index.js, `streamToHttp`).
SSE_HELLO = b":)\n"
SSE_HEARTBEAT = b":thump\n"

SUBSCRIBER_QUEUE_BATCHES = 256  # per subscriber; one item is one tick's batch of events
MIN_TICK_S = 0.01
MAX_BATCH = 5000
UNPACED_BATCH = 500
RECENT_TARGETS = 256  # edits, deletes and boosts pick among this many newest statuses
RECENT_UPDATES = 64  # per instance, what a `duplicate` fault may send again
TARGET_ATTEMPTS = 8
DEFAULT_PAGE, MAX_PAGE = 20, 40
HUGE_EVENT_BYTES = (1 << 20) + 4096  # over Kafka's default 1 MiB message limit
WS_CLOSE_TIMEOUT_S = 5.0
# A WebSocket client silent this long (pongs included) is closed, as Mastodon closes
# one that missed its 30 s ping; never sooner than two heartbeats.
WS_SILENT_LIMIT_S = 30.0

FAULT_ACTIONS: tuple[str, ...] = ("drop", "stall", "malformed", "duplicate")
# Planned faults due at the same event: what writes something first, what ends last.
_PLAN_ORDER: tuple[str, ...] = ("malformed", "duplicate", "stall", "drop")
MALFORMED_REASONS: tuple[str, ...] = ("not_json", "not_utf8", "no_uri", "too_large")
ADMIN_PATH = "/api/v1/_fedilake"
WEB_APPLICATION: dict[str, Any] = {"name": "Web", "website": None}

_SSE_STREAMS: dict[str, str] = {
    "/api/v1/streaming/public": "public",
    "/api/v1/streaming/public/local": "public:local",
    "/api/v1/streaming/public/remote": "public:remote",
    "/api/v1/streaming/hashtag": "hashtag",
    "/api/v1/streaming/hashtag/local": "hashtag:local",
    "/api/v1/streaming/user": "user",
    "/api/v1/streaming/user/notification": "user:notification",
}
STREAMS: frozenset[str] = frozenset(
    {
        "public",
        "public:local",
        "public:remote",
        "public:media",
        "public:local:media",
        "public:remote:media",
        "hashtag",
        "hashtag:local",
        "user",
        "user:notification",
    }
)
_TRUE = frozenset({"1", "true", "t", "on", "yes"})


def instance_domain(index: int) -> str:
    """The domain of simulated instance `index`; instance 0 keeps the historic one."""
    return DEFAULT_DOMAIN if index == 0 else f"sim{index}.fedilake.example"


def _compact(value: Any) -> str:
    # One line of compact JSON, like the JSON.stringify Mastodon streams (orjson: the
    # simulator's own JSON cost a third of its time, competing with the streamer it feeds).
    return orjson.dumps(value).decode()


def _tag_names(status: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(tag["name"]).lower() for tag in status.get("tags") or ())


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _iso_utc(epoch_s: float) -> str:
    """Rails' `iso8601(6)` of a UTC time, as Mastodon writes `X-RateLimit-Reset`."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------- streams


class StreamError(ValueError):
    """A stream request Mastodon would refuse with 400."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """One stream a connection follows, e.g. `public:local` or `hashtag` + `python`."""

    stream: str
    tag: str | None = None

    @classmethod
    def parse(cls, stream: str | None, tag: str | None = None) -> Subscription:
        if stream not in STREAMS:
            raise StreamError("Unknown stream type")
        if stream.startswith("hashtag"):
            tag = (tag or "").strip().lstrip("#")
            if not tag:
                raise StreamError("No tag for stream provided")
            return cls(stream, tag)
        return cls(stream)

    @property
    def name(self) -> list[str]:
        """The `stream` field of a WebSocket message."""
        return [self.stream] if self.tag is None else [self.stream, self.tag]

    def same(self, stream: str | None, tag: str | None) -> bool:
        mine = (self.tag or "").lower()
        return self.stream == stream and mine == (tag or "").strip().lstrip("#").lower()

    def wants(self, status: _Status, domain: str) -> bool:
        """Whether this stream carries `status` on the instance named `domain`."""
        stream = self.stream
        if stream in ("public", "user"):
            return True
        if stream == "user:notification":
            return False
        if self.tag is not None and self.tag.lower() not in status.tags:
            return False
        if stream.endswith(":media") and not status.has_media:
            return False
        if ":local" in stream:
            return status.domain == domain
        if ":remote" in stream:
            return status.domain != domain
        return True


# ---------------------------------------------------------------------- the fediverse's state


@dataclass(eq=False, slots=True)
class _Status:
    """One status of the simulated fediverse, with its local id on every instance it reached."""

    uri: str
    # The current version as instance 0 renders it, as compact JSON: text is not
    # tracked by the garbage collector, and every instance keeps thousands.
    text: str
    domain: str  # its author's home
    local_ids: dict[int, int]
    born: float  # monotonic time of posting, the age engagement grows with
    tags: tuple[str, ...]
    has_media: bool
    reply_ids: dict[int, int] | None = None  # the parent's local ids
    reblog_of: _Status | None = None
    boosted: bool = False
    deleted: bool = False
    seen_on: int = 0  # bit k: a connection of instance k got its `update`, or REST served it
    fresh: bool = False  # posted in the batch not yet dispatched
    edits: int = 0
    # The version the ground truth counts: the latest delivered; None once a delete was.
    counted: str | None = None
    counted_edit: int = 0

    def version(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.text)
        return parsed


class _Receipt:
    """An event offered to several connections; it takes effect when the first one writes it."""

    __slots__ = ("delivered", "edit", "instance", "kind", "refs", "status", "version")

    def __init__(
        self,
        kind: str,
        status: _Status,
        edit: int = 0,
        version: str | None = None,
        instance: int = 0,
    ) -> None:
        self.kind = kind  # "seen" (an update on `instance`), "edit" or "delete"
        self.status: _Status | None = status
        self.edit = edit
        self.version = version
        self.instance = instance
        self.delivered = False
        self.refs = 0

    @property
    def tracked(self) -> bool:
        return self.kind != "seen"


# What `expected` lists, if its receipt (None: unconditionally) was delivered:
# (uri, kind, version, receipt). Tuples, so the collector soon stops tracking them.
_Expectation = tuple[str, str, str | None, _Receipt | None]


@dataclass(eq=False, slots=True)
class _Outgoing:
    """One event for one instance, framed lazily and once for all its connections."""

    event: str
    payload: str | bytes  # JSON text or a bare id; bytes only for a non-UTF-8 fault
    status: _Status | None  # what streams filter on; None reaches each connection once
    receipt: _Receipt | None = None
    tally: str | None = None  # ground-truth counter bumped per connection written to
    sse: bytes | None = None
    ws_raw: str | bytes | None = None  # a verbatim WebSocket frame (faults)

    def sse_bytes(self) -> bytes:
        if self.sse is None:
            data = self.payload if isinstance(self.payload, bytes) else self.payload.encode()
            self.sse = b"event: " + self.event.encode() + b"\ndata: " + data + b"\n\n"
        return self.sse

    def ws_frame(self, name: list[str]) -> str | bytes:
        if self.ws_raw is not None:
            return self.ws_raw
        payload = self.payload
        if isinstance(payload, bytes):
            payload = payload.decode(errors="replace")
        return _compact({"stream": name, "event": self.event, "payload": payload})


@dataclass(eq=False, slots=True)
class _Chunk:
    """What one connection is sent in one go: frames, and which of them count for what."""

    frames: list[bytes | str]
    marks: list[tuple[int, _Receipt | None, str | None]] = field(default_factory=list)


class _Subscriber:
    """One streaming connection (SSE or WebSocket) of one instance."""

    def __init__(
        self,
        peer: str,
        instance: int = 0,
        subscriptions: Iterable[Subscription] = (Subscription("public"),),
        websocket: bool = False,
    ) -> None:
        self.peer = peer
        self.instance = instance
        self.subscriptions = list(subscriptions)
        self.websocket = websocket
        self.queue: asyncio.Queue[_Chunk | None] = asyncio.Queue()
        self.closing = False
        self.stalled_until: float | None = None
        self.heard = time.monotonic()  # WebSocket: when the client last sent anything

    @property
    def active(self) -> bool:
        return not self.closing and self.stalled_until is None

    def offer(self, chunk: _Chunk) -> bool:
        """Queue a chunk; False when the subscriber is too far behind to keep."""
        if self.queue.qsize() >= SUBSCRIBER_QUEUE_BATCHES:
            return False
        self.queue.put_nowait(chunk)
        return True

    def close(self) -> list[_Chunk]:
        """End the connection now: take back what is queued (returned), then the stop mark."""
        self.closing = True
        dropped: list[_Chunk] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                dropped.append(item)
        self.queue.put_nowait(None)
        return dropped

    def finish(self) -> None:
        """End the connection once what is queued has been written."""
        self.closing = True
        self.queue.put_nowait(None)

    def stall(self, until: float) -> None:
        self.stalled_until = until
        self.queue.put_nowait(None)  # wake the handler


class _Timeline:
    """One instance's statuses by local id, oldest first, paged as Mastodon's REST API does."""

    def __init__(self, limit: int) -> None:
        self._ids: list[int] = []
        self._head = 0
        self._by_id: dict[int, _Status] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, local_id: int, status: _Status) -> None:
        self._ids.append(local_id)
        self._by_id[local_id] = status
        if len(self._ids) - self._head > self._limit:
            self._by_id.pop(self._ids[self._head], None)
            self._head += 1
            if self._head > 1024 and self._head * 2 > len(self._ids):
                del self._ids[: self._head]
                self._head = 0

    def get(self, local_id: int) -> _Status | None:
        return self._by_id.get(local_id)

    def remove(self, local_id: int) -> None:
        self._by_id.pop(local_id, None)

    def restore(self, local_id: int, status: _Status) -> None:
        """Put a removed status back, unless it has aged out meanwhile."""
        if self._head < len(self._ids) and local_id >= self._ids[self._head]:
            self._by_id[local_id] = status

    def page(
        self,
        *,
        max_id: int | None,
        since_id: int | None,
        min_id: int | None,
        limit: int,
        wanted: Callable[[_Status], bool],
    ) -> list[tuple[int, _Status]]:
        """Newest first. With `min_id`, the `limit` statuses right after it (still newest
        first); otherwise the newest `limit` below `max_id` and above `since_id`."""
        ids, by_id, head = self._ids, self._by_id, self._head
        end = len(ids) if max_id is None else bisect_left(ids, max_id, head)
        out: list[tuple[int, _Status]] = []
        if min_id is not None:
            for i in range(bisect_right(ids, min_id, head), end):
                status = by_id.get(ids[i])
                if status is not None and wanted(status):
                    out.append((ids[i], status))
                    if len(out) == limit:
                        break
            out.reverse()
            return out
        for i in range(end - 1, head - 1, -1):
            local_id = ids[i]
            if since_id is not None and local_id <= since_id:
                break
            status = by_id.get(local_id)
            if status is not None and wanted(status):
                out.append((local_id, status))
                if len(out) == limit:
                    break
        return out


class _RateLimiter:
    """Fixed windows aligned to the epoch, like Rack::Attack's throttles in Mastodon."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._counts: dict[str, tuple[int, int]] = {}

    def hit(self, key: str) -> tuple[bool, dict[str, str]]:
        now = self._clock()
        window = int(now // self._window_s)
        seen_window, count = self._counts.get(key, (window, 0))
        count = count + 1 if seen_window == window else 1
        self._counts[key] = (window, count)
        if len(self._counts) > 10000:
            self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
        headers = {
            "X-RateLimit-Limit": str(self._limit),
            "X-RateLimit-Remaining": str(max(self._limit - count, 0)),
            "X-RateLimit-Reset": _iso_utc((window + 1) * self._window_s),
        }
        return count <= self._limit, headers


@dataclass(eq=False)
class _Instance:
    index: int
    domain: str
    timeline: _Timeline
    rate_limit: _RateLimiter
    port: int = 0
    url: str = ""
    last_id: int = 0
    statuses: int = 0
    subscribers: set[_Subscriber] = field(default_factory=set)
    recent_updates: deque[_Outgoing] = field(default_factory=lambda: deque(maxlen=RECENT_UPDATES))
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    runner: web.AppRunner | None = None

    def live(self) -> Iterable[_Subscriber]:
        return (s for s in self.subscribers if s.active)


INSTANCE_KEY = web.AppKey("instance", _Instance)


# ---------------------------------------------------------------------- the fault plan


@dataclass(frozen=True, slots=True)
class PlannedFault:
    at: int  # injected once this many events were emitted
    action: str
    instance: int


def parse_fault_plan(text: str | None, events: int | None, instances: int) -> list[PlannedFault]:
    """`drop=2,stall=1,malformed=3,duplicate=5`: each action that many times, spread
    evenly over `events` (the j-th of n after `events * j // (n + 1)` events), on the
    instances in turn; faults due together go malformed, duplicate, stall, drop.
    Empty or None: no plan."""
    if text is None or not text.strip():
        return []
    if events is None:
        raise ValueError("a fault plan needs a bounded number of events (--events)")
    counts: Counter[str] = Counter()
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            number = int(value)
        except ValueError:
            number = -1
        if not sep or name not in FAULT_ACTIONS or number < 0:
            raise ValueError(
                f"bad fault plan entry {part.strip()!r}: expected ACTION=COUNT, "
                f"ACTION one of {', '.join(FAULT_ACTIONS)}"
            )
        counts[name] += number
    plan = [
        PlannedFault(at=events * (j + 1) // (n + 1), action=action, instance=j % instances)
        for action, n in counts.items()
        for j in range(n)
    ]
    plan.sort(key=lambda f: (f.at, _PLAN_ORDER.index(f.action), f.instance))
    return plan


# ---------------------------------------------------------------------- the server


def _flag(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE


def _id_param(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else None


def _limit_param(value: str | None) -> int:
    if value is None or not value.strip().lstrip("-").isdigit():
        return DEFAULT_PAGE
    return min(max(int(value), 1), MAX_PAGE)


class SimulatorServer:
    """The running simulator: one aiohttp app per instance, the emission loop, the ground truth."""

    def __init__(
        self,
        settings: SimulatorSettings,
        generator: StatusGenerator | None = None,
        domain: str = DEFAULT_DOMAIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock`: the monotonic clock status ages (and so engagement counts) run on."""
        if settings.edit_share + settings.delete_share >= 1:
            raise ValueError("edit_share + delete_share must stay below 1")
        self._settings = settings
        self._clock = clock
        self._token = settings.token.get_secret_value()
        domains = [domain] + [instance_domain(k) for k in range(1, settings.instances)]
        self._instances = [
            _Instance(
                index=k,
                domain=d,
                timeline=_Timeline(settings.timeline_limit),
                rate_limit=_RateLimiter(settings.rate_limit, settings.rate_limit_window_s),
            )
            for k, d in enumerate(domains)
        ]
        self._single = len(self._instances) == 1
        self._home = {d: k for k, d in enumerate(domains)}
        self._generator = generator or StatusGenerator.from_settings(
            settings, domain=domain, local_domains=domains
        )
        self._plan = deque(parse_fault_plan(settings.faults, settings.events, len(domains)))
        # Federation, edits, deletes and boosts draw from their own stream, so the
        # statuses themselves stay those of the seed.
        self._rng = random.Random(f"{settings.seed}:fediverse")
        self._track_seen = settings.edit_share > 0 or settings.delete_share > 0
        self._truth = GroundTruth()
        self._sent = 0
        self._done = False
        self._recent: deque[_Status] = deque(maxlen=RECENT_TARGETS)
        self._fresh: list[_Status] = []
        self._by_generator_id: dict[str, _Status] = {}
        self._generator_ids: deque[str] = deque()
        self._expected: list[_Expectation] = []
        self._expected_truncated = False
        self._pending: set[_Receipt] = set()
        self._tallies: Counter[str] = Counter()
        self._engagement: dict[str, dict[str, Any]] = {}
        self._boosts = self._edits = self._deletes = self._drops = self._stalls = 0
        self._has_subscribers = asyncio.Event()
        self._ever_subscribed = asyncio.Event()
        self._emitter: asyncio.Task[None] | None = None
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    def _url(self, port: int) -> str:
        host = self._settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        return [inst.url or self._url(self._port_of(inst)) for inst in self._instances]

    def _port_of(self, inst: _Instance) -> int:
        if inst.port:
            return inst.port
        return self._settings.port + inst.index if self._settings.port else 0

    @property
    def domains(self) -> list[str]:
        return [inst.domain for inst in self._instances]

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def done(self) -> bool:
        return self._done

    @property
    def pending(self) -> int:
        """Edits and deletes queued for a connection and not yet written or given up."""
        return len(self._pending)

    @property
    def subscriber_count(self) -> int:
        return sum(len(inst.subscribers) for inst in self._instances)

    def ground_truth(self, expected: bool = True) -> dict[str, Any]:
        """What was emitted and written, for tests to compare the pipeline with
        (without the long `expected` list when `expected` is false).

        `GroundTruth`'s fields (`statuses`, `opted_out_statuses`, `hashtags_by_hour`,
        `indexable_hashtags_by_hour`: the final state, after the edits and deletes
        written to a connection), then:

        * `sent`: events emitted (statuses, boosts, edits, deletes); `done`: all
          `events` were; `instances`: `[{"index", "domain", "url"}]`.
        * `expected`: in emission order, what a lossless client that drops duplicates
          (by `uri`, and by `edited_at` for edits) publishes exactly once:
          `{"uri", "kind": "status"|"edit"|"delete", "version": edited_at|null}`; one
          `status` per status or boost ever posted, one `edit` per edit and one
          `delete` per delete that was written to at least one connection.
          `expected_truncated`: the list stopped at `expected_limit`; `pending`: edits
          and deletes queued but not yet written or given up (wait for 0).
        * `boosts` posted, `edits` and `deletes` written.
        * Faults, counted per connection written to: `malformed` (meant for a
          dead-letter topic) and `malformed_by_reason` (`not_json`, `not_utf8`,
          `no_uri`, `too_large`), `garbage` (lines an SSE parser ignores, or non-JSON
          WebSocket frames), `unknown` (events of an unknown kind, to keep),
          `duplicates_injected`; `drops` and `stalls`: connections ended or stalled.
        * `engagement`: per `uri`, the counts the last `GET /api/v1/statuses/{id}`
          returned and the status's age then (`age_s`).
        """
        doc = self._truth.to_dict()
        doc["sent"] = self._sent
        doc["done"] = self._done
        doc["instances"] = [
            {"index": inst.index, "domain": inst.domain, "url": url}
            for inst, url in zip(self._instances, self.urls, strict=True)
        ]
        if expected:
            doc["expected"] = [
                {"uri": uri, "kind": kind, "version": version}
                for uri, kind, version, receipt in self._expected
                if receipt is None or receipt.delivered
            ]
        doc["expected_truncated"] = self._expected_truncated
        doc["pending"] = len(self._pending)
        doc["boosts"] = self._boosts
        doc["edits"] = self._edits
        doc["deletes"] = self._deletes
        by_reason = {reason: self._tallies[f"malformed:{reason}"] for reason in MALFORMED_REASONS}
        doc["malformed"] = sum(by_reason.values())
        doc["malformed_by_reason"] = by_reason
        doc["garbage"] = self._tallies["garbage"]
        doc["unknown"] = self._tallies["unknown"]
        doc["duplicates_injected"] = self._tallies["duplicate"]
        doc["drops"] = self._drops
        doc["stalls"] = self._stalls
        doc["engagement"] = dict(self._engagement)
        return doc

    def build_app(self, index: int = 0) -> web.Application:
        inst = self._instances[index]
        app = web.Application(middlewares=[self._rest_middleware])
        app[INSTANCE_KEY] = inst
        routes = [
            web.get("/api/v1/streaming", self._handle_streaming),
            web.get("/api/v1/streaming/", self._handle_streaming),
            web.get("/api/v1/streaming/health", self._handle_health),
            web.get("/api/v1/timelines/public", self._handle_public_timeline),
            web.get("/api/v1/timelines/tag/{hashtag}", self._handle_tag_timeline),
            web.get("/api/v1/statuses/{id}", self._handle_status),
            web.get(f"{ADMIN_PATH}/ground-truth", self._handle_ground_truth),
            web.post(f"{ADMIN_PATH}/faults", self._handle_faults),
        ]
        routes.extend(web.get(path, self._handle_sse_path) for path in _SSE_STREAMS)
        # Mastodon.py asks for `/api/v1/instance/`, with the slash; Rails accepts both.
        for path in ("/api/v1/instance", "/api/v1/instance/"):
            routes.append(web.get(path, self._handle_instance_v1))
        for path in ("/api/v2/instance", "/api/v2/instance/"):
            routes.append(web.get(path, self._handle_instance_v2))
        app.add_routes(routes)
        return app

    async def start(self) -> None:
        try:
            for inst in self._instances:
                # No access log: it would print request URLs, and `access_token` may be one.
                runner = web.AppRunner(
                    self.build_app(inst.index), shutdown_timeout=2.0, access_log=None
                )
                await runner.setup()
                inst.runner = runner
                site = web.TCPSite(runner, self._settings.host, self._port_of(inst))
                await site.start()
                inst.port = self._port_of(inst)
                if runner.addresses:  # the bound port, when the settings asked for port 0
                    inst.port = int(runner.addresses[0][1])
                inst.url = self._url(inst.port)
        except BaseException:
            for inst in self._instances:
                if inst.runner is not None:
                    await inst.runner.cleanup()
            raise
        self._emitter = asyncio.create_task(self._emit_loop(), name="simulator-emitter")
        log.info(
            "simulator listening on %s (seed=%s rate=%s/s events=%s)",
            ", ".join(self.urls),
            self._settings.seed,
            self._settings.rate,
            self._settings.events,
        )

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._emitter is not None:
            self._emitter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._emitter
        for inst in self._instances:
            for subscriber in list(inst.subscribers):
                self._release(subscriber.close())
        for inst in self._instances:
            if inst.runner is not None:
                await inst.runner.cleanup()
        self._write_ground_truth()
        log.info("simulator stopped after %s events", self._sent)

    def _write_ground_truth(self) -> None:
        path = self._settings.ground_truth_file
        if path is None:
            return
        try:
            _write_atomically(path, json.dumps(self.ground_truth(), ensure_ascii=False, indent=1))
        except OSError as exc:
            log.error("could not write ground truth to %s: %s", path, exc)
        else:
            log.info("ground truth of %s events written to %s", self._sent, path)

    # ------------------------------------------------------------------ emission

    def _remaining(self) -> int | None:
        events = self._settings.events
        return None if events is None else max(events - self._sent, 0)

    async def _emit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        rate = self._settings.rate
        await self._ever_subscribed.wait()
        began, base = loop.time(), self._sent
        while self._remaining() != 0:
            if rate > 0:
                due = base + int((loop.time() - began) * rate) + 1
                count = min(due - self._sent, MAX_BATCH)
            elif not self.subscriber_count:
                await self._has_subscribers.wait()
                continue
            elif self._busiest_backlog() > SUBSCRIBER_QUEUE_BATCHES // 2:
                # Unpaced: as fast as the slowest subscriber reads, never dropping it.
                await asyncio.sleep(MIN_TICK_S)
                continue
            else:
                count = UNPACED_BATCH
            remaining = self._remaining()
            if remaining is not None:
                count = min(count, remaining)
            if count > 0:
                self._emit(count)
            if rate > 0:
                next_due = began + (self._sent - base) / rate
                await asyncio.sleep(max(next_due - loop.time(), MIN_TICK_S))
            elif self._busiest_backlog() < 0:
                await asyncio.sleep(MIN_TICK_S)  # only stalled connections: no reader sets a pace
            else:
                await asyncio.sleep(0)

    def _busiest_backlog(self) -> int:
        """The longest queue of a live subscriber; -1 when no subscriber is live."""
        return max((s.queue.qsize() for inst in self._instances for s in inst.live()), default=-1)

    def _emit(self, count: int) -> None:
        batch: list[list[_Outgoing]] = [[] for _ in self._instances]
        for _ in range(count):
            self._next_event(self._sent, batch)
            self._sent += 1
            if self._plan and self._plan[0].at <= self._sent:
                self._dispatch(batch)
                batch = [[] for _ in self._instances]
                while self._plan and self._plan[0].at <= self._sent:
                    fault = self._plan.popleft()
                    self.inject(fault.action, fault.instance)
        self._dispatch(batch)
        if self._remaining() == 0 and not self._done:
            self._done = True
            log.info("simulator emitted all %s events", self._sent)
            self._write_ground_truth()

    def _next_event(self, index: int, batch: list[list[_Outgoing]]) -> None:
        settings = self._settings
        if settings.edit_share > 0 or settings.delete_share > 0:
            roll = self._rng.random()
            if roll < settings.edit_share:
                if self._edit(index, batch):
                    return
            elif roll < settings.edit_share + settings.delete_share and self._delete(batch):
                return
        if settings.reblog_share > 0 and self._rng.random() < settings.reblog_share:
            original = self._pick_target(lambda s: s.reblog_of is None, "boost")
            if original is not None:
                boost = self._generator.reblog_of(original.version(), self._rng, index)
                self._post(boost, batch, reblog_of=original)
                return
        self._post(self._generator.next_status(index), batch)

    def _expect(self, uri: str, kind: str, version: str | None, receipt: _Receipt | None) -> None:
        if len(self._expected) >= self._settings.expected_limit:
            if not self._expected_truncated:
                log.warning("ground truth lists only the first %s events", len(self._expected))
            self._expected_truncated = True
            return
        self._expected.append((uri, kind, version, receipt))

    def _post(
        self,
        status: dict[str, Any],
        batch: list[list[_Outgoing]],
        reblog_of: _Status | None = None,
    ) -> None:
        """A new status (or boost): where it lands, its local ids, its truth, its events."""
        domain = status_domain(status)
        home = self._home.get(domain)
        present = [0] if self._single else self._landing(home, reblog_of)

        generator_id = str(status["id"])
        created = parse_time(str(status["created_at"])) if not self._single else None
        local_ids: dict[int, int] = {}
        for k in present:
            inst = self._instances[k]
            if k == 0:
                local_id = int(generator_id)
            else:
                assert created is not None
                local_id = max(snowflake(created, inst.statuses * 8 + k), inst.last_id + 1)
                while local_id in local_ids.values():
                    local_id += 1
            local_ids[k] = local_id
            inst.last_id = local_id
        if home is not None and home != 0 and home in local_ids:
            # The author's own server names the status after its own id.
            username = status["account"]["username"]
            own = local_ids[home]
            if reblog_of is not None:
                status["uri"] = status["url"] = (
                    f"https://{domain}/users/{username}/statuses/{own}/activity"
                )
            else:
                status["uri"] = f"https://{domain}/users/{username}/statuses/{own}"
                status["url"] = f"https://{domain}/@{username}/{own}"

        parent = self._by_generator_id.get(str(status.get("in_reply_to_id")))
        text = _compact(status)
        record = _Status(
            uri=str(status["uri"]),
            text=text,
            domain=domain,
            local_ids=local_ids,
            born=self._clock(),
            tags=_tag_names(status),
            has_media=bool(status.get("media_attachments")),
            reply_ids=parent.local_ids if parent is not None else None,
            reblog_of=reblog_of,
            counted=text,
        )
        self._truth.record(status)
        self._expect(record.uri, "status", None, None)
        if reblog_of is not None:
            reblog_of.boosted = True
            self._boosts += 1
        self._recent.append(record)
        self._by_generator_id[generator_id] = record
        self._generator_ids.append(generator_id)
        if len(self._generator_ids) > RECENT_TARGETS:
            self._by_generator_id.pop(self._generator_ids.popleft(), None)

        if self._track_seen:
            record.fresh = True
            self._fresh.append(record)
        for k, local_id in local_ids.items():
            inst = self._instances[k]
            inst.timeline.add(local_id, record)
            inst.statuses += 1
            payload = text if self._single else _compact(self._render(record, k, status))
            receipt = _Receipt("seen", record, instance=k) if self._track_seen else None
            out = _Outgoing("update", payload, record, receipt)
            batch[k].append(out)
            inst.recent_updates.append(out)

    def _landing(self, home: int | None, reblog_of: _Status | None) -> list[int]:
        """The instances a new status reaches: its origin, and each other with the share."""
        rng, share = self._rng, self._settings.federation_share
        if reblog_of is not None:
            # A boost travels with its original: it reaches only instances that have it.
            reach = sorted(reblog_of.local_ids)
            origin = home if home in reblog_of.local_ids else rng.choice(reach)
        else:
            # An author of a non-simulated server reaches one instance first, at random.
            reach = list(range(len(self._instances)))
            origin = home if home is not None else rng.randrange(len(reach))
        return [k for k in reach if k == origin or (share > 0 and rng.random() < share)]

    def _pick_target(self, allowed: Callable[[_Status], bool], purpose: str) -> _Status | None:
        """A recent status to `boost`, `edit` or `delete`.

        Edits and deletes go to statuses whose `update` was written to a connection (or
        goes out in this batch, ahead of them), and only while a live subscriber can
        get them: for a delete, on an instance where the `update` was written, since a
        delete names the status by that instance's id only.
        """
        recent = self._recent
        if not recent:
            return None
        for _ in range(TARGET_ATTEMPTS):
            status = recent[self._rng.randrange(len(recent))]
            if status.deleted or not allowed(status):
                continue
            if purpose == "boost":
                return status
            reached = -1 if status.fresh else status.seen_on
            if reached and self._reachable(status, -1 if purpose == "edit" else reached):
                return status
        return None

    def _reachable(self, status: _Status, instances: int = -1) -> bool:
        """Whether a live subscriber of one of its instances (those of the bit mask
        `instances`) follows a stream carrying it."""
        for k in status.local_ids:
            if not instances >> k & 1:
                continue
            inst = self._instances[k]
            for subscriber in inst.live():
                if any(s.wants(status, inst.domain) for s in subscriber.subscriptions):
                    return True
        return False

    def _edit(self, index: int, batch: list[list[_Outgoing]]) -> bool:
        status = self._pick_target(lambda s: s.reblog_of is None and not s.boosted, "edit")
        if status is None:
            return False
        at = self._generator.event_time(index)
        version = self._generator.edit_of(status.version(), self._rng, at)
        status.text = _compact(version)
        status.tags = _tag_names(version)
        status.edits += 1
        receipt = _Receipt("edit", status, status.edits, status.text)
        self._expect(status.uri, "edit", str(version["edited_at"]), receipt)
        for k in status.local_ids:
            payload = status.text if self._single else _compact(self._render(status, k, version))
            batch[k].append(_Outgoing("status.update", payload, status, receipt))
        return True

    def _delete(self, batch: list[list[_Outgoing]]) -> bool:
        status = self._pick_target(lambda s: not s.boosted, "delete")
        if status is None:
            return False
        status.deleted = True
        receipt = _Receipt("delete", status)
        self._expect(status.uri, "delete", None, receipt)
        for k, local_id in status.local_ids.items():
            self._instances[k].timeline.remove(local_id)
            batch[k].append(_Outgoing("delete", str(local_id), status, receipt))
        return True

    # ------------------------------------------------------------------ rendering

    def _render(
        self, status: _Status, k: int, version: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The status as instance `k` shows it: its local ids, accounts and tag URLs.
        `version`: the status's current version, when the caller has it parsed."""
        if version is None:
            version = status.version()
        if self._single:
            return version
        inst = self._instances[k]
        local = status.domain == inst.domain
        out: dict[str, Any] = {}
        for key, value in version.items():
            if key == "id":
                out[key] = str(status.local_ids[k])
            elif key == "in_reply_to_id" and value is not None:
                parent = status.reply_ids.get(k) if status.reply_ids is not None else None
                out[key] = str(parent) if parent is not None else None
                if parent is None:
                    out["in_reply_to_account_id"] = None
            elif key == "in_reply_to_account_id" and key in out:
                continue
            elif key == "application":
                if local:
                    out[key] = value
            elif key == "account":
                if local and "application" not in version:
                    out["application"] = None if status.reblog_of else WEB_APPLICATION
                out[key] = self._account_as(value, inst)
            elif key == "mentions" and k != 0:
                out[key] = [{**m, "acct": self._acct_as(m, inst)} for m in value]
            elif key == "tags" and k != 0:
                out[key] = [
                    {"name": t["name"], "url": f"https://{inst.domain}/tags/{quote(t['name'])}"}
                    for t in value
                ]
            elif key == "reblog" and status.reblog_of is not None:
                out[key] = self._render(status.reblog_of, k)
            else:
                out[key] = value
        return out

    @staticmethod
    def _acct_as(account: dict[str, Any], inst: _Instance) -> str:
        home = str(account["url"]).split("/")[2]
        username = str(account["username"])
        return username if home == inst.domain else f"{username}@{home}"

    def _account_as(self, account: dict[str, Any], inst: _Instance) -> dict[str, Any]:
        if inst.index == 0:
            return account
        key = str(account["id"])
        shown = inst.accounts.get(key)
        if shown is None:
            shown = inst.accounts[key] = {**account, "acct": self._acct_as(account, inst)}
        return shown

    def _present(self, status: _Status, k: int, record: bool = False) -> dict[str, Any]:
        """The status as a REST response shows it: with its engagement counts by now."""
        out = dict(self._render(status, k))
        target, subject = out, status
        if status.reblog_of is not None and isinstance(out.get("reblog"), dict):
            target = out["reblog"] = dict(out["reblog"])
            subject = status.reblog_of
        age = self._clock() - subject.born
        counts = engagement_counts(self._settings.seed, subject.uri, age)
        target.update(counts)
        if record:
            self._engagement[subject.uri] = {**counts, "age_s": round(age, 3)}
        return out

    # ------------------------------------------------------------------ delivery

    def _dispatch(self, batch: Sequence[list[_Outgoing]]) -> None:
        for k, outs in enumerate(batch):
            if outs:
                self._offer(self._instances[k], outs)
        for outs in batch:
            for out in outs:
                if out.receipt is not None:
                    self._resolve(out.receipt)  # offered to no one: it never takes effect
        for status in self._fresh:
            status.fresh = False
        self._fresh.clear()

    def _offer(self, inst: _Instance, outs: list[_Outgoing]) -> int:
        """Queue `outs` for every live subscriber of `inst`; how many got some."""
        reached = 0
        for subscriber in list(inst.subscribers):
            if not subscriber.active:
                continue
            chunk = self._chunk_for(subscriber, outs, inst.domain)
            if chunk is None:
                continue
            if not subscriber.offer(chunk):
                log.warning(
                    "disconnecting stream subscriber %s: %s batches behind",
                    subscriber.peer,
                    SUBSCRIBER_QUEUE_BATCHES,
                )
                self._unsubscribe(subscriber)
                self._release(subscriber.close())
                continue
            reached += 1
            for _, receipt, _ in chunk.marks:
                if receipt is not None:
                    receipt.refs += 1
                    if receipt.tracked and not receipt.delivered:
                        self._pending.add(receipt)
        return reached

    @staticmethod
    def _chunk_for(subscriber: _Subscriber, outs: list[_Outgoing], domain: str) -> _Chunk | None:
        frames: list[bytes | str] = []
        marks: list[tuple[int, _Receipt | None, str | None]] = []
        subscriptions = subscriber.subscriptions
        if not subscriptions:
            return None
        for out in outs:
            if subscriber.websocket:
                if out.status is None:
                    frames.append(out.ws_frame(subscriptions[0].name))
                else:
                    for subscription in subscriptions:
                        if subscription.wants(out.status, domain):
                            frames.append(out.ws_frame(subscription.name))
                            if out.receipt is not None or out.tally is not None:
                                marks.append((len(frames) - 1, out.receipt, out.tally))
                    continue
            elif out.status is None or subscriptions[0].wants(out.status, domain):
                frames.append(out.sse_bytes())
            else:
                continue
            if out.receipt is not None or out.tally is not None:
                marks.append((len(frames) - 1, out.receipt, out.tally))
        return _Chunk(frames, marks) if frames else None

    def _settle(
        self, chunk: _Chunk, instance: int = 0, upto: int | None = None, start: int = 0
    ) -> int:
        """Count the marks of frames `start .. upto` (exclusive) that a connection of
        `instance` has written as such; returns the next `start`."""
        marks = chunk.marks
        end = len(marks) if upto is None else start
        if upto is not None:
            while end < len(marks) and marks[end][0] < upto:
                end += 1
        for _, receipt, tally in marks[start:end]:
            if tally is not None:
                self._tallies[tally] += 1
            if receipt is not None:
                receipt.refs -= 1
                status = receipt.status
                if receipt.kind == "delete" and (
                    status is None or not status.seen_on >> instance & 1
                ):
                    # A bare id of a status this instance never showed: no client can
                    # tell which status it was.
                    self._resolve(receipt)
                    continue
                if not receipt.delivered:
                    receipt.delivered = True
                    self._take_effect(receipt)
                self._resolve(receipt)
        return end

    def _release(self, chunks: Iterable[_Chunk], start: int = 0) -> None:
        """Chunks (or the rest of one, from mark `start`) that will never be written."""
        for chunk in chunks:
            for _, receipt, _ in chunk.marks[start:]:
                if receipt is not None:
                    receipt.refs -= 1
                    self._resolve(receipt)
            start = 0

    def _resolve(self, receipt: _Receipt) -> None:
        if receipt.delivered or receipt.refs <= 0:
            self._pending.discard(receipt)
            if receipt.refs <= 0:
                if not receipt.delivered:
                    self._undo(receipt)
                receipt.status = receipt.version = None  # let the status go

    def _undo(self, receipt: _Receipt) -> None:
        """An edit or delete no connection got never happened: the timelines (which a
        client backfills from) go back to what the ground truth counts."""
        status = receipt.status
        if status is None or status.counted is None:
            return
        if receipt.kind == "delete" and status.deleted:
            status.deleted = False
            for k, local_id in status.local_ids.items():
                self._instances[k].timeline.restore(local_id, status)
        elif receipt.kind == "edit" and status.edits == receipt.edit:
            # The latest edit: back to the latest version written (earlier ones resolved
            # first, as every connection writes in order).
            status.text = status.counted
            status.tags = _tag_names(json.loads(status.counted))

    def _take_effect(self, receipt: _Receipt) -> None:
        status = receipt.status
        if status is None:
            return
        if receipt.kind == "seen":
            status.seen_on |= 1 << receipt.instance
        elif receipt.kind == "edit":
            self._edits += 1
            if status.counted is not None and receipt.edit > status.counted_edit:
                assert receipt.version is not None
                self._truth.revise(json.loads(status.counted), json.loads(receipt.version))
                status.counted, status.counted_edit = receipt.version, receipt.edit
        elif receipt.kind == "delete":
            self._deletes += 1
            if status.counted is not None:
                self._truth.forget(json.loads(status.counted))
                status.counted = None

    def _subscribe(self, subscriber: _Subscriber) -> None:
        self._instances[subscriber.instance].subscribers.add(subscriber)
        self._has_subscribers.set()
        self._ever_subscribed.set()

    def _unsubscribe(self, subscriber: _Subscriber) -> None:
        self._instances[subscriber.instance].subscribers.discard(subscriber)
        if not self.subscriber_count:
            self._has_subscribers.clear()

    # ------------------------------------------------------------------ faults

    def inject(
        self,
        action: str,
        instance: int | None = None,
        *,
        seconds: float | None = None,
        count: int = 1,
    ) -> int:
        """Apply a fault to one instance (or all) now; returns the connections it reached.

        `drop` ends every connection once what was queued for it is written; `stall`
        keeps each open but silent (no events, heartbeats, pings or pongs) for
        `seconds` (default `stall_s`), then ends it; `malformed` writes `count` rounds
        of broken events (see `_broken_events`); `duplicate` writes the `count` latest
        `update`s of the instance again.
        """
        if action not in FAULT_ACTIONS:
            raise ValueError(f"unknown fault {action!r}")
        targets = self._instances if instance is None else [self._instances[instance]]
        reached = 0
        for inst in targets:
            if action == "drop":
                for subscriber in list(inst.subscribers):
                    if not subscriber.closing:
                        subscriber.finish()
                        self._unsubscribe(subscriber)
                        reached += 1
                self._drops += reached
            elif action == "stall":
                until = time.monotonic() + (seconds or self._settings.stall_s)
                live = list(inst.live())
                for subscriber in live:
                    subscriber.stall(until)
                self._stalls += len(live)
                reached += len(live)
            elif action == "malformed":
                outs = [out for _ in range(count) for out in self._broken_events(inst)]
                reached += self._offer(inst, outs)
            else:
                latest = [o for o in inst.recent_updates if o.status and not o.status.deleted]
                outs = [
                    _Outgoing(o.event, o.payload, o.status, None, "duplicate", o.sse)
                    for o in latest[-count:]
                ]
                if outs:
                    reached += self._offer(inst, outs)
        log.info("fault %s on %s: %s connections", action, instance, reached)
        return reached

    def _broken_events(self, inst: _Instance) -> list[_Outgoing]:
        """One of each: not JSON, not UTF-8, no `uri`, over 1 MiB, a garbage line, an
        unknown event. The first four are meant for a client's dead-letter topic, the
        garbage line is ignored by an SSE parser as the specification says, the
        unknown event is kept."""
        now = format_time(datetime.now(UTC))
        n = self._tallies["malformed:too_large"] + 1
        huge = {
            "id": "0",
            "created_at": now,
            "uri": f"https://{inst.domain}/_fedilake/huge/{n}",
            "content": "<p>" + "x" * HUGE_EVENT_BYTES + "</p>",
            "tags": [],
            "account": {"id": "0", "username": "huge", "url": f"https://{inst.domain}/@huge"},
        }
        no_uri = {"id": "0", "created_at": now, "content": "<p>no uri</p>", "tags": []}
        return [
            _Outgoing(
                "update", '{"id":"0","content":"<p>cut off', None, tally="malformed:not_json"
            ),
            _Outgoing(
                "update",
                b'{"id":"0","content":"\xff\xfe not UTF-8"}',
                None,
                tally="malformed:not_utf8",
                # A text frame must be UTF-8; the payload string carries a lone surrogate.
                ws_raw='{"stream":["public"],"event":"update",'
                '"payload":"{\\"id\\":\\"0\\",\\"content\\":\\"\\ud800 not UTF-8\\"}"}',
            ),
            _Outgoing("update", _compact(no_uri), None, tally="malformed:no_uri"),
            _Outgoing("update", _compact(huge), None, tally="malformed:too_large"),
            _Outgoing(
                "update",
                "",
                None,
                tally="garbage",
                sse=b"garbage line without a field name\n\n",
                ws_raw="garbage frame that is not JSON",
            ),
            _Outgoing(
                "fedilake.unknown",
                _compact({"note": "an event kind clients do not know yet", "n": n}),
                None,
                tally="unknown",
            ),
        ]

    # ------------------------------------------------------------------ REST plumbing

    def _valid(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest((token or "").encode(), self._token.encode())

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else header.strip()

    def _auth_error(self, request: web.Request) -> str | None:
        """Mastodon's rule: the `Authorization` header, else the `access_token` parameter."""
        header = self._bearer(request)
        token = header if header is not None else request.query.get("access_token", "")
        if not token:
            return "Missing access token"
        if not self._valid(token):
            return "Invalid access token"
        return None

    @web.middleware
    async def _rest_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        path = request.path
        needs_token = path.startswith(("/api/v1/timelines/", "/api/v1/statuses/"))
        if not needs_token and not path.startswith(("/api/v1/instance", "/api/v2/instance")):
            response: web.StreamResponse = await handler(request)
            return response
        header = self._bearer(request)
        token = header if header is not None else request.query.get("access_token")
        valid = self._valid(token)
        # Throttled per token, or per address without a valid one, as Mastodon does.
        key = f"token:{token}" if valid else f"ip:{request.remote}"
        allowed, headers = request.app[INSTANCE_KEY].rate_limit.hit(key)
        if not allowed:
            return web.json_response({"error": "Too many requests"}, status=429, headers=headers)
        if needs_token and not valid:
            return web.json_response(
                {"error": "The access token is invalid"}, status=401, headers=headers
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        response.headers.update(headers)
        return response

    # ------------------------------------------------------------------ streaming handlers

    async def _handle_streaming(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._serve_websocket(request)
        return await self._serve_sse(request, request.query.get("stream"))

    async def _handle_sse_path(self, request: web.Request) -> web.StreamResponse:
        stream = _SSE_STREAMS[request.path]
        if stream.startswith("public") and _flag(request.query.get("only_media")):
            stream += ":media"
        return await self._serve_sse(request, stream)

    async def _serve_sse(self, request: web.Request, stream: str | None) -> web.StreamResponse:
        try:
            subscription = Subscription.parse(stream, request.query.get("tag"))
        except StreamError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        error = self._auth_error(request)
        if error is not None:
            log.warning("refused stream for %s: %s", request.remote, error)
            return web.json_response({"error": error}, status=401)

        inst = request.app[INSTANCE_KEY]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "private, no-store"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        subscriber = _Subscriber(str(request.remote), inst.index, [subscription])
        await response.write(SSE_HELLO)
        self._subscribe(subscriber)
        log.info(
            "stream subscriber %s connected to %s %s (%s)",
            subscriber.peer,
            inst.domain,
            subscription.stream,
            len(inst.subscribers),
        )
        loop = asyncio.get_running_loop()
        heartbeat = self._settings.heartbeat_s
        # A fixed cadence from connection time, like Mastodon's setInterval.
        next_beat = loop.time() + heartbeat if heartbeat > 0 else None
        writing: _Chunk | None = None
        try:
            while True:
                if subscriber.stalled_until is not None:
                    await self._sit_out_stall(subscriber)
                    break
                try:
                    async with asyncio.timeout_at(next_beat):
                        item = await subscriber.queue.get()
                except TimeoutError:
                    if subscriber.stalled_until is None:
                        await response.write(SSE_HEARTBEAT)
                    next_beat = (next_beat or loop.time()) + heartbeat
                    continue
                if item is None:
                    if subscriber.closing:
                        break
                    continue  # woken to look at its state
                if subscriber.stalled_until is not None:
                    self._release([item])
                    continue
                writing = item
                await response.write(b"".join(f for f in item.frames if isinstance(f, bytes)))
                writing = None
                self._settle(item, subscriber.instance)
        except ConnectionError:
            log.info("stream subscriber %s went away", subscriber.peer)
        finally:
            self._end_subscriber(subscriber, writing)
        return response

    async def _sit_out_stall(self, subscriber: _Subscriber) -> None:
        """Write nothing until the stall is over (or the server stops), then let it end."""
        while not subscriber.closing:
            remaining = (subscriber.stalled_until or 0) - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    item = await subscriber.queue.get()
            except TimeoutError:
                break
            if item is not None:
                self._release([item])
        log.info("stalled stream subscriber %s: closing it", subscriber.peer)

    def _end_subscriber(self, subscriber: _Subscriber, writing: _Chunk | None) -> None:
        self._unsubscribe(subscriber)
        leftover = [writing] if writing is not None else []
        while not subscriber.queue.empty():
            item = subscriber.queue.get_nowait()
            if item is not None:
                leftover.append(item)
        self._release(leftover)
        log.info("stream subscriber %s disconnected", subscriber.peer)

    def _websocket_token(self, request: web.Request) -> tuple[str | None, list[str]]:
        """Mastodon's order: `Authorization`, `access_token`, then `Sec-WebSocket-Protocol`."""
        header = request.headers.get("Sec-WebSocket-Protocol", "")
        offered = [p.strip() for p in header.split(",") if p.strip()]
        bearer = self._bearer(request)
        if bearer is not None:
            return bearer, offered
        if request.query.get("access_token"):
            return request.query["access_token"], offered
        valid = [p for p in offered if self._valid(p)]
        candidates = valid or offered
        return (candidates[0] if candidates else None), offered

    async def _serve_websocket(self, request: web.Request) -> web.StreamResponse:
        token, offered = self._websocket_token(request)
        if not token or not self._valid(token):
            error = "Missing access token" if not token else "Invalid access token"
            log.warning("refused WebSocket for %s: %s", request.remote, error)
            return web.json_response({"error": error}, status=401)
        inst = request.app[INSTANCE_KEY]
        # Echo the offered protocol (the `ws` library Mastodon uses picks the first).
        chosen = [token] if token in offered else offered[:1]
        ws = web.WebSocketResponse(protocols=chosen, autoping=False, timeout=WS_CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        subscriber = _Subscriber(str(request.remote), inst.index, [], websocket=True)
        if "stream" in request.query:
            self._client_subscribe(
                subscriber, "subscribe", request.query.get("stream"), request.query.get("tag")
            )
        self._subscribe(subscriber)
        log.info("WebSocket subscriber %s connected to %s", subscriber.peer, inst.domain)
        reader = asyncio.create_task(self._read_websocket(ws, subscriber))
        loop = asyncio.get_running_loop()
        heartbeat = self._settings.heartbeat_s
        next_beat = loop.time() + heartbeat if heartbeat > 0 else None
        writing: _Chunk | None = None
        start = 0
        close_code = WSCloseCode.GOING_AWAY
        try:
            while not ws.closed:
                if subscriber.stalled_until is not None:
                    await self._sit_out_stall(subscriber)
                    break
                try:
                    async with asyncio.timeout_at(next_beat):
                        item = await subscriber.queue.get()
                except TimeoutError:
                    if subscriber.stalled_until is not None:
                        continue
                    silent = time.monotonic() - subscriber.heard
                    if silent > max(WS_SILENT_LIMIT_S, 2 * heartbeat):
                        log.info(
                            "WebSocket subscriber %s answers no ping: closing", subscriber.peer
                        )
                        close_code = WSCloseCode.POLICY_VIOLATION
                        break
                    # Pings by hand rather than aiohttp's `heartbeat=`, so a stall can stop them.
                    await ws.ping()
                    next_beat = (next_beat or loop.time()) + heartbeat
                    continue
                if item is None:
                    if subscriber.closing:
                        break
                    continue
                if subscriber.stalled_until is not None:
                    self._release([item])
                    continue
                writing, start = item, 0
                for i, frame in enumerate(item.frames):
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)
                    start = self._settle(item, subscriber.instance, i + 1, start)
                writing = None
        except ConnectionError:
            log.info("WebSocket subscriber %s went away", subscriber.peer)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await reader
            if writing is not None:  # the frames after `start` were not written
                self._release([writing], start)
            self._end_subscriber(subscriber, None)
            if not ws.closed:
                with contextlib.suppress(ConnectionError):
                    await ws.close(code=close_code)
        return ws

    async def _read_websocket(self, ws: web.WebSocketResponse, subscriber: _Subscriber) -> None:
        async for message in ws:
            if subscriber.stalled_until is not None:
                # Stalled: read nothing more, answer no ping, until the writer closes.
                await asyncio.sleep(max(subscriber.stalled_until - time.monotonic(), 0) + 60)
                return
            subscriber.heard = time.monotonic()
            if message.type is WSMsgType.PING:
                with contextlib.suppress(ConnectionError):
                    await ws.pong(message.data)
            elif message.type is WSMsgType.TEXT:
                try:
                    request = json.loads(message.data)
                except ValueError:
                    self._ws_error(subscriber, "Could not parse the message as JSON")
                    continue
                if isinstance(request, dict):
                    self._client_subscribe(
                        subscriber, request.get("type"), request.get("stream"), request.get("tag")
                    )
        if not subscriber.closing:
            subscriber.finish()  # the client closed: end the writer too

    def _client_subscribe(self, subscriber: _Subscriber, kind: Any, stream: Any, tag: Any) -> None:
        stream = stream if isinstance(stream, str) else None
        tag = tag if isinstance(tag, str) else None
        if kind == "unsubscribe":
            subscriber.subscriptions = [
                s for s in subscriber.subscriptions if not s.same(stream, tag)
            ]
            return
        if kind != "subscribe":
            return
        try:
            subscription = Subscription.parse(stream, tag)
        except StreamError as exc:
            self._ws_error(subscriber, str(exc))
            return
        if not any(s.same(subscription.stream, subscription.tag) for s in subscriber.subscriptions):
            subscriber.subscriptions.append(subscription)

    @staticmethod
    def _ws_error(subscriber: _Subscriber, error: str) -> None:
        if subscriber.active:
            subscriber.queue.put_nowait(_Chunk([_compact({"error": error, "status": 400})]))

    # ------------------------------------------------------------------ REST handlers

    async def _handle_public_timeline(self, request: web.Request) -> web.Response:
        return self._timeline(request, None)

    async def _handle_tag_timeline(self, request: web.Request) -> web.Response:
        return self._timeline(request, request.match_info["hashtag"].lstrip("#").lower())

    def _timeline(self, request: web.Request, tag: str | None) -> web.Response:
        inst = request.app[INSTANCE_KEY]
        query = request.query
        local, remote = _flag(query.get("local")), _flag(query.get("remote"))
        only_media = _flag(query.get("only_media"))
        limit = _limit_param(query.get("limit"))

        def wanted(status: _Status) -> bool:
            if tag is not None and tag not in status.tags:
                return False
            if only_media and not status.has_media:
                return False
            is_local = status.domain == inst.domain
            return not (local and not is_local) and not (remote and is_local)

        page = inst.timeline.page(
            max_id=_id_param(query.get("max_id")),
            since_id=_id_param(query.get("since_id")),
            min_id=_id_param(query.get("min_id")),
            limit=limit,
            wanted=wanted,
        )
        body = [self._present(status, inst.index) for _, status in page]
        for _, status in page:
            # The client now knows this instance's id of the status, so a delete sent here
            # (which names only that id) can reach it even if no stream showed the status.
            status.seen_on |= 1 << inst.index
        headers: dict[str, str] = {}
        links = []
        if page and len(page) == limit:  # Mastodon's `records_continue?`
            links.append(f'<{self._page_url(request, "max_id", page[-1][0])}>; rel="next"')
        if page:
            links.append(f'<{self._page_url(request, "min_id", page[0][0])}>; rel="prev"')
        if links:
            headers["Link"] = ", ".join(links)
        return web.json_response(body, headers=headers, dumps=_compact)

    @staticmethod
    def _page_url(request: web.Request, param: str, value: int) -> str:
        kept = [
            (k, v)
            for k, v in request.query.items()
            if k not in ("max_id", "min_id", "since_id", "access_token")
        ]
        kept.append((param, str(value)))
        kept.sort(key=lambda item: item[0])  # Rails' `to_query` order
        return str(request.url.with_query(kept))

    async def _handle_status(self, request: web.Request) -> web.Response:
        inst = request.app[INSTANCE_KEY]
        local_id = _id_param(request.match_info["id"])
        status = inst.timeline.get(local_id) if local_id is not None else None
        if status is None or status.deleted:
            return web.json_response({"error": "Record not found"}, status=404)
        return web.json_response(self._present(status, inst.index, record=True), dumps=_compact)

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK", content_type="text/plain")

    async def _handle_ground_truth(self, request: web.Request) -> web.Response:
        # `?expected=false`: the counts alone, for pollers waiting for `done`.
        expected = request.query.get("expected", "true").strip().lower() not in ("0", "false")
        return web.json_response(self.ground_truth(expected))

    async def _handle_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": "expected a JSON object"}, status=400)
        action, instance = body.get("action"), body.get("instance")
        seconds, count = body.get("seconds"), body.get("count", 1)
        problem = None
        if action not in FAULT_ACTIONS:
            problem = f"action must be one of {', '.join(FAULT_ACTIONS)}"
        elif instance is not None and (
            not isinstance(instance, int)
            or isinstance(instance, bool)
            or not 0 <= instance < len(self._instances)
        ):
            problem = f"instance must be an index below {len(self._instances)}"
        elif seconds is not None and (
            not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0
        ):
            problem = "seconds must be a positive number"
        elif not isinstance(count, int) or isinstance(count, bool) or count < 1:
            problem = "count must be a positive integer"
        if problem is not None:
            return web.json_response({"error": problem}, status=400)
        reached = self.inject(
            str(action), instance, seconds=float(seconds) if seconds else None, count=count
        )
        instances = list(range(len(self._instances))) if instance is None else [instance]
        return web.json_response({"action": action, "instances": instances, "connections": reached})

    def _instance_common(self) -> dict[str, Any]:
        return {
            "title": "fedilake simulator",
            "version": MASTODON_VERSION,
            "source_url": "https://github.com/mastodon/mastodon",
            "languages": ["en", "de", "ja", "fr", "es"],
            "rules": [{"id": "1", "text": "Simulated statuses only.", "hint": ""}],
        }

    def _configuration(self) -> dict[str, Any]:
        return {
            "accounts": {"max_featured_tags": 10, "max_pinned_statuses": 5},
            "statuses": {
                "max_characters": 500,
                "max_media_attachments": 4,
                "characters_reserved_per_url": 23,
            },
            "media_attachments": {
                "supported_mime_types": ["image/jpeg", "image/png", "image/gif", "video/mp4"],
                "image_size_limit": 16777216,
                "image_matrix_limit": 33177600,
                "video_size_limit": 103809024,
                "video_frame_rate_limit": 120,
                "video_matrix_limit": 8294400,
            },
            "polls": {
                "max_options": 4,
                "max_characters_per_option": 50,
                "min_expiration": 300,
                "max_expiration": 2629746,
            },
        }

    async def _handle_instance_v1(self, request: web.Request) -> web.Response:
        inst = request.app[INSTANCE_KEY]
        domain = inst.domain
        doc: dict[str, Any] = {
            "uri": domain,
            **self._instance_common(),
            "short_description": "A local Mastodon-compatible simulator for fedilake.",
            "description": "Generated public statuses for testing the fedilake pipeline.",
            "email": f"admin@{domain}",
            "urls": {"streaming_api": f"ws://{request.host}"},
            "stats": {
                "user_count": 2000,
                "status_count": inst.statuses,
                "domain_count": len(REMOTE_DOMAINS) + len(self._instances),
            },
            "thumbnail": None,
            "registrations": False,
            "approval_required": False,
            "invites_enabled": False,
            "configuration": self._configuration(),
            "contact_account": None,
        }
        return web.json_response(doc)

    async def _handle_instance_v2(self, request: web.Request) -> web.Response:
        domain = request.app[INSTANCE_KEY].domain
        configuration = self._configuration()
        configuration["urls"] = {
            "streaming": f"ws://{request.host}",
            "status": None,
            "about": f"http://{request.host}/about",
            "privacy_policy": None,
            "terms_of_service": None,
        }
        configuration["translation"] = {"enabled": False}
        configuration["vapid"] = {"public_key": ""}
        doc: dict[str, Any] = {
            "domain": domain,
            **self._instance_common(),
            "description": "Generated public statuses for testing the fedilake pipeline.",
            "usage": {"users": {"active_month": 2000}},
            "thumbnail": {"url": f"http://{request.host}/packs/media/images/preview.png"},
            "icon": [],
            "configuration": configuration,
            "registrations": {"enabled": False, "approval_required": False, "message": None},
            "api_versions": {"mastodon": MASTODON_API_VERSION},
            "contact": {"email": f"admin@{domain}", "account": None},
        }
        return web.json_response(doc)


async def start_simulator(
    settings: SimulatorSettings, generator: StatusGenerator | None = None
) -> SimulatorServer:
    """Start serving on `settings.host:settings.port` and up (0: free ports; see `.urls`)."""
    server = SimulatorServer(settings, generator)
    await server.start()
    return server


def run_against(
    settings: SimulatorSettings,
    scenario: Callable[[SimulatorServer, aiohttp.ClientSession], Awaitable[None]],
) -> None:
    """Run `scenario(server, client session)` against a fresh in-process simulator, then stop it.

    For tests and experiments that drive the simulator from the same process.
    """

    async def main() -> None:
        server = await start_simulator(settings)
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(server, session)
        finally:
            await server.stop()

    asyncio.run(main())


async def _serve_until_signalled(settings: SimulatorSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await start_simulator(settings)
    try:
        await stop.wait()
        log.info("simulator shutting down")
    finally:
        await server.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def run(settings: SimulatorSettings) -> None:
    """`fedilake simulate`: serve until SIGTERM or SIGINT, then stop cleanly."""
    asyncio.run(_serve_until_signalled(settings))
