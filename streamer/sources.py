"""Which (instance, stream) pairs the streamer follows, and how each instance's token is found."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml

if TYPE_CHECKING:
    from fedilake.settings import StreamerSettings

STREAM_PATHS = {
    "public": "/api/v1/streaming/public",
    "public:local": "/api/v1/streaming/public/local",
    "public:remote": "/api/v1/streaming/public/remote",
    "user": "/api/v1/streaming/user",
    "user:notification": "/api/v1/streaming/user/notification",
}

# The REST timeline that holds what a stream would have delivered, for backfilling a gap.
_TIMELINES = {
    "public": ("/api/v1/timelines/public", {}),
    "public:local": ("/api/v1/timelines/public", {"local": "true"}),
    "public:remote": ("/api/v1/timelines/public", {"remote": "true"}),
    "user": ("/api/v1/timelines/home", {}),
    "user:notification": ("/api/v1/notifications", {}),
}


class SourceConfigError(ValueError):
    """The sources configuration cannot be used; the message says which entry and why."""


class Transport(StrEnum):
    SSE = "sse"
    WEBSOCKET = "websocket"


def stream_path(stream: str) -> str:
    """The SSE path of a stream, as Mastodon's streaming server routes it."""
    if stream in STREAM_PATHS:
        return STREAM_PATHS[stream]
    kind, _, arg = stream.partition(":")
    if kind == "hashtag" and arg:
        tag, _, local = arg.partition(":")
        suffix = "/local" if local == "local" else ""
        return f"/api/v1/streaming/hashtag{suffix}?tag={quote(tag, safe='')}"
    if kind == "list" and arg:
        return f"/api/v1/streaming/list?list={quote(arg, safe='')}"
    raise ValueError(
        f"unknown stream {stream!r}; known: {', '.join(STREAM_PATHS)}, hashtag:TAG[:local], list:ID"
    )


def websocket_params(stream: str) -> dict[str, str]:
    """The `stream` (and `tag` / `list`) parameters of Mastodon's WebSocket subscription."""
    stream_path(stream)  # the same validation as SSE
    kind, _, arg = stream.partition(":")
    if kind == "hashtag":
        tag, _, local = arg.partition(":")
        return {"stream": "hashtag:local" if local == "local" else "hashtag", "tag": tag}
    if kind == "list":
        return {"stream": "list", "list": arg}
    return {"stream": stream}


def timeline_of(stream: str) -> tuple[str, dict[str, str]]:
    """The REST path and parameters whose pages hold what `stream` delivered."""
    if stream in _TIMELINES:
        path, params = _TIMELINES[stream]
        return path, dict(params)
    kind, _, arg = stream.partition(":")
    if kind == "hashtag" and arg:
        tag, _, local = arg.partition(":")
        return f"/api/v1/timelines/tag/{quote(tag, safe='')}", (
            {"local": "true"} if local == "local" else {}
        )
    if kind == "list" and arg:
        return f"/api/v1/timelines/list/{quote(arg, safe='')}", {}
    raise ValueError(f"unknown stream {stream!r}")


@dataclass(frozen=True)
class TokenRef:
    """Where an instance's access token lives: an environment variable or a secret file.

    The token itself is read only when a connection needs it and is never printed:
    `repr` names where it comes from, not what it is.
    """

    env: str | None = None
    file: Path | None = None
    value: str | None = field(default=None, repr=False)

    def read(self, environ: Mapping[str, str] | None = None) -> str | None:
        if self.value is not None:
            return self.value
        environ = os.environ if environ is None else environ
        if self.env:
            found = environ.get(self.env, "").strip()
            if not found:
                raise SourceConfigError(f"the token variable {self.env} is not set")
            return found
        if self.file is not None:
            try:
                return self.file.read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise SourceConfigError(
                    f"cannot read the token file {self.file}: {exc.strerror}"
                ) from exc
        return None

    def describe(self) -> str:
        if self.env:
            return f"${self.env}"
        if self.file is not None:
            return str(self.file)
        return "the configured token" if self.value is not None else "no token"


