"""The status generator and the ground truth it feeds."""

from __future__ import annotations

import itertools
import json
import random
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
    engagement_counts,
    status_domain,
)
from streamer.optouts import account_opts_out

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


def test_generator_spreads_local_authors_over_several_instances_without_changing_statuses() -> None:
    domains = (DEFAULT_DOMAIN, "sim1.fedilake.example", "sim2.fedilake.example")
    one = _generator().take(600)
    many = StatusGenerator(
        7, start=START, spread_num=3600.0, spread_den=1000.0, local_domains=domains
    ).take(600)
    for a, b in zip(one, many, strict=True):
        assert (a["id"], a["created_at"], a["language"]) == (
            b["id"],
            b["created_at"],
            b["language"],
        )
        assert [t["name"] for t in a["tags"]] == [t["name"] for t in b["tags"]]
        assert a["account"]["username"] == b["account"]["username"]
    homes = Counter(status_domain(s) for s in many)
    assert all(homes[d] > 20 for d in domains)
    for status in many:
        home = status_domain(status)
        assert ("@" not in status["account"]["acct"]) is (home == DEFAULT_DOMAIN)
        assert ("application" in status) is (home == DEFAULT_DOMAIN)
    with pytest.raises(ValueError):
        StatusGenerator(1, local_domains=("other.example",))


def test_generator_boost_wraps_the_original() -> None:
    generator = _generator()
    original = generator.take(5)[-1]
    boost = generator.reblog_of(original, random.Random(3))
    assert boost["reblog"] == original and boost["reblog"] is not original
    assert boost["uri"].endswith(f"/statuses/{boost['id']}/activity")
    assert int(boost["id"]) > int(original["id"])
    assert boost["content"] == "" and boost["tags"] == [] and boost["media_attachments"] == []
    assert parse_time(boost["created_at"]) > parse_time(original["created_at"])
    assert list(boost) == list(original)  # the same fields, in Mastodon's order
    following = generator.next_status()
    assert int(following["id"]) > int(boost["id"])


def test_generator_edit_changes_tags_and_text_later() -> None:
    generator = _generator()
    rng = random.Random(5)
    for status in generator.take(200):
        edit = generator.edit_of(status, rng, at=START)
        assert (edit["id"], edit["uri"], edit["created_at"]) == (
            status["id"],
            status["uri"],
            status["created_at"],
        )
        assert edit["tags"] != status["tags"] and edit["content"] != status["content"]
        assert parse_time(edit["edited_at"]) > parse_time(status["created_at"])
        names = [t["name"] for t in edit["tags"]]
        assert len(names) == len(set(names)) <= 4
        for name in names:
            assert f"#<span>{name}</span>" in edit["content"].lower()
        again = generator.edit_of(edit, rng, at=START)
        assert again["edited_at"] > edit["edited_at"]


def test_engagement_counts_are_deterministic_and_grow_with_age() -> None:
    uris = [s["uri"] for s in _generator().take(200)]
    for uri in uris:
        counts = [engagement_counts(42, uri, age) for age in (0, 1, 10, 600, 86400)]
        assert counts[0] == {"replies_count": 0, "reblogs_count": 0, "favourites_count": 0}
        for earlier, later in itertools.pairwise(counts):
            assert all(later[k] >= earlier[k] for k in earlier)
        assert counts[-1]["favourites_count"] > counts[2]["favourites_count"]
        assert engagement_counts(42, uri, 600) == counts[3]
    assert len({engagement_counts(42, uri, 3600)["favourites_count"] for uri in uris}) > 20
    assert engagement_counts(42, uris[0], 3600) != engagement_counts(43, uris[0], 3600)


def test_ground_truth_forgets_deleted_and_revises_edited_statuses() -> None:
    truth = GroundTruth()
    kept = _status("2026-11-23T11:02:03.000Z", "rust", "python")
    edited = _status("2026-11-23T11:30:00.000Z", "rust")
    deleted = _status("2026-11-23T12:00:00.000Z", "go", opted_out=True)
    for status in (kept, edited, deleted):
        truth.record(status)
    truth.revise(edited, _status("2026-11-23T11:30:00.000Z", "zig", "Python"))
    truth.forget(deleted)
    fresh = GroundTruth()
    for status in (kept, _status("2026-11-23T11:30:00.000Z", "zig", "python")):
        fresh.record(status)
    assert (
        truth.hashtags_by_hour
        == fresh.hashtags_by_hour
        == {"2026112311": Counter({"python": 2, "rust": 1, "zig": 1})}
    )
    assert truth.indexable_hashtags_by_hour == fresh.indexable_hashtags_by_hour
    assert truth.statuses == 3 and truth.opted_out_statuses == 1
