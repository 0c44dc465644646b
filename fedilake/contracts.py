"""The contracts every stage shares: topics, the event envelope, HBase tables and row keys, lake paths."""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple

import orjson

# --------------------------------------------------------------------------- Kafka


def compact_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`, in a bytes object of its own size.

    orjson hands back its working buffer: measured with orjson 3.13, every result holds at
    least 4 KB and a 2.5 KB envelope 32 KB. Anything kept (the spool's tail, a batch of
    records waiting for its flush) would hold ten times its size; one copy costs ~0.1 us.
    """
    return memoryview(orjson.dumps(value)).tobytes()


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int = 7 * 24 * 3600 * 1000


class Topics:
    """Every Kafka topic fedilake owns."""

    EVENTS = TopicSpec("fedilake.events", partitions=4)
    DEAD_LETTER = TopicSpec("fedilake.deadletter", partitions=1, retention_ms=30 * 24 * 3600 * 1000)

    @classmethod
    def all(cls) -> tuple[TopicSpec, ...]:
        return (cls.EVENTS, cls.DEAD_LETTER)

    @classmethod
    def named(cls, name: str) -> TopicSpec:
        for spec in cls.all():
            if spec.name == name:
                return spec
        raise KeyError(f"not a fedilake topic: {name}")


# Messages larger than Kafka's 1 MB default are accepted (a status with a huge payload
# still reaches the dead-letter topic whole); producers and topics agree on this limit.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


_MURMUR_M = 0x5BD1E995
_U32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (`Utils.murmur2`, seed 0x9747b28c) as an unsigned 32-bit value.

    The same values as kafka-python's, at half the cost: it reads the key's words in one
    `struct` call. The streamer's sender hashes every event's key with it."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _MURMUR_M) & _U32
        k ^= k >> 24
        h = ((h * _MURMUR_M) & _U32) ^ ((k * _MURMUR_M) & _U32)
    tail = length & 3
    if tail:
        base = words << 2
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _MURMUR_M) & _U32
    h ^= h >> 13
    h = (h * _MURMUR_M) & _U32
    return h ^ (h >> 15)


def key_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record, so every client agrees."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partition_for(key: bytes | None, spec: TopicSpec) -> int:
    """The partition a key of one of our topics belongs to (unkeyed records: partition 0)."""
    if key is None:
        return 0
    return key_partition(key, spec.partitions)


# --------------------------------------------------------------------------- envelope

ENVELOPE_VERSION = 1


class EventKind(StrEnum):
    """What an envelope carries, named after the Mastodon streaming event it came from."""

    STATUS = "status"  # `update`
    EDIT = "edit"  # `status.update`
    DELETE = "delete"
    NOTIFICATION = "notification"
    CONVERSATION = "conversation"
    ANNOUNCEMENT = "announcement"
    REFRESH = "refresh"  # a status re-fetched later for its engagement counts
    UNKNOWN = "unknown"  # kept, not dropped


STREAMING_EVENT_KINDS: dict[str, EventKind] = {
    "update": EventKind.STATUS,
    "status.update": EventKind.EDIT,
    "delete": EventKind.DELETE,
    "notification": EventKind.NOTIFICATION,
    "conversation": EventKind.CONVERSATION,
    "announcement": EventKind.ANNOUNCEMENT,
    "announcement.reaction": EventKind.ANNOUNCEMENT,
    "announcement.delete": EventKind.ANNOUNCEMENT,
}


class EnvelopeError(ValueError):
    """A message that is not a valid envelope; it belongs in the dead-letter topic."""


@dataclass(frozen=True)
class Envelope:
    """One event as it travels through Kafka, with the server's payload kept byte for byte.

    `payload` is the `data:` text exactly as the server sent it; metrics parse it
    lazily through `payload_json`.
    """

    kind: EventKind
    instance: str
    stream: str
    event: str
    received_at: datetime
    created_at: datetime | None
    uri: str | None
    status_id: str | None
    payload: str
    version: int = ENVELOPE_VERSION
    _parsed: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def payload_json(self) -> Any:
        if self._parsed is None:
            object.__setattr__(self, "_parsed", orjson.loads(self.payload))
        return self._parsed

    def kafka_key(self) -> bytes:
        """Everything about one status shares a key, hence a partition, hence an order."""
        if self.uri:
            return self.uri.encode()
        return f"{self.instance}/{self.status_id or ''}".encode()

    def to_json(self) -> str:
        return self.to_bytes().decode()

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON, non-ASCII unescaped (what `json.dumps(ensure_ascii=False)` gives)."""
        return compact_json(
            {
                "v": self.version,
                "kind": self.kind.value,
                "instance": self.instance,
                "stream": self.stream,
                "event": self.event,
                "received_at": format_time(self.received_at),
                "created_at": format_time(self.created_at) if self.created_at else None,
                "uri": self.uri,
                "status_id": self.status_id,
                "payload": self.payload,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Envelope:
        try:
            doc = orjson.loads(raw)
            if not isinstance(doc.get("payload"), str):
                raise TypeError("payload must be the server's text")
            return cls(
                kind=EventKind(doc["kind"]),
                instance=doc["instance"],
                stream=doc["stream"],
                event=doc["event"],
                received_at=parse_time(doc["received_at"]),
                created_at=parse_time(doc["created_at"]) if doc.get("created_at") else None,
                uri=doc.get("uri"),
                status_id=doc.get("status_id"),
                payload=doc["payload"],
                version=int(doc["v"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EnvelopeError(f"not a fedilake envelope: {exc!r}") from exc

    def event_time(self) -> datetime:
        """The time metrics bucket by: when the status was created, else when we got it."""
        return self.created_at or self.received_at


def format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("naive datetime in an envelope; fedilake times are UTC-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An envelope time as UTC; a time without an offset is taken to be UTC."""
    moment = datetime.fromisoformat(text)  # takes "Z" (Python 3.11)
    if moment.tzinfo is UTC:  # what `format_time` writes: no conversion (half the time)
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


DEAD_LETTER_KEEP_BYTES = 4 * 1024 * 1024


def dead_letter_record(reason: str, original: bytes, source: str) -> bytes:
    """The dead-letter message: why it was rejected, where from, and the original bytes.

    `original_base64` holds the bytes exactly; `original` is their text for people to read
    (undecodable bytes replaced). Beyond 4 MiB only the first 4 MiB are kept, marked
    `truncated`, so one absurd payload cannot block the topic; `original_size` is the size.
    """
    kept = original[:DEAD_LETTER_KEEP_BYTES]
    return json.dumps(
        {
            "reason": reason,
            "source": source,
            "rejected_at": format_time(datetime.now(UTC)),
            "original_size": len(original),
            "truncated": len(kept) < len(original),
            "original": kept[: 64 * 1024].decode("utf-8", errors="replace"),
            "original_base64": base64.b64encode(kept).decode("ascii"),
        },
        ensure_ascii=False,
    ).encode()


# --------------------------------------------------------------------------- time buckets


class Granularity(StrEnum):
    HOUR = "h"
    DAY = "d"
    MONTH = "m"
    ALL = "a"


# The windows every counted metric is kept in (months serve only account creation).
COUNTED_GRANULARITIES = (Granularity.HOUR, Granularity.DAY, Granularity.ALL)


def bucket_of(moment: datetime, granularity: Granularity) -> str:
    """Fixed-width, sortable bucket label: `2026112311` for an hour, `20261123` for a day,
    `202611` for a month, `all` for all time."""
    moment = moment.astimezone(UTC)
    if granularity is Granularity.HOUR:
        return moment.strftime("%Y%m%d%H")
    if granularity is Granularity.DAY:
        return moment.strftime("%Y%m%d")
    if granularity is Granularity.MONTH:
        return moment.strftime("%Y%m")
    return "all"


def bucket_end(granularity: Granularity, bucket: str) -> datetime | None:
    """When a bucket's window ends (None for all time): the start of the next hour, day or month."""
    if granularity is Granularity.HOUR:
        return datetime.strptime(bucket, "%Y%m%d%H").replace(tzinfo=UTC) + timedelta(hours=1)
    if granularity is Granularity.DAY:
        return datetime.strptime(bucket, "%Y%m%d").replace(tzinfo=UTC) + timedelta(days=1)
    if granularity is Granularity.MONTH:
        start = datetime.strptime(bucket, "%Y%m").replace(tzinfo=UTC)
        return (start + timedelta(days=32)).replace(day=1)
    return None


def parse_hour(text: str) -> datetime:
    """`YYYY-MM-DDTHH` (the CLI's spelling of an hour) as an aware UTC datetime."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"hour must look like 2026-11-23T14, got {text!r}") from exc


# --------------------------------------------------------------------------- HBase


@dataclass(frozen=True)
class TableSpec:
    name: str
    families: dict[str, dict[str, Any]]


HOURLY_TTL_S = 35 * 24 * 3600


def _families(**options: Any) -> dict[str, dict[str, Any]]:
    # `l`: the live value, one column per source Kafka partition (each worker writes only
    # its own partitions' columns, as absolute values); `b`: the batch value.
    base = {"max_versions": 1, "compression": "GZ", "bloom_filter_type": "ROW"}
    return {family: {**base, **options} for family in ("l", "b")}


class Tables:
    """HBase tables, created idempotently by `fedilake hbase init`.

    One row per (metric, bucket, dimension), keyed as `MetricRow.key()` says, except the
    metrics about an account: one row per (account, bucket), `AccountRow.key()`. Hourly
    rows live in a table of their own so that a TTL can expire them; day, month and
    all-time rows are kept.
    """

    METRICS = TableSpec("fedilake_metrics", _families())
    HOURLY = TableSpec("fedilake_metrics_hourly", _families(time_to_live=HOURLY_TTL_S))
    # One row, `LiveLease.ROW`: a cell per source partition saying who writes its live
    # column (see `LiveLease`).
    LEASES = TableSpec("fedilake_live_leases", {"o": {"max_versions": 1}})

    @classmethod
    def all(cls) -> tuple[TableSpec, ...]:
        return (cls.METRICS, cls.HOURLY, cls.LEASES)

    @classmethod
    def for_granularity(cls, granularity: Granularity) -> TableSpec:
        return cls.HOURLY if granularity is Granularity.HOUR else cls.METRICS


class Column:
    LIVE_PREFIX = b"l:"
    BATCH = b"b:n"


@dataclass(frozen=True, slots=True)
class LiveLease:
    """Who writes a source partition's live column, and the newest cell timestamp it claimed.

    Kept in `Tables.LEASES` and changed only by check-and-put. The owner is named by its
    fence of the partition's changelog: Kafka's producer id and epoch for the partition's
    transactional id. The epoch rises with every new owner, so under one producer id
    leases are taken in the order Kafka fenced the owners, whatever order they reach
    HBase in. A new producer id (Kafka reset, the id expired, the epochs ran out) cannot
    be ordered: its owner first proves in Kafka that its fence still stands.

    A worker claims a timestamp in the lease before each write of the partition's cells
    and writes them at it; the next owner's lease starts above every timestamp claimed
    before. A write of an earlier owner that lands late (a paused "zombie" worker) is
    therefore older than every write of the new owner: HBase returns the newest
    (VERSIONS 1), and a delete at a timestamp removes only what is older. The earlier
    owner's next claim fails.
    """

    producer_id: int
    epoch: int
    claimed_ms: int

    ROW: ClassVar[bytes] = b"live"

    @staticmethod
    def column(partition: int) -> bytes:
        return f"o:p{partition}".encode()

    def held_by(self, producer_id: int, epoch: int) -> bool:
        return (self.producer_id, self.epoch) == (producer_id, epoch)

    def fenced_after(self, producer_id: int, epoch: int) -> bool | None:
        """Whether this lease's owner was fenced after the one named (None: no telling)."""
        if producer_id != self.producer_id:
            return None
        return self.epoch > epoch

    def taken_by(self, producer_id: int, epoch: int, now_ms: int) -> LiveLease:
        """The lease of the next owner, above every timestamp claimed before."""
        return LiveLease(producer_id, epoch, max(now_ms, self.claimed_ms + 1))

    def claimed(self, now_ms: int) -> LiveLease:
        """The lease after claiming the timestamp of one more write: the clock, but always
        above the last one claimed (a delete masks a put of its own timestamp)."""
        return LiveLease(self.producer_id, self.epoch, max(now_ms, self.claimed_ms + 1))

    def encode(self) -> bytes:
        return f"{self.producer_id}:{self.epoch}:{self.claimed_ms}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> LiveLease:
        *owner, claimed = (int(part) for part in raw.split(b":"))
        if len(owner) == 1:  # written by a development version: no producer id
            return cls(-1, owner[0], claimed)
        producer_id, epoch = owner
        return cls(producer_id, epoch, claimed)


ROW_SEPARATOR = "\x00"
ACCOUNT_ROW = "account"  # the metric part of an `AccountRow` key
_ACCOUNT_KEY = f"{ACCOUNT_ROW}{ROW_SEPARATOR}".encode()


class Metric(StrEnum):
    """Every metric the speed and batch layers keep; `processors.metrics` defines each one."""

    HASHTAG = "hashtag"  # statuses per hashtag
    MENTION = "mention"  # statuses mentioning an account (user@domain)
    URL = "url"  # statuses sharing an external URL (links and link cards)
    DOMAIN = "domain"  # statuses sharing a link to a domain
    LANGUAGE = "language"  # statuses per language (`und` when unknown)
    MEDIA = "media"  # statuses with media: dimension `any`, and one per media type
    POSTS = "posts"  # statuses (replies included, boosts not) per author
    BOOSTS = "boosts"  # boosts made, per booster
    REPLIES = "replies"  # replies written, per author
    FAVOURITES = "favourites"  # favourites received, per author (from refresh events)
    REBLOGS = "reblogs"  # boosts received, per author (from refresh events)
    REPLIES_RECEIVED = "replies_received"  # replies received, per author (from refresh events)
    FOLLOWERS = "followers"  # latest follower count per account (a gauge, all time only)
    ACCOUNTS_CREATED = "accounts_created"  # one row per account, in its creation month

    @property
    def windows(self) -> tuple[Granularity, ...]:
        """The time buckets the metric is counted in.

        Content metrics (what is said) are counted per hour too, for trends; metrics
        about an account per day and all time only: hourly rows for every active
        account would be most of what the speed layer writes, for no analysis.
        """
        return _WINDOWS[self]

    @property
    def is_gauge(self) -> bool:
        """A gauge's value is the latest snapshot, not a sum over statuses."""
        return self is Metric.FOLLOWERS

    @property
    def is_distinct(self) -> bool:
        """One row per distinct member (an account); its value is 1, however many saw it."""
        return self is Metric.ACCOUNTS_CREATED

    @property
    def is_about_account(self) -> bool:
        """Kept in the account's `AccountRow`, not in a row of its own."""
        return self in _ABOUT_ACCOUNT


class MetricRow(NamedTuple):
    """Row key in the OpenTSDB style: metric, time bucket, dimension.

    A named tuple, not a dataclass: the speed layer builds and hashes millions of them.

    Every hashtag of one hour shares the prefix `hashtag\\0h2026112311\\0`, so it is
    one prefix scan.
    """

    metric: Metric
    granularity: Granularity
    bucket: str
    dimension: str

    def key(self) -> bytes:
        return self.prefix(self.metric, self.granularity, self.bucket) + self.dimension.encode()

    @staticmethod
    def prefix(metric: Metric, granularity: Granularity, bucket: str) -> bytes:
        return f"{metric.value}{ROW_SEPARATOR}{granularity.value}{bucket}{ROW_SEPARATOR}".encode()

    @classmethod
    def from_key(cls, key: bytes) -> MetricRow:
        metric, bucket, dimension = key.decode().split(ROW_SEPARATOR, 2)
        return cls(Metric(metric), Granularity(bucket[0]), bucket[1:], dimension)


# The counts kept per account, in the order of their fields in an `AccountCell`.
ACCOUNT_COUNTS = (
    Metric.POSTS,
    Metric.BOOSTS,
    Metric.REPLIES,
    Metric.FAVOURITES,
    Metric.REBLOGS,
    Metric.REPLIES_RECEIVED,
)
_ABOUT_ACCOUNT = frozenset((*ACCOUNT_COUNTS, Metric.FOLLOWERS, Metric.ACCOUNTS_CREATED))
_ACCOUNT_WINDOWS = (Granularity.DAY, Granularity.ALL)
_WINDOWS: dict[Metric, tuple[Granularity, ...]] = {
    **{metric: COUNTED_GRANULARITIES for metric in Metric},
    **{metric: _ACCOUNT_WINDOWS for metric in ACCOUNT_COUNTS},
    Metric.FOLLOWERS: (Granularity.ALL,),
    Metric.ACCOUNTS_CREATED: (Granularity.MONTH,),
}


class AccountRow(NamedTuple):
    """The stored row of one account in one bucket: every metric about the account in one
    cell per partition.

    A refresh of an account's status changes its favourites, boosts and replies received
    in the day and all time, and its follower count: seven rows and cells written the
    obvious way, two here. Every account of a day is one prefix scan (`account\\0d20261123\\0`); the
    all-time row also holds the follower gauge and the creation month.
    """

    granularity: Granularity
    bucket: str
    handle: str

    @property
    def dimension(self) -> str:
        return self.handle

    def key(self) -> bytes:
        return self.prefix(self.granularity, self.bucket) + self.handle.encode()

    @staticmethod
    def prefix(granularity: Granularity, bucket: str) -> bytes:
        return f"{ACCOUNT_ROW}{ROW_SEPARATOR}{granularity.value}{bucket}{ROW_SEPARATOR}".encode()

    @classmethod
    def of(cls, row: MetricRow) -> AccountRow:
        """Where a metric about an account is stored: gauge and creation month all time."""
        if row.metric.is_gauge or row.metric.is_distinct:
            return cls(Granularity.ALL, "all", row.dimension)
        return cls(row.granularity, row.bucket, row.dimension)

    def count_rows(self) -> tuple[MetricRow, ...]:
        """The counters this row holds, in `ACCOUNT_COUNTS` order."""
        return tuple(
            MetricRow(metric, self.granularity, self.bucket, self.handle)
            for metric in ACCOUNT_COUNTS
        )


_ACCOUNT_COUNTS_FORMAT = struct.Struct(f">{len(ACCOUNT_COUNTS)}q")
_SNAPSHOT_FORMAT = struct.Struct(">qq")


class AccountCell(NamedTuple):
    """One partition's values in an `AccountRow`: the counts, and in the all-time row the
    newest follower snapshot (`observed_ms` < 0: none) and the creation month (`YYYYMM`).

    Stored as 8-byte big-endian longs: the counts, then observed ms and followers, then the
    month in ASCII, the last two only when present.
    """

    counts: tuple[int, ...]
    observed_ms: int = -1
    followers: int = 0
    created_month: str = ""

    @property
    def is_empty(self) -> bool:
        return self.observed_ms < 0 and not any(self.counts) and not self.created_month

    def encode(self) -> bytes:
        raw = _ACCOUNT_COUNTS_FORMAT.pack(*self.counts)
        if self.observed_ms >= 0 or self.created_month:
            raw += _SNAPSHOT_FORMAT.pack(self.observed_ms, self.followers)
            raw += self.created_month.encode()
        return raw

    @classmethod
    def decode(cls, raw: bytes) -> AccountCell:
        size = _ACCOUNT_COUNTS_FORMAT.size
        counts = tuple(int(n) for n in _ACCOUNT_COUNTS_FORMAT.unpack_from(raw))
        if len(raw) == size:
            return cls(counts)
        observed_ms, followers = _SNAPSHOT_FORMAT.unpack_from(raw, size)
        month = raw[size + _SNAPSHOT_FORMAT.size :].decode()
        return cls(counts, int(observed_ms), int(followers), month)


@dataclass(frozen=True)
class RowKeys:
    """Row keys as stored: `MetricRow.key()`, behind a one-byte salt when `salt_buckets` > 0.

    Salting spreads the writes of one hot bucket (every hashtag of the current hour) over
    `salt_buckets` key ranges, hence regions, the OpenTSDB way; a bucket is then read
    with one prefix scan per salt instead of one.
    """

    salt_buckets: int = 0

    def encode(self, row: MetricRow | AccountRow) -> bytes:
        key = row.key()
        if not self.salt_buckets:
            return key
        return bytes((zlib.crc32(row.dimension.encode()) % self.salt_buckets,)) + key

    def decode(self, key: bytes) -> MetricRow | AccountRow:
        key = key[1:] if self.salt_buckets else key
        if key.startswith(_ACCOUNT_KEY):
            _, bucket, handle = key.decode().split(ROW_SEPARATOR, 2)
            return AccountRow(Granularity(bucket[0]), bucket[1:], handle)
        return MetricRow.from_key(key)

    def prefixes(self, metric: Metric, granularity: Granularity, bucket: str) -> list[bytes]:
        """Where the rows of one metric and bucket start (metrics about an account: the
        account rows of the bucket they are stored in)."""
        if metric.is_about_account:
            stored = AccountRow.of(MetricRow(metric, granularity, bucket, ""))
            prefix = AccountRow.prefix(stored.granularity, stored.bucket)
        else:
            prefix = MetricRow.prefix(metric, granularity, bucket)
        if not self.salt_buckets:
            return [prefix]
        return [bytes((salt,)) + prefix for salt in range(self.salt_buckets)]


def encode_count(value: int) -> bytes:
    """Counts are stored as 8-byte big-endian longs, the format of HBase's own counters."""
    return struct.pack(">q", value)


def decode_count(raw: bytes) -> int:
    return int(struct.unpack(">q", raw)[0])


# --------------------------------------------------------------------------- HDFS lake

LAKE_ROOT = "/fedilake"
_PART_FILE = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]+)\+(?P<partition>\d+)\+(?P<first>\d+)\+(?P<last>\d+)\.json\.gz$"
)


def raw_hour_dir(topic: str, hour: datetime, root: str = LAKE_ROOT) -> str:
    """`/fedilake/raw/<topic>/dt=YYYY-MM-DD/hr=HH`: event-time partitions of the lake."""
    hour = hour.astimezone(UTC)
    return f"{root}/raw/{topic}/dt={hour:%Y-%m-%d}/hr={hour:%H}"


def tombstone_dir(topic: str, root: str = LAKE_ROOT) -> str:
    """Where the deletes of a topic are kept apart, for compaction to honour them."""
    return f"{root}/_tombstones/{topic}"


SUCCESS_MARKER = "_SUCCESS"
COMPACTION_MANIFEST = "_compaction.json"
STATUS_INDEX = "_statuses"  # a compacted hour's statuses, hashed: which deletes concern it


def raw_day_dir(topic: str, day: date, root: str = LAKE_ROOT) -> str:
    return f"{root}/raw/{topic}/dt={day:%Y-%m-%d}"


def raw_day_glob(topic: str, day: date, root: str = LAKE_ROOT) -> str:
    return f"{raw_day_dir(topic, day, root)}/hr=*/*.json.gz"


def part_file_name(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    """A file named by what it holds, so a rewrite gets the same name and a restart knows
    where it stopped (the kafka-connect-hdfs convention)."""
    return f"{topic}+{partition}+{first_offset:020d}+{last_offset:020d}.json.gz"


@dataclass(frozen=True)
class PartFile:
    topic: str
    partition: int
    first_offset: int
    last_offset: int

    @classmethod
    def parse(cls, name: str) -> PartFile | None:
        match = _PART_FILE.match(name)
        if match is None:
            return None
        return cls(match["topic"], int(match["partition"]), int(match["first"]), int(match["last"]))


def batch_output_dir(metric: Metric, day: date, root: str = LAKE_ROOT) -> str:
    return f"{root}/batch/{metric.value}/dt={day:%Y-%m-%d}"
