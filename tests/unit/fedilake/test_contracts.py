"""The shared contracts: envelope bytes, time buckets, HBase row keys, lake paths, dead letters."""

from __future__ import annotations

import base64
import json
import random
import tracemalloc
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from kafka.partitioner.default import DefaultPartitioner
from kafka.partitioner.default import murmur2 as kafka_murmur2

from fedilake.contracts import (
    Envelope,
    EnvelopeError,
    EventKind,
    Granularity,
    LiveLease,
    Metric,
    MetricRow,
    PartFile,
    bucket_of,
    compact_json,
    dead_letter_record,
    decode_count,
    encode_count,
    murmur2,
    parse_hour,
    part_file_name,
    raw_day_glob,
    raw_hour_dir,
)
from streamer.delivery import KeyPartitioner

RECEIVED = datetime(2026, 11, 23, 11, 5, 7, 123000, tzinfo=UTC)
CREATED = datetime(2026, 11, 23, 10, 59, 59, 999000, tzinfo=UTC)
URI = "https://mastodon.social/users/alice/statuses/109"
# Non-ASCII, an emoji, a line separator, escaped quotes and a backslash: all must survive as is.
PAYLOAD = (
    '{"id":"109","uri":"' + URI + '","content":"h\u00e9 \U0001f418 \u2028 '
    '\\"q\\" \\\\","created_at":"2026-11-23T10:59:59.999Z"}'
)


def _envelope(**changes: object) -> Envelope:
    fields: dict[str, object] = {
        "kind": EventKind.STATUS,
        "instance": "https://mastodon.social",
        "stream": "public",
        "event": "update",
        "received_at": RECEIVED,
        "created_at": CREATED,
        "uri": URI,
        "status_id": "109",
        "payload": PAYLOAD,
    }
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def _raw(**changes: object) -> bytes:
    doc = json.loads(_envelope().to_bytes())
    doc.update(changes)
    return json.dumps(doc).encode()


# --------------------------------------------------------------------------- envelope


def test_envelope_round_trips_through_bytes() -> None:
    envelope = _envelope()
    again = Envelope.from_bytes(envelope.to_bytes())
    assert again == envelope
    assert again.payload == PAYLOAD
    assert again.version == 1


def test_envelope_payload_is_kept_byte_exact() -> None:
    raw = _envelope().to_bytes()
    # ensure_ascii=False: non-ASCII travels as UTF-8, not as JSON escapes
    assert "h\u00e9 \U0001f418".encode() in raw
    assert Envelope.from_bytes(raw).payload.encode() == PAYLOAD.encode()
    assert Envelope.from_bytes(raw.decode()).payload == PAYLOAD


def test_envelope_payload_json_parses_lazily() -> None:
    assert _envelope().payload_json["id"] == "109"
    assert _envelope(payload="not json").payload == "not json"


def test_envelope_times_are_stored_as_utc_milliseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    envelope = _envelope(
        received_at=datetime(2026, 11, 23, 13, 5, 7, 123456, tzinfo=plus_two), created_at=None
    )
    doc = json.loads(envelope.to_bytes())
    assert doc["received_at"] == "2026-11-23T11:05:07.123Z"
    assert doc["created_at"] is None
    again = Envelope.from_bytes(envelope.to_bytes())
    assert again.received_at == datetime(2026, 11, 23, 11, 5, 7, 123000, tzinfo=UTC)
    assert again.received_at.tzinfo == UTC
    assert again.created_at is None


