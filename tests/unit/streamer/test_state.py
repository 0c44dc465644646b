"""The streamer's dedup memory: a Bloom filter per generation in front of SQLite."""

from __future__ import annotations

import random
from pathlib import Path

from streamer.state import SeenFilter, StreamerState


def test_the_filter_never_forgets_an_identity_of_the_window() -> None:
    seen = SeenFilter(window_s=100.0, capacity=1000, now=0.0)
    rng = random.Random(5)
    added = [(rng.getrandbits(63), t / 10) for t in range(5000)]  # 500 s: several windows
    for identity, at in added:
        seen.add(identity, at)
    assert seen.generations > 2
    seen.expire(cutoff=400.0)
    assert all(identity in seen for identity, at in added if at >= 400.0)
    others = [rng.getrandbits(63) for _ in range(20_000)]
    assert sum(identity in seen for identity in others) < 0.05 * len(others)


def test_generations_go_once_their_last_identity_left_the_window() -> None:
    seen = SeenFilter(window_s=10.0, now=0.0)
    seen.add(1, 0.0)
    seen.add(2, 5.0)
    seen.add(3, 12.0)  # a window after the first generation started: a new one
    assert seen.generations == 2
    assert seen.expire(cutoff=4.0) == 0  # the first still holds an identity added at 5
    assert 1 in seen and 2 in seen
    assert seen.expire(cutoff=6.0) == 1
    assert 3 in seen and seen.generations == 1
    assert seen.expire(cutoff=100.0) == 0  # the newest stays, it takes the additions


def test_a_full_generation_hands_over_to_a_larger_one() -> None:
    seen = SeenFilter(window_s=1e9, capacity=SeenFilter.MIN_CAPACITY, now=0.0)
    for identity in range(SeenFilter.MIN_CAPACITY + 1):
        seen.add(identity, 0.0)
    assert seen.generations == 2
    assert all(identity in seen for identity in range(0, SeenFilter.MIN_CAPACITY + 1, 97))


def test_seen_answers_from_sqlite_after_commit_and_after_reopening(tmp_path: Path) -> None:
    state = StreamerState(tmp_path / "state.sqlite3", window_s=3600)
    state.mark_seen("status\0https://a.example/s/1")
    assert state.seen("status\0https://a.example/s/1")  # staged
    state.commit(1)
    assert state.seen("status\0https://a.example/s/1")  # SQLite, behind the filter
    assert not state.seen("status\0https://a.example/s/2")
    state.close()
    again = StreamerState(tmp_path / "state.sqlite3", window_s=3600)
    try:
        assert again.seen("status\0https://a.example/s/1")
        assert not again.seen("status\0https://a.example/s/2")
    finally:
        again.close()


def test_a_false_maybe_of_the_filter_is_settled_by_sqlite(tmp_path: Path) -> None:
    state = StreamerState(tmp_path / "state.sqlite3", window_s=3600)
    try:
        keys = [f"status\0https://a.example/s/{i}" for i in range(3000)]
        for key in keys[:1500]:
            state.mark_seen(key)
        state.commit(1)
        assert all(state.seen(key) for key in keys[:1500])
        assert not any(state.seen(key) for key in keys[1500:])
    finally:
        state.close()


def test_a_generation_is_kept_when_the_clock_is_set_back() -> None:
    seen = SeenFilter(window_s=10.0, now=0.0)
    seen.add(1, 5.0)
    seen.add(2, 11.0)  # a new generation
    seen.add(3, 9.0)  # the clock went back: 3 lands in the new generation, at 11
    assert seen.expire(cutoff=10.0) == 1
    assert 2 in seen and 3 in seen


def test_a_key_seen_again_after_its_window_is_young_again(tmp_path: Path) -> None:
    state = StreamerState(tmp_path / "state.sqlite3", window_s=3600)
    try:
        key = "status\0https://a.example/s/1"
        state.mark_seen(key)
        state.commit(1)
        state._db.execute("UPDATE seen SET at = 0")  # as if published long ago
        state.mark_seen(key)
        state.commit(2)
        (at,) = state._db.execute("SELECT at FROM seen").fetchone()
        assert at > 0
    finally:
        state.close()
