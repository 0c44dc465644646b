"""Sources: stream paths, timelines, WebSocket parameters, the configuration and its tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.sources import (
    SourceConfigError,
    TokenRef,
    Transport,
    parse_sources_file,
    parse_sources_spec,
    stream_path,
    timeline_of,
    websocket_params,
)
from streamer.transports import http_base


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


# --------------------------------------------------------------------------- configuration


def test_compact_spec_defaults_to_public_over_sse() -> None:
    sources = parse_sources_spec(
        "http://a.example, https://b.example/|hashtag:rust|websocket", TokenRef(value="t")
    )
    assert [(s.instance_url, s.stream, s.transport) for s in sources] == [
        ("http://a.example", "public", Transport.SSE),
        ("https://b.example", "hashtag:rust", Transport.WEBSOCKET),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ftp://a.example", "must start with http"),
        ("http://a.example|firehose", "unknown stream"),
        ("http://a.example|public|carrier-pigeon", "sse or websocket"),
        ("http://a.example, http://a.example/", "configured twice"),
        ("", "no sources"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(SourceConfigError, match=message):
        parse_sources_spec(spec, TokenRef())


def test_sources_file_gives_each_instance_its_token(tmp_path: Path) -> None:
    secret = tmp_path / "b.token"
    secret.write_text("token-of-b\n")
    config = tmp_path / "sources.yaml"
    config.write_text(
        "instances:\n"
        "  - url: https://a.example\n"
        "    streams: [public, 'hashtag:python']\n"
        "    token_env: A_TOKEN\n"
        "  - url: https://b.example\n"
        "    transport: websocket\n"
        f"    token_file: {secret}\n"
    )
    a_public, a_python, b = parse_sources_file(config, TokenRef())
    assert a_python.stream == "hashtag:python" and b.transport is Transport.WEBSOCKET
    assert a_public.token.read({"A_TOKEN": "token-of-a"}) == "token-of-a"
    assert b.token.read({}) == "token-of-b"
    assert "token-of" not in repr(a_public) + repr(b) + str(b)
    with pytest.raises(SourceConfigError, match="A_TOKEN is not set"):
        a_public.token.read({})


def test_tokens_written_into_the_sources_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "sources.yaml"
    config.write_text("instances:\n  - url: https://a.example\n    token: s3cret\n")
    with pytest.raises(SourceConfigError, match="token_env") as caught:
        parse_sources_file(config, TokenRef())
    assert "s3cret" not in str(caught.value)


def test_a_token_given_by_value_never_shows_in_repr() -> None:
    ref = TokenRef(value="s3cret")
    assert "s3cret" not in repr(ref) and "s3cret" not in ref.describe()


@pytest.mark.parametrize(
    ("stream", "params"),
    [
        ("public", {"stream": "public"}),
        ("public:local", {"stream": "public:local"}),
        ("hashtag:rust", {"stream": "hashtag", "tag": "rust"}),
        ("hashtag:rust:local", {"stream": "hashtag:local", "tag": "rust"}),
        ("list:7", {"stream": "list", "list": "7"}),
    ],
)
def test_websocket_subscription_parameters(stream: str, params: dict[str, str]) -> None:
    assert websocket_params(stream) == params


@pytest.mark.parametrize(
    ("stream", "timeline"),
    [
        ("public", ("/api/v1/timelines/public", {})),
        ("public:local", ("/api/v1/timelines/public", {"local": "true"})),
        ("public:remote", ("/api/v1/timelines/public", {"remote": "true"})),
        ("hashtag:rust", ("/api/v1/timelines/tag/rust", {})),
        ("hashtag:rust:local", ("/api/v1/timelines/tag/rust", {"local": "true"})),
        ("user", ("/api/v1/timelines/home", {})),
        ("list:7", ("/api/v1/timelines/list/7", {})),
    ],
)
def test_every_stream_has_a_timeline_to_backfill_from(
    stream: str, timeline: tuple[str, dict[str, str]]
) -> None:
    assert timeline_of(stream) == timeline
