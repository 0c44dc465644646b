"""The status generator and the ground truth it feeds."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from fedilake.contracts import parse_time
from fedilake.settings import SimulatorSettings
from streamer.generator import (
    DEFAULT_DOMAIN,
    HASHTAG_VOCABULARY,
    GroundTruth,
    StatusGenerator,
    account_opts_out,
)

pytestmark = pytest.mark.timeout(30)

START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _generator(seed: int = 7) -> StatusGenerator:
    return StatusGenerator(seed, start=START, spread_num=3600.0, spread_den=1000.0)


def test_generator_same_seed_same_statuses() -> None:
    first = json.dumps(_generator(7).take(300))
    again = json.dumps(_generator(7).take(300))
    other = json.dumps(_generator(8).take(300))
    assert first == again
    assert first != other


def test_generator_status_has_the_mastodon_shape() -> None:
    statuses = _generator().take(500)
    ids = [int(s["id"]) for s in statuses]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for status in statuses:
        assert isinstance(status["id"], str) and status["id"].isdigit()
        assert CREATED_AT.match(status["created_at"])
        account = status["account"]
        domain = account["url"].split("/")[2]
        assert status["uri"] == (
            f"https://{domain}/users/{account['username']}/statuses/{status['id']}"
        )
        assert status["visibility"] == "public"
        assert status["replies_count"] == status["reblogs_count"] == 0
        assert status["favourites_count"] == 0
        assert status["reblog"] is None and status["poll"] is None
        for key in ("followers_count", "discoverable", "indexable", "bot", "created_at", "note"):
            assert key in account
        for tag in status["tags"]:
            assert tag["url"] == f"https://{DEFAULT_DOMAIN}/tags/{tag['name']}" or "%" in tag["url"]
            assert 'class="mention hashtag" rel="tag">#<span>' in status["content"]
    assert "\n" not in json.dumps(statuses[0], ensure_ascii=False)
    assert len({s["language"] for s in statuses}) >= 4
    assert any(s["media_attachments"] for s in statuses)
    assert any(s["card"] for s in statuses)
    assert any(s["mentions"] for s in statuses)


def test_generator_tags_are_distinct_lowercase_and_at_most_four() -> None:
    sizes: Counter[int] = Counter()
    for status in _generator().take(3000):
        names = [tag["name"] for tag in status["tags"]]
        assert len(names) == len(set(names))
        assert all(name == name.lower() for name in names)
        assert 0 <= len(names) <= 4
        sizes[len(names)] += 1
    assert set(sizes) == {0, 1, 2, 3, 4}


def test_generator_hashtags_and_accounts_are_zipf_skewed() -> None:
    tags: Counter[str] = Counter()
    authors: Counter[str] = Counter()
    for status in _generator().take(5000):
        tags.update(tag["name"] for tag in status["tags"])
        authors[status["account"]["id"]] += 1
    by_rank = [tags[name] for name in HASHTAG_VOCABULARY]
    assert by_rank[0] > by_rank[1] > by_rank[4] > by_rank[20]
    # Zipf with exponent ~1: rank 1 is drawn about ten times as often as rank 10.
    assert 5 < by_rank[0] / by_rank[9] < 20
    counts = sorted(authors.values(), reverse=True)
    assert counts[0] > 20 * counts[len(counts) // 2]


def test_generator_spreads_event_time_from_start() -> None:
    settings = SimulatorSettings(start="2026-11-23T10:00:00Z", spread_s=3 * 3600, events=300)
    statuses = StatusGenerator.from_settings(settings).take(300)
    times = [parse_time(s["created_at"]) for s in statuses]
    assert times[0] == START
    assert times[1] - times[0] == timedelta(seconds=36)
    assert times[150] == START + timedelta(hours=1, minutes=30)
    assert times[-1] < START + timedelta(hours=3)
    hours = Counter(t.hour for t in times)
    assert hours == {10: 100, 11: 100, 12: 100}


def test_generator_uses_the_clock_without_start() -> None:
    now = datetime(2026, 11, 23, 11, 2, 3, 456000, tzinfo=UTC)
    generator = StatusGenerator.from_settings(SimulatorSettings(), clock=lambda: now)
    status = generator.next_status()
    assert status["created_at"] == "2026-11-23T11:02:03.456Z"


def test_generator_rejects_naive_start() -> None:
    with pytest.raises(ValueError):
        StatusGenerator(1, start=datetime(2026, 1, 1))  # noqa: DTZ001


@pytest.mark.parametrize(
    ("account", "opted_out"),
    [
        ({"discoverable": True, "indexable": True, "noindex": False, "note": "<p>hi</p>"}, False),
        ({"noindex": True}, True),
        ({"indexable": False}, True),
        ({"discoverable": False}, True),
        ({"note": '<p>no <a href="x" class="mention hashtag">#<span>NoBot</span></a></p>'}, True),
        ({"note": "<p>#noindex please</p>"}, True),
    ],
)
def test_account_opts_out(account: dict[str, object], opted_out: bool) -> None:
    assert account_opts_out(account) is opted_out


def _status(created_at: str, *tags: str, opted_out: bool = False) -> dict[str, object]:
    return {
        "created_at": created_at,
        "tags": [{"name": name, "url": f"https://x/tags/{name}"} for name in tags],
        "account": {"indexable": not opted_out},
    }


def test_ground_truth_counts_each_distinct_tag_once_per_status_per_hour() -> None:
    truth = GroundTruth()
    truth.record(_status("2026-11-23T11:02:03.000Z", "rust", "Rust", "python"))
    truth.record(_status("2026-11-23T11:59:59.999Z", "rust"))
    truth.record(_status("2026-11-23T12:00:00.000Z", "rust", opted_out=True))
    truth.record(_status("2026-11-23T12:30:00.000+01:00"))
    doc = truth.to_dict()
    assert doc["statuses"] == 4
    assert doc["opted_out_statuses"] == 1
    assert doc["hashtags_by_hour"] == {
        "2026112311": {"rust": 2, "python": 1},
        "2026112312": {"rust": 1},
    }
    assert doc["indexable_hashtags_by_hour"] == {"2026112311": {"rust": 2, "python": 1}}
    assert truth.hashtag_count("RUST") == 3
    assert truth.hashtag_count("rust", "2026112312") == 1


def test_ground_truth_json_round_trip() -> None:
    truth = GroundTruth()
    for status in _generator().take(500):
        truth.record(status)
    again = GroundTruth.from_json(truth.to_json())
    assert again == truth
    assert again.to_dict() == truth.to_dict()
    assert json.loads(truth.to_json())["statuses"] == 500


def test_ground_truth_matches_a_recount_of_the_statuses() -> None:
    statuses = _generator().take(2000)
    truth = GroundTruth()
    expected: dict[str, Counter[str]] = {}
    for status in statuses:
        truth.record(status)
        hour = parse_time(status["created_at"]).strftime("%Y%m%d%H")
        expected.setdefault(hour, Counter()).update({t["name"] for t in status["tags"]})
    assert truth.hashtags_by_hour == {h: c for h, c in expected.items() if c}
    assert sorted(truth.hashtags_by_hour) == ["2026112310", "2026112311"]