@pytest.mark.parametrize("field", ["received_at", "created_at"])
def test_envelope_refuses_a_naive_datetime(field: str) -> None:
    envelope = _envelope(**{field: datetime(2026, 11, 23, 10, 0)})  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive"):
        envelope.to_bytes()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"\xff\xfe\x00",
        b"null",
        b"[]",
        b'"a string"',
        b"42",
        b"{}",
    ],
)
def test_envelope_from_garbage_raises_envelope_error(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_bytes(raw)


@pytest.mark.parametrize(
    "missing", ["v", "kind", "instance", "stream", "event", "received_at", "payload"]
)
def test_envelope_without_a_required_field_raises_envelope_error(missing: str) -> None:
    doc = json.loads(_envelope().to_bytes())
    del doc[missing]
    with pytest.raises(EnvelopeError):
        Envelope.from_bytes(json.dumps(doc))


@pytest.mark.parametrize(
    "changes",
    [
        {"kind": "no-such-kind"},
        {"received_at": "yesterday"},
        {"created_at": "2026-13-01T00:00:00Z"},
        {"v": "one"},
        {"v": None},
    ],
)
def test_envelope_with_an_invalid_field_raises_envelope_error(changes: dict[str, object]) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_bytes(_raw(**changes))


def test_envelope_optional_fields_may_be_missing() -> None:
    doc = json.loads(_envelope().to_bytes())
    for optional in ("created_at", "uri", "status_id"):
        del doc[optional]
    envelope = Envelope.from_bytes(json.dumps(doc))
    assert envelope.created_at is None and envelope.uri is None and envelope.status_id is None
    assert envelope.event_time() == RECEIVED


@pytest.mark.parametrize(
    "changes",
    [{"received_at": 5}, {"received_at": None}, {"created_at": 5}, {"created_at": ["x"]}],
)
def test_envelope_with_a_non_string_time_raises_envelope_error(
    changes: dict[str, object],
) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_bytes(_raw(**changes))


def test_envelope_event_time_prefers_created_at() -> None:
    assert _envelope().event_time() == CREATED
    assert _envelope(created_at=None).event_time() == RECEIVED


def test_kafka_key_is_the_uri_when_there_is_one() -> None:
    assert _envelope().kafka_key() == URI.encode()


def test_kafka_key_falls_back_to_instance_and_status_id() -> None:
    delete = _envelope(kind=EventKind.DELETE, event="delete", uri=None, payload="109")
    assert delete.kafka_key() == b"https://mastodon.social/109"
    nothing = _envelope(kind=EventKind.NOTIFICATION, uri=None, status_id=None)
    assert nothing.kafka_key() == b"https://mastodon.social/"


# --------------------------------------------------------------------------- time buckets


def test_bucket_of_hour_and_day() -> None:
    assert bucket_of(CREATED, Granularity.HOUR) == "2026112310"
    assert bucket_of(CREATED, Granularity.DAY) == "20261123"
    assert bucket_of(CREATED, Granularity.ALL) == "all"


def test_bucket_of_converts_to_utc_first() -> None:
    late_in_brazil = datetime(2026, 11, 23, 23, 30, tzinfo=timezone(timedelta(hours=-3)))
    assert bucket_of(late_in_brazil, Granularity.HOUR) == "2026112402"
    assert bucket_of(late_in_brazil, Granularity.DAY) == "20261124"


def test_bucket_labels_are_fixed_width_and_sort_like_time() -> None:
    hours = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=7 * i) for i in range(400)]
    labels = [bucket_of(h, Granularity.HOUR) for h in hours]
    assert {len(label) for label in labels} == {10}
    assert labels == sorted(labels)


def test_parse_hour_accepts_the_cli_spelling() -> None:
    assert parse_hour("2026-11-23T14") == datetime(2026, 11, 23, 14, tzinfo=UTC)


@pytest.mark.parametrize(
    "text", ["", "nonsense", "2026-11-23", "2026-11-23T24", "2026-11-23 14", "2026-11-23T14:00"]
)
def test_parse_hour_rejects_other_spellings(text: str) -> None:
    with pytest.raises(ValueError, match="2026-11-23T14"):
        parse_hour(text)


# --------------------------------------------------------------------------- HBase keys


@pytest.mark.parametrize("dimension", ["rust", "caf\u00e9", "\u65e5\u672c", "", "a\x00b"])
def test_metric_row_key_round_trips(dimension: str) -> None:
    row = MetricRow(Metric.HASHTAG, Granularity.HOUR, "2026112311", dimension)
    assert MetricRow.from_key(row.key()) == row


def test_metric_row_day_and_all_keys_round_trip() -> None:
    for row in (
        MetricRow(Metric.HASHTAG, Granularity.DAY, "20261123", "rust"),
        MetricRow(Metric.HASHTAG, Granularity.ALL, "all", "rust"),
    ):
        assert MetricRow.from_key(row.key()) == row