@dataclass(frozen=True)
class Source:
    """One stream of one instance, with the transport to read it over."""

    instance_url: str
    stream: str
    transport: Transport = Transport.SSE
    token: TokenRef = TokenRef()

    @property
    def name(self) -> str:
        """Stable name used for checkpoints and logs (no secret in it)."""
        return f"{self.instance_url}|{self.stream}"

    def __str__(self) -> str:
        return f"{self.instance_url} ({self.stream}, {self.transport.value})"


def _source(url: Any, stream: Any, transport: Any, token: TokenRef, where: str) -> Source:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise SourceConfigError(f"{where}: instance url must start with http:// or https://")
    try:
        stream_path(str(stream))
    except ValueError as exc:
        raise SourceConfigError(f"{where}: {exc}") from exc
    try:
        kind = Transport(str(transport).lower())
    except ValueError as exc:
        raise SourceConfigError(
            f"{where}: transport must be sse or websocket, not {transport!r}"
        ) from exc
    return Source(url.rstrip("/"), str(stream), kind, token)


def parse_sources_spec(spec: str, default_token: TokenRef) -> list[Source]:
    """`URL[|STREAM[|TRANSPORT]]` entries separated by commas or new lines.

    Every entry uses the default token (FEDILAKE_STREAMER_ACCESS_TOKEN or _FILE); use a
    sources file to give instances tokens of their own.
    """
    sources = []
    entries = [e.strip() for e in spec.replace("\n", ",").split(",") if e.strip()]
    for index, entry in enumerate(entries, 1):
        parts = [p.strip() for p in entry.split("|")]
        if len(parts) > 3:
            raise SourceConfigError(f"source {index} ({entry!r}): expected URL|STREAM|TRANSPORT")
        url, stream, transport = (parts + ["public", "sse"][len(parts) - 1 :])[:3]
        sources.append(_source(url, stream, transport, default_token, f"source {index}"))
    return _unique(sources)


def parse_sources_file(path: Path, default_token: TokenRef) -> list[Source]:
    """A YAML file of instances, each with its streams, transport and token::

    instances:
      - url: https://mastodon.example
        streams: [public, "hashtag:python"]
        transport: sse            # or websocket (GoToSocial, Akkoma)
        token_env: MASTODON_EXAMPLE_TOKEN   # or token_file: /run/secrets/mastodon
    """
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise SourceConfigError(f"cannot read the sources file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SourceConfigError(f"the sources file {path} is not valid YAML: {exc}") from exc
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise SourceConfigError(f"{path}: expected a non-empty `instances:` list")
    sources = []
    for index, item in enumerate(instances, 1):
        where = f"{path}, instance {index}"
        if not isinstance(item, dict):
            raise SourceConfigError(f"{where}: expected a mapping with url and streams")
        if item.get("token"):
            raise SourceConfigError(
                f"{where}: tokens are not written in the sources file; "
                "use token_env (a variable name) or token_file (a secret file)"
            )
        token = default_token
        if item.get("token_env"):
            token = TokenRef(env=str(item["token_env"]))
        elif item.get("token_file"):
            token = TokenRef(file=Path(str(item["token_file"])))
        streams = item.get("streams", ["public"])
        if isinstance(streams, str):
            streams = [streams]
        for stream in streams:
            sources.append(
                _source(item.get("url"), stream, item.get("transport", "sse"), token, where)
            )
    return _unique(sources)


def _unique(sources: list[Source]) -> list[Source]:
    seen: set[str] = set()
    for source in sources:
        if source.name in seen:
            raise SourceConfigError(f"{source} is configured twice")
        seen.add(source.name)
    if not sources:
        raise SourceConfigError("no sources configured")
    return sources


def default_token(settings: StreamerSettings) -> TokenRef:
    if settings.access_token is not None:
        return TokenRef(value=settings.access_token.get_secret_value())
    if settings.access_token_file is not None:
        return TokenRef(file=settings.access_token_file)
    return TokenRef()


def configured_sources(settings: StreamerSettings) -> list[Source]:
    """Every configured (instance, stream); raises SourceConfigError with the reason."""
    token = default_token(settings)
    if settings.sources_file is not None:
        return parse_sources_file(settings.sources_file, token)
    if settings.sources:
        return parse_sources_spec(settings.sources, token)
    return parse_sources_spec(
        f"{settings.instance_url}|{settings.stream}|{settings.transport}", token
    )
