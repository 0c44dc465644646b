"""The listener's pure helpers: stream paths and the HTTP base of a streaming URL."""

from __future__ import annotations

import pytest

from streamer.listener import http_base, stream_path


@pytest.mark.parametrize(
    ("stream", "path"),
    [
        ("public", "/api/v1/streaming/public"),
        ("public:local", "/api/v1/streaming/public/local"),
        ("public:remote", "/api/v1/streaming/public/remote"),
        ("user", "/api/v1/streaming/user"),
        ("user:notification", "/api/v1/streaming/user/notification"),
        ("hashtag:rust", "/api/v1/streaming/hashtag?tag=rust"),
        ("hashtag:rust:local", "/api/v1/streaming/hashtag/local?tag=rust"),
        ("list:42", "/api/v1/streaming/list?list=42"),
    ],
)
def test_stream_path(stream: str, path: str) -> None:
    assert stream_path(stream) == path


@pytest.mark.parametrize("stream", ["", "firehose", "hashtag", "hashtag:", "list:", "public:all"])
def test_unknown_stream_is_refused_with_the_known_ones(stream: str) -> None:
    with pytest.raises(ValueError, match="unknown stream") as caught:
        stream_path(stream)
    assert "public:local" in str(caught.value)
    assert "hashtag:TAG" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("ws://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("wss://streaming.mastodon.social", "https://streaming.mastodon.social"),
        ("wss://streaming.mastodon.social/", "https://streaming.mastodon.social"),
        ("wss://example.social/streaming/", "https://example.social/streaming"),
        ("https://example.social", "https://example.social"),
        ("http://localhost:4000/", "http://localhost:4000"),
    ],
)
def test_http_base(url: str, base: str) -> None:
    assert http_base(url) == base


def test_http_base_and_stream_path_make_the_stream_url() -> None:
    url = http_base("wss://streaming.example.social/") + stream_path("hashtag:rust:local")
    assert url == "https://streaming.example.social/api/v1/streaming/hashtag/local?tag=rust"