def test_every_row_of_a_bucket_starts_with_its_prefix() -> None:
    prefix = MetricRow.prefix(Metric.HASHTAG, Granularity.HOUR, "2026112311")
    assert prefix == b"hashtag\x00h2026112311\x00"
    for tag in ("a", "rust", "zzzz", "caf\u00e9", "\U0001f418"):
        assert (
            MetricRow(Metric.HASHTAG, Granularity.HOUR, "2026112311", tag).key().startswith(prefix)
        )


def test_prefixes_of_neighbouring_buckets_do_not_overlap() -> None:
    eleven = MetricRow.prefix(Metric.HASHTAG, Granularity.HOUR, "2026112311")
    twelve = MetricRow.prefix(Metric.HASHTAG, Granularity.HOUR, "2026112312")
    day = MetricRow.prefix(Metric.HASHTAG, Granularity.DAY, "20261123")
    for one, other in ((eleven, twelve), (eleven, day), (twelve, day)):
        assert not one.startswith(other) and not other.startswith(one)
    row = MetricRow(Metric.HASHTAG, Granularity.HOUR, "2026112312", "rust").key()
    assert not row.startswith(eleven)


@pytest.mark.parametrize("value", [0, 1, 255, 256, -1, 2**40, 2**63 - 1, -(2**63)])
def test_count_encoding_round_trips(value: int) -> None:
    raw = encode_count(value)
    assert len(raw) == 8
    assert decode_count(raw) == value


def test_count_encoding_is_big_endian_like_hbase() -> None:
    assert encode_count(1) == b"\x00" * 7 + b"\x01"
    assert encode_count(-1) == b"\xff" * 8


# --------------------------------------------------------------------------- lake paths


def test_part_file_name_round_trips() -> None:
    name = part_file_name("fedilake.events", 3, 17, 4242)
    assert name == f"fedilake.events+3+{17:020d}+{4242:020d}.json.gz"
    assert PartFile.parse(name) == PartFile("fedilake.events", 3, 17, 4242)


def test_part_file_names_sort_by_offset() -> None:
    names = [part_file_name("t", 0, first, first + 9) for first in (0, 10, 100, 1000, 10**12)]
    assert sorted(names) == names


@pytest.mark.parametrize(
    "name",
    [
        ".x.tmp",
        "." + part_file_name("fedilake.events", 0, 1, 2) + ".tmp",
        part_file_name("fedilake.events", 0, 1, 2) + ".tmp",
        "fedilake.events+0+1.json.gz",
        "fedilake.events+0+1+2.json",
        "_SUCCESS",
        "part-00000",
        "",
    ],
)
def test_part_file_parse_rejects_other_names(name: str) -> None:
    assert PartFile.parse(name) is None


def test_raw_hour_dir_is_an_event_time_partition_in_utc() -> None:
    assert (
        raw_hour_dir("fedilake.events", CREATED)
        == "/fedilake/raw/fedilake.events/dt=2026-11-23/hr=10"
    )
    india = datetime(2026, 11, 24, 3, 45, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert raw_hour_dir("t", india, root="/lake") == "/lake/raw/t/dt=2026-11-23/hr=22"


def test_raw_day_glob_covers_the_part_files_of_every_hour() -> None:
    glob = raw_day_glob("fedilake.events", date(2026, 11, 23))
    assert glob == "/fedilake/raw/fedilake.events/dt=2026-11-23/hr=*/*.json.gz"
    assert raw_day_glob("t", date(2026, 1, 2), root="/x") == "/x/raw/t/dt=2026-01-02/hr=*/*.json.gz"


# --------------------------------------------------------------------------- dead letters


def test_dead_letter_record_holds_reason_source_and_original() -> None:
    original = '{"not": "an envelope", "caf\u00e9": "\U0001f418"}'.encode()
    record = json.loads(dead_letter_record("bad envelope", original, "fedilake.events[0]@7"))
    assert record["reason"] == "bad envelope"
    assert record["source"] == "fedilake.events[0]@7"
    assert record["original"].encode() == original
    rejected = datetime.fromisoformat(record["rejected_at"].replace("Z", "+00:00"))
    assert rejected.tzinfo is not None


def test_dead_letter_record_keeps_invalid_utf8_visible() -> None:
    original = b'{"ok": "caf\xc3\xa9", "bad": "\xff\xfe"}'
    raw = dead_letter_record("not UTF-8", original, "stream")
    record = json.loads(raw)  # the record itself is valid UTF-8 JSON
    assert record["reason"] == "not UTF-8"
    assert record["original"].startswith('{"ok": "caf\u00e9", "bad": "')
    assert "\ufffd" in record["original"]  # readable text, undecodable bytes replaced
    assert base64.b64decode(record["original_base64"]) == original  # and the exact bytes


def test_dead_letter_records_of_different_originals_differ() -> None:
    invalid = b"\xff"
    literal = b"\\udcff"  # valid ASCII: a backslash escape as a JSON producer might send it
    assert invalid != literal
    first = json.loads(dead_letter_record("r", invalid, "s"))["original"]
    second = json.loads(dead_letter_record("r", literal, "s"))["original"]
    assert first != second


def test_dead_letter_record_of_a_huge_payload_keeps_its_first_4_mib() -> None:
    original = b"x" * (5 * 1024 * 1024)
    record = json.loads(dead_letter_record("too big", original, "stream"))
    assert record["truncated"] is True and record["original_size"] == len(original)
    assert base64.b64decode(record["original_base64"]) == original[: 4 * 1024 * 1024]
    assert len(record["original"]) == 64 * 1024


def test_murmur2_and_key_placement_agree_with_kafka_python() -> None:
    class Cluster:
        def topics(self) -> set[str]:
            return {"t"}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(7))

        def available_partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(7))

    rng = random.Random(7)
    ours, theirs = KeyPartitioner(), DefaultPartitioner()
    for length in range(0, 130):
        key = rng.randbytes(length)
        assert murmur2(key) == kafka_murmur2(key)
        assert ours.partition("t", key, key, None, None, Cluster()) == theirs.partition(
            "t", key, key, None, None, Cluster()
        )
    # Kafka's UtilsTest: murmur2("21") == -973932308, the same 32 bits.
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF


def test_compact_json_holds_no_more_memory_than_its_bytes() -> None:
    value = {"payload": "x" * 2500, "n": [1, 2, 3], "name": "é"}
    assert json.loads(compact_json(value)) == value
    tracemalloc.start()
    try:
        kept = [compact_json(value) for _ in range(100)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 100 * (len(kept[0]) + 200)  # orjson's own buffers hold ~32 KB each


def test_a_live_lease_claims_rising_timestamps_whatever_the_clock_does() -> None:
    lease = LiveLease(40, 3, 1_000)
    assert lease.claimed(5_000) == LiveLease(40, 3, 5_000)  # the clock, when ahead
    assert lease.claimed(1_000).claimed_ms == 1_001  # a delete masks a put of its timestamp
    assert lease.claimed(400).claimed_ms == 1_001  # a clock set back


def test_the_next_owner_starts_above_every_claimed_timestamp() -> None:
    lease = LiveLease(40, 3, 9_000)  # an earlier owner claimed ahead of the new owner's clock
    taken = lease.taken_by(40, 5, 8_000)
    assert taken == LiveLease(40, 5, 9_001)
    assert taken.claimed(8_500).claimed_ms > lease.claimed_ms
    assert LiveLease.decode(taken.encode()) == taken
    assert LiveLease.column(7) == b"o:p7"


def test_owners_are_ordered_by_their_fence_under_one_producer_id_only() -> None:
    lease = LiveLease(40, 3, 9_000)
    assert lease.held_by(40, 3) and not lease.held_by(41, 3)
    assert lease.fenced_after(40, 2) is True  # an owner fenced before the lease's
    assert lease.fenced_after(40, 4) is False  # the next owner
    assert lease.fenced_after(7, 0) is None  # another producer id: no telling
    assert LiveLease.decode(b"3:9000") == LiveLease(-1, 3, 9_000)  # a development version's
