"""Seeded generator of realistic Mastodon statuses, and the ground truth of what it emitted.

Pure: no I/O. The simulator draws statuses (and boosts and edits of them) from a
`StatusGenerator` and records each in a `GroundTruth`, which tests compare with what
the pipeline counted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
from bisect import bisect
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import quote

from fedilake.contracts import Granularity, bucket_of, format_time, parse_time
from fedilake.settings import SimulatorSettings
from streamer.optouts import account_opts_out

DEFAULT_DOMAIN = "sim.fedilake.example"

# Reserved `.example` names: the simulated fediverse points at no real server or person.
REMOTE_DOMAINS: tuple[str, ...] = (
    "mastodon.example",
    "fosstodon.example",
    "hachyderm.example",
    "chaos.example",
    "mstdn.example",
    "social.example.org",
    "toot.example.net",
)

# Ordered by popularity: rank k is drawn with weight 1 / (k + 1) ** exponent.
HASHTAG_VOCABULARY: tuple[str, ...] = (
    "fediverse",
    "mastodon",
    "caturday",
    "photography",
    "python",
    "rust",
    "opensource",
    "linux",
    "art",
    "music",
    "news",
    "politics",
    "climate",
    "books",
    "gaming",
    "science",
    "foss",
    "dogsofmastodon",
    "introduction",
    "nature",
    "birds",
    "cooking",
    "ai",
    "privacy",
    "security",
    "javascript",
    "webdev",
    "cycling",
    "running",
    "football",
    "movies",
    "tv",
    "history",
    "space",
    "astronomy",
    "gardening",
    "coffee",
    "travel",
    "writing",
    "poetry",
    "mentalhealth",
    "accessibility",
    "design",
    "typography",
    "retrocomputing",
    "vintage",
    "hiking",
    "railway",
    "urbanism",
    "bikes",
    "food",
    "vegan",
    "baking",
    "knitting",
    "crafts",
    "diy",
    "electronics",
    "3dprinting",
    "homelab",
    "selfhosting",
    "kubernetes",
    "devops",
    "golang",
    "haskell",
    "emacs",
    "vim",
    "kotlin",
    "swift",
    "android",
    "ios",
    "gnome",
    "kde",
    "debian",
    "archlinux",
    "nixos",
    "freebsd",
    "openstreetmap",
    "wikipedia",
    "journalism",
    "economics",
    "philosophy",
    "linguistics",
    "maths",
    "physics",
    "biology",
    "chemistry",
    "medicine",
    "education",
    "academia",
    "phdlife",
    "jazz",
    "metal",
    "punk",
    "classicalmusic",
    "synth",
    "podcast",
    "anime",
    "manga",
    "comics",
    "scifi",
    "fantasy",
    "boardgames",
    "ttrpg",
    "chess",
    "sketch",
    "painting",
    "watercolor",
    "pixelart",
    "mastoart",
    "silentsunday",
    "sundayvibes",
    "mondaymotivation",
    "fridayfeeling",
    "streetphotography",
    "blackandwhite",
    "flowers",
    "insects",
    "ocean",
    "weather",
    "earthquake",
    "café",
    "東京",
    "berlin",
    "paris",
    "london",
    "tokyo",
)

_LANGUAGE_WEIGHTS: tuple[tuple[str | None, float], ...] = (
    ("en", 55.0),
    ("de", 12.0),
    ("ja", 9.0),
    ("fr", 7.0),
    ("es", 6.0),
    ("pt", 4.0),
    ("nl", 3.0),
    ("it", 2.0),
    (None, 2.0),
)

_PHRASES: dict[str | None, tuple[str, ...]] = {
    "en": (
        "Just finished reading a great article about this.",
        "Anyone else noticed how quiet it is today?",
        "New blog post is up, feedback welcome!",
        "The light this morning was incredible.",
        "Spent the whole weekend on this and it finally works.",
        "Hot take: tabs are fine, actually.",
        "Here's a thread on what I learned this week.",
        "Can't believe it's already the end of the month.",
    ),
    "de": (
        "Heute endlich mal Zeit für ein neues Projekt gefunden.",
        "Wer kennt sich damit aus? Ich komme nicht weiter.",
        "Neuer Artikel ist online, Feedback gerne gesehen!",
        "Was für ein schöner Morgen.",
    ),
    "ja": (
        "今日はとても良い天気ですね。",
        "新しいプロジェクトを始めました。",
        "ブログを更新しました、ぜひ読んでください。",
        "週末はずっとこれをやっていました。",
    ),
    "fr": (
        "Nouvel article publié, vos retours sont les bienvenus !",
        "Quelle belle lumière ce matin.",
        "Quelqu'un a déjà essayé ça ?",
    ),
    "es": (
        "Acabo de publicar un nuevo artículo.",
        "¿Alguien más ha probado esto?",
        "Qué mañana tan bonita.",
    ),
    "pt": (
        "Acabei de publicar um novo texto no blog.",
        "Alguém já testou isso?",
    ),
    "nl": (
        "Net een nieuw blogbericht geplaatst.",
        "Wat een mooie ochtend vandaag.",
    ),
    "it": (
        "Ho appena pubblicato un nuovo articolo.",
        "Qualcuno ha già provato questo?",
    ),
    None: ("🙂", "👀 …"),
}

_SPOILERS: tuple[str, ...] = ("cw: politics", "food", "eye contact", "long post", "spoilers")

# Targets of external links, ordered by popularity like the hashtags.
_LINK_DOMAINS: tuple[str, ...] = (
    "news.example.com",
    "blog.example.org",
    "video.example.net",
    "code.example.com",
    "paper.example.edu",
    "shop.example.com",
    "photos.example.org",
    "wiki.example.org",
)
_LINK_SLUGS: tuple[str, ...] = (
    "2026/11/the-state-of-the-fediverse",
    "posts/why-we-moved-to-rust",
    "watch?v=dQw4w9WgXcQ",
    "releases/v2.0.0",
    "abs/2611.01234",
    "item/12345",
    "gallery/autumn",
    "wiki/ActivityPub",
    "2026/11/climate-report",
    "p/hello-world",
)

_BLURHASHES: tuple[str, ...] = (
    "UBL_:rOpGG-oBUNG,qRj2so|=eE1w^n4S5NH",
    "U24{Yp_3?bRj%MofxuRj00WB4nt7~qRjD%t7",
    "UKO2?U%2Tw=w]~RBVZRi};RPxuwH%3s8tLOX",
    "U9B:m:~qM{ay_3fQt7j[9Fj[xuay%MfQRjj[",
    "UEHV6nWB2yk8pyo0adR*.7kCMdnj~qofofNG",
    "U35OcP%MD%j[~qt7IUayIUWBofj[Rjayt7fQ",
)

_HASHTAG_LINK = re.compile(
    r' ?<a href="[^"]*" class="mention hashtag" rel="tag">#<span>[^<]*</span></a>'
)
_SNOWFLAKE_SEQ_BITS = 16
_EDIT_NOTES: tuple[str, ...] = ("Edit: typo.", "Edit: added a link.", "Edit: better tags.", "✏️")


def status_domain(status: Mapping[str, Any]) -> str:
    """The home domain of a status's author (from the account's profile URL)."""
    return str(status["account"]["url"]).split("/")[2]


def engagement_counts(seed: int, uri: str, age_s: float) -> dict[str, int]:
    """Favourites, boosts and replies of a status `age_s` seconds after it was posted.

    Pure and deterministic: a per-status popularity drawn from a hash of `seed` and the
    `uri`, growing with the logarithm of the age (fast at first, then slowly), so a
    later re-fetch never sees lower counts and usually sees higher ones.
    """
    digest = hashlib.blake2b(f"{seed}:{uri}".encode(), digest_size=12).digest()
    u1, u2, u3 = (int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in (0, 4, 8))
    popularity = 4.0 + 60.0 * u1**3  # most statuses modest, a few popular
    growth = math.log1p(max(age_s, 0.0) / 2.0)
    return {
        "replies_count": int(popularity * 0.15 * u3 * growth),
        "reblogs_count": int(popularity * (0.1 + 0.3 * u2) * growth),
        "favourites_count": int(popularity * growth),
    }


def _zipf_cumulative(size: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + 1) ** exponent for rank in range(size)))


def snowflake(moment: datetime, sequence: int) -> int:
    """Mastodon's ID layout: milliseconds since the epoch, then 16 bits of sequence."""
    millis = int(moment.timestamp() * 1000)
    return (millis << _SNOWFLAKE_SEQ_BITS) | (sequence & ((1 << _SNOWFLAKE_SEQ_BITS) - 1))


def _hashtag_html(domain: str, name: str, rng: random.Random) -> str:
    """A hashtag link as the author's server renders it, sometimes capitalised."""
    shown = name[:1].upper() + name[1:] if rng.random() < 0.25 else name
    return (
        f'<a href="https://{domain}/tags/{quote(name)}" '
        f'class="mention hashtag" rel="tag">#<span>{escape(shown)}</span></a>'
    )


def _link_html(url: str) -> str:
    """An external link rendered the way Mastodon's formatter shortens it."""
    scheme, _, rest = url.partition("://")
    if len(rest) > 30:
        shown, hidden = rest[:30], rest[30:]
        middle = f'<span class="ellipsis">{escape(shown)}</span>'
    else:
        shown, hidden = rest, ""
        middle = f'<span class="">{escape(shown)}</span>'
    return (
        f'<a href="{escape(url)}" target="_blank" rel="nofollow noopener" translate="no">'
        f'<span class="invisible">{scheme}://</span>{middle}'
        f'<span class="invisible">{escape(hidden)}</span></a>'
    )


@dataclass(frozen=True, slots=True)
class _Author:
    id: str
    username: str
    domain: str
    local: bool
    payload: dict[str, Any]
    mention: dict[str, str]


class StatusGenerator:
    """Draws Mastodon v1 Status entities from one `random.Random(seed)`.

    Hashtags, authors, languages and link targets are Zipf-distributed from pools
    built once at construction, so drawing a status is a handful of bisects and one
    dict. The same seed draws the same statuses; with a fixed `start` the times and
    IDs are the same too.

    Statuses are rendered as `domain` (the first simulated instance) shows them.
    About a third of the authors live on a simulated instance: on `domain`, or, when
    `local_domains` names several, on one of them (drawn from a separate random
    stream, so the statuses themselves do not change); the rest on remote servers.
    About 8% of the statuses reply to a recent one. Boosts (`reblog_of`) and edits
    (`edit_of`) take the random stream they are given, so a caller that draws them
    from its own stream leaves the sequence of new statuses as it was.

    Event time: status `i` is created at `start + i * spread_num / spread_den`
    seconds when `start` is given, else at `clock()`.
    """

    def __init__(
        self,
        seed: int,
        *,
        domain: str = DEFAULT_DOMAIN,
        start: datetime | None = None,
        spread_num: float = 0.0,
        spread_den: float = 1.0,
        clock: Callable[[], datetime] | None = None,
        accounts: int = 2000,
        tag_exponent: float = 1.1,
        account_exponent: float = 1.0,
        opt_out_share: float = 0.03,
        local_domains: Sequence[str] | None = None,
    ) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        if spread_den <= 0:
            raise ValueError("spread_den must be positive")
        self._rng = random.Random(seed)
        self._domain = domain
        self._local_domains = tuple(local_domains) if local_domains else (domain,)
        if self._local_domains[0] != domain:
            raise ValueError("local_domains must start with domain")
        # Which simulated instance a local author lives on: its own stream, so that
        # adding instances moves authors without changing what they post.
        self._home_rng = random.Random(f"{seed}:homes")
        self._start = start
        self._spread_num = spread_num
        self._spread_den = spread_den
        self._clock = clock or (lambda: datetime.now(UTC))
        self._emitted = 0
        self._last_id = 0
        self._recent: deque[tuple[str, str]] = deque(maxlen=64)

        self._tag_cum = _zipf_cumulative(len(HASHTAG_VOCABULARY), tag_exponent)
        self._languages = tuple(lang for lang, _ in _LANGUAGE_WEIGHTS)
        self._language_cum = list(itertools.accumulate(w for _, w in _LANGUAGE_WEIGHTS))
        links = [f"https://{d}/{s}" for d in _LINK_DOMAINS for s in _LINK_SLUGS]
        self._rng.shuffle(links)
        self._links = tuple(links)
        self._link_cum = _zipf_cumulative(len(self._links), 1.0)
        self._authors = self._build_authors(accounts, opt_out_share)
        self._author_cum = _zipf_cumulative(len(self._authors), account_exponent)

    @classmethod
    def from_settings(
        cls,
        settings: SimulatorSettings,
        *,
        domain: str = DEFAULT_DOMAIN,
        clock: Callable[[], datetime] | None = None,
        local_domains: Sequence[str] | None = None,
    ) -> StatusGenerator:
        """`events` statuses spread evenly over `spread_s` from `start`; without a
        bounded `events`, one status every `1 / rate` seconds from `start`."""
        start = parse_time(settings.start) if settings.start else None
        if settings.events:
            num, den = settings.spread_s, float(settings.events)
        elif settings.rate > 0:
            num, den = 1.0, settings.rate
        else:
            num, den = 0.0, 1.0
        return cls(
            settings.seed,
            domain=domain,
            start=start,
            spread_num=num,
            spread_den=den,
            clock=clock,
            local_domains=local_domains,
        )

    @property
    def domain(self) -> str:
        return self._domain

    @property
    def local_domains(self) -> tuple[str, ...]:
        return self._local_domains

    @property
    def emitted(self) -> int:
        return self._emitted

    def event_time(self, index: int) -> datetime:
        if self._start is None:
            return self._clock()
        return self._start + timedelta(seconds=index * self._spread_num / self._spread_den)

    def take(self, count: int) -> list[dict[str, Any]]:
        return [self.next_status() for _ in range(count)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_status()

    # ------------------------------------------------------------------ drawing

    def _pick(self, cumulative: Sequence[float], rng: random.Random | None = None) -> int:
        return bisect(cumulative, (rng or self._rng).random() * cumulative[-1])

    def _next_id(self, created: datetime, index: int) -> str:
        status_id = max(snowflake(created, index), self._last_id + 1)
        self._last_id = status_id
        return str(status_id)

    def next_status(self, index: int | None = None) -> dict[str, Any]:
        """The next new status; `index` (default: how many were drawn) sets its event time."""
        rng = self._rng
        if index is None:
            index = self._emitted
        self._emitted += 1
        created = self.event_time(index)
        sid = self._next_id(created, index)
        author = self._authors[self._pick(self._author_cum)]
        language = self._languages[self._pick(self._language_cum)]

        tag_names = self._draw_tags()
        mentioned = self._draw_mentions(author)
        link = self._links[self._pick(self._link_cum)] if rng.random() < 0.2 else None
        reply_to = (
            self._recent[rng.randrange(len(self._recent))]
            if (self._recent and rng.random() < 0.08)
            else None
        )
        sensitive = rng.random() < 0.04
        media = self._draw_media(author) if rng.random() < 0.15 else []

        parts: list[str] = [m_html for _, m_html in mentioned]
        parts.append(escape(rng.choice(_PHRASES[language])))
        if link is not None:
            parts.append(_link_html(link))
        for name in tag_names:
            parts.append(_hashtag_html(author.domain, name, rng))
        content = "<p>" + " ".join(parts) + "</p>"

        status: dict[str, Any] = {
            "id": sid,
            "created_at": format_time(created),
            "in_reply_to_id": reply_to[0] if reply_to else None,
            "in_reply_to_account_id": reply_to[1] if reply_to else None,
            "sensitive": sensitive or (bool(media) and rng.random() < 0.03),
            "spoiler_text": rng.choice(_SPOILERS) if sensitive else "",
            "visibility": "public",
            "language": language,
            "uri": f"https://{author.domain}/users/{author.username}/statuses/{sid}",
            "url": f"https://{author.domain}/@{author.username}/{sid}",
            "replies_count": 0,
            "reblogs_count": 0,
            "favourites_count": 0,
            "edited_at": None,
            "content": content,
            "reblog": None,
        }
        if author.domain == self._domain:
            status["application"] = {"name": "Web", "website": None}
        status["account"] = author.payload
        status["media_attachments"] = media
        status["mentions"] = [mention for mention, _ in mentioned]
        status["tags"] = self._tag_entities(tag_names)
        status["emojis"] = []
        status["card"] = self._card(link, language) if link and rng.random() < 0.7 else None
        status["poll"] = None
        self._recent.append((sid, author.id))
        return status

    def _tag_entities(self, names: Sequence[str]) -> list[dict[str, str]]:
        return [
            {"name": name, "url": f"https://{self._domain}/tags/{quote(name)}"} for name in names
        ]

    def reblog_of(
        self, original: Mapping[str, Any], rng: random.Random, index: int | None = None
    ) -> dict[str, Any]:
        """A boost of `original` by an author drawn from `rng`, as Mastodon serialises it:
        an empty status of its own whose `reblog` is the original."""
        if index is None:
            index = self._emitted
        self._emitted += 1
        created = self.event_time(index)
        sid = self._next_id(created, index)
        booster = self._authors[self._pick(self._author_cum, rng)]
        uri = f"https://{booster.domain}/users/{booster.username}/statuses/{sid}/activity"
        status: dict[str, Any] = {
            "id": sid,
            "created_at": format_time(created),
            "in_reply_to_id": None,
            "in_reply_to_account_id": None,
            "sensitive": False,
            "spoiler_text": "",
            "visibility": "public",
            "language": None,
            "uri": uri,
            "url": uri,
            "replies_count": 0,
            "reblogs_count": 0,
            "favourites_count": 0,
            "edited_at": None,
            "content": "",
            "reblog": dict(original),
        }
        if booster.domain == self._domain:
            status["application"] = None
        status["account"] = booster.payload
        status["media_attachments"] = []
        status["mentions"] = []
        status["tags"] = []
        status["emojis"] = []
        status["card"] = None
        status["poll"] = None
        return status

    def edit_of(
        self, status: Mapping[str, Any], rng: random.Random, at: datetime | None = None
    ) -> dict[str, Any]:
        """A new version of `status` (same id and uri) with other hashtags, a changed text
        and `edited_at` at `at` (default: now), always after the previous version."""
        created = parse_time(str(status["created_at"]))
        previous = parse_time(str(status["edited_at"])) if status.get("edited_at") else created
        edited = max(at or self._clock(), previous + timedelta(milliseconds=1))
        old = [str(tag["name"]) for tag in status.get("tags") or ()]
        names = [name for name in old if rng.random() < 0.6]
        if len(names) < 4 and (names == old or rng.random() < 0.6):
            for _ in range(8):
                name = HASHTAG_VOCABULARY[self._pick(self._tag_cum, rng)]
                if name not in old and name not in names:
                    names.append(name)
                    break
        if names == old:
            names = names[:-1] if names else ["fedilake"]
        domain = status_domain(status)
        body = _HASHTAG_LINK.sub("", str(status.get("content") or ""))
        body = body.removeprefix("<p>").removesuffix("</p>")
        parts = [body, escape(rng.choice(_EDIT_NOTES))]
        parts.extend(_hashtag_html(domain, name, rng) for name in names)
        edit = dict(status)
        edit["content"] = "<p>" + " ".join(p for p in parts if p) + "</p>"
        edit["edited_at"] = format_time(edited)
        edit["tags"] = self._tag_entities(names)
        return edit

    def _draw_tags(self) -> list[str]:
        rng = self._rng
        roll = rng.random()
        # 0-4 distinct tags, fewer more often: 35% none, 30% one, 20% two, 10% three, 5% four.
        wanted = (
            0
            if roll < 0.35
            else 1
            if roll < 0.65
            else 2
            if roll < 0.85
            else (3 if roll < 0.95 else 4)
        )
        names: list[str] = []
        attempts = 0
        while len(names) < wanted and attempts < 16:
            attempts += 1
            name = HASHTAG_VOCABULARY[self._pick(self._tag_cum)]
            if name not in names:
                names.append(name)
        return names

    def _draw_mentions(self, author: _Author) -> list[tuple[dict[str, str], str]]:
        rng = self._rng
        if rng.random() >= 0.12:
            return []
        out: list[tuple[dict[str, str], str]] = []
        seen = {author.id}
        for _ in range(1 if rng.random() < 0.8 else 2):
            other = self._authors[self._pick(self._author_cum)]
            if other.id in seen:
                continue
            seen.add(other.id)
            html = (
                f'<span class="h-card" translate="no"><a href="{other.mention["url"]}" '
                f'class="u-url mention">@<span>{other.username}</span></a></span>'
            )
            out.append((other.mention, html))
        return out

    def _draw_media(self, author: _Author) -> list[dict[str, Any]]:
        rng = self._rng
        media: list[dict[str, Any]] = []
        for _ in range(1 + int(rng.random() ** 3 * 4)):
            roll = rng.random()
            kind, ext = (
                ("image", "jpg")
                if roll < 0.85
                else (("video", "mp4") if roll < 0.95 else ("gifv", "mp4"))
            )
            media_id = str(self._last_id + len(media) + 1)
            key = f"{rng.getrandbits(64):016x}"
            path = f"media_attachments/files/{media_id[:3]}/{media_id[3:6]}/{media_id[6:9]}"
            remote = (
                None
                if author.domain == self._domain
                else f"https://files.{author.domain}/{path}/original/{key}.{ext}"
            )
            width, height = rng.choice(((1280, 960), (1080, 1350), (1920, 1080), (800, 800)))
            media.append(
                {
                    "id": media_id,
                    "type": kind,
                    "url": f"https://files.{self._domain}/{path}/original/{key}.{ext}",
                    "preview_url": f"https://files.{self._domain}/{path}/small/{key}.jpg",
                    "remote_url": remote,
                    "preview_remote_url": None,
                    "text_url": None,
                    "meta": {
                        "original": {
                            "width": width,
                            "height": height,
                            "size": f"{width}x{height}",
                            "aspect": round(width / height, 4),
                        },
                        "small": {
                            "width": width // 3,
                            "height": height // 3,
                            "size": f"{width // 3}x{height // 3}",
                            "aspect": round(width / height, 4),
                        },
                    },
                    "description": "A photo" if rng.random() < 0.6 else None,
                    "blurhash": rng.choice(_BLURHASHES),
                }
            )
        return media

    def _card(self, link: str, language: str | None) -> dict[str, Any]:
        rng = self._rng
        host = link.split("/")[2]
        has_image = rng.random() < 0.7
        return {
            "url": link,
            "title": link.rsplit("/", 1)[-1].replace("-", " ").capitalize(),
            "description": "",
            "language": language,
            "type": "link",
            "author_name": "",
            "author_url": "",
            "provider_name": host,
            "provider_url": "",
            "html": "",
            "width": 400 if has_image else 0,
            "height": 209 if has_image else 0,
            "image": f"https://files.{self._domain}/cache/preview_cards/{host}.jpg"
            if has_image
            else None,
            "image_description": "",
            "embed_url": "",
            "blurhash": rng.choice(_BLURHASHES) if has_image else None,
            "published_at": None,
            "authors": [],
        }

    # ------------------------------------------------------------------ the account pool

    def _build_authors(self, count: int, opt_out_share: float) -> tuple[_Author, ...]:
        rng = self._rng
        syllables = (
            "ka",
            "lo",
            "mi",
            "ra",
            "sen",
            "to",
            "vi",
            "an",
            "el",
            "dor",
            "fin",
            "ju",
            "na",
            "pe",
            "qu",
            "sa",
            "ti",
            "ur",
            "ya",
            "zo",
            "bel",
            "cor",
            "dax",
            "em",
        )
        used: set[tuple[str, str]] = set()
        authors: list[_Author] = []
        epoch = datetime(2017, 1, 1, tzinfo=UTC)
        while len(authors) < count:
            base = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3)))
            username = base if rng.random() < 0.6 else f"{base}{rng.randint(1, 999)}"
            local = rng.random() < 0.35
            domain = self._domain if local else rng.choice(REMOTE_DOMAINS)
            # Local usernames are unique over all simulated instances, so that moving
            # users between them draws the same pool.
            if (username, domain) in used:
                continue
            used.add((username, domain))
            if local and len(self._local_domains) > 1:
                domain = self._home_rng.choice(self._local_domains)
            created = epoch + timedelta(days=rng.randrange(3500))
            account_id = str(snowflake(created, len(authors)))
            followers = int(rng.paretovariate(1.1) * 8) - 8
            opt_out = rng.random() < opt_out_share
            noindex = discoverable_off = indexable_off = False
            note = f"<p>{escape(base.capitalize())} on the fediverse.</p>"
            if opt_out:
                way = rng.randrange(4)
                if way == 0 and local:
                    noindex = True
                elif way == 1:
                    indexable_off = True
                elif way == 2:
                    discoverable_off = True
                else:
                    tag = rng.choice(("nobot", "noindex"))
                    note = (
                        f"<p>Please no bots. "
                        f'<a href="https://{domain}/tags/{tag}" class="mention hashtag" '
                        f'rel="tag">#<span>{tag}</span></a></p>'
                    )
            url = f"https://{domain}/@{username}"
            avatar = f"https://files.{self._domain}/accounts/avatars/{account_id}.png"
            header = f"https://files.{self._domain}/accounts/headers/{account_id}.png"
            payload: dict[str, Any] = {
                "id": account_id,
                "username": username,
                "acct": username if domain == self._domain else f"{username}@{domain}",
                "display_name": base.capitalize(),
                "locked": False,
                "bot": rng.random() < 0.03,
                "discoverable": not discoverable_off,
                "indexable": not indexable_off,
                "group": False,
                "created_at": format_time(created),
                "note": note,
                "url": url,
                "uri": f"https://{domain}/users/{username}",
                "avatar": avatar,
                "avatar_static": avatar,
                "header": header,
                "header_static": header,
                "followers_count": followers,
                "following_count": int(rng.paretovariate(1.5) * 20) - 20,
                "statuses_count": int(rng.paretovariate(1.0) * 50),
                "last_status_at": None,
                "hide_collections": False,
            }
            if local:
                # Mastodon only reports `noindex` for its own users; the simulated
                # instances share their users' settings, so every one reports it.
                payload["noindex"] = noindex
            payload["emojis"] = []
            payload["roles"] = []
            payload["fields"] = []
            mention = {"id": account_id, "username": username, "url": url, "acct": payload["acct"]}
            authors.append(_Author(account_id, username, domain, local, payload, mention))
        return tuple(authors)


# ---------------------------------------------------------------------- ground truth


def _sorted_counts(by_hour: Mapping[str, Counter[str]]) -> dict[str, dict[str, int]]:
    return {
        hour: dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
        for hour, counts in sorted(by_hour.items())
    }


@dataclass
class GroundTruth:
    """What the simulator emitted, counted the way the pipeline should count it.

    A status counts in the hour of its `created_at`; each distinct lowercased tag
    name of a status counts once. `indexable_hashtags_by_hour` leaves out statuses
    whose author opted out of indexing (`account_opts_out`). A boost has no tags of
    its own and counts for none (its original counted when it was posted).

    The hashtag counts are those of the final state: `forget` takes a deleted status's
    tags out again and `revise` replaces an edited status's tags with its new ones (in
    the hour it was created). `statuses` and `opted_out_statuses` count every status
    ever recorded, deleted or not.
    """

    statuses: int = 0
    opted_out_statuses: int = 0
    hashtags_by_hour: dict[str, Counter[str]] = field(default_factory=dict)
    indexable_hashtags_by_hour: dict[str, Counter[str]] = field(default_factory=dict)
    _hour_cache: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def record(self, status: Mapping[str, Any]) -> None:
        self.statuses += 1
        created = str(status["created_at"])
        hour = self._hour_of(created)
        names = {str(tag["name"]).lower() for tag in status.get("tags") or ()}
        opted_out = account_opts_out(status.get("account") or {})
        if opted_out:
            self.opted_out_statuses += 1
        if not names:
            return
        self.hashtags_by_hour.setdefault(hour, Counter()).update(names)
        if not opted_out:
            self.indexable_hashtags_by_hour.setdefault(hour, Counter()).update(names)

    def forget(self, status: Mapping[str, Any]) -> None:
        """Take a deleted status's tags out of the hashtag counts."""
        self._count_tags(status, -1)

    def revise(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """Count an edited status with its new tags instead of its old ones."""
        self._count_tags(old, -1)
        self._count_tags(new, +1)

    def _count_tags(self, status: Mapping[str, Any], sign: int) -> None:
        names = {str(tag["name"]).lower() for tag in status.get("tags") or ()}
        if not names:
            return
        hour = self._hour_of(str(status["created_at"]))
        tables = [self.hashtags_by_hour]
        if not account_opts_out(status.get("account") or {}):
            tables.append(self.indexable_hashtags_by_hour)
        for by_hour in tables:
            counts = by_hour.setdefault(hour, Counter())
            for name in names:
                counts[name] += sign
                if counts[name] <= 0:
                    del counts[name]
            if not counts:
                del by_hour[hour]

    def _hour_of(self, created: str) -> str:
        # Parsing is the slow part; every status of one UTC hour shares the prefix.
        key = created[:13] if created.endswith("Z") else created
        hour = self._hour_cache.get(key)
        if hour is None:
            hour = bucket_of(parse_time(created), Granularity.HOUR)
            self._hour_cache[key] = hour
        return hour

    def hashtag_count(self, name: str, hour: str | None = None) -> int:
        """Occurrences of one tag in one hour bucket, or over every hour."""
        name = name.lower()
        if hour is not None:
            return self.hashtags_by_hour.get(hour, Counter())[name]
        return sum(counts[name] for counts in self.hashtags_by_hour.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "statuses": self.statuses,
            "opted_out_statuses": self.opted_out_statuses,
            "hashtags_by_hour": _sorted_counts(self.hashtags_by_hour),
            "indexable_hashtags_by_hour": _sorted_counts(self.indexable_hashtags_by_hour),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> GroundTruth:
        return cls(
            statuses=int(doc["statuses"]),
            opted_out_statuses=int(doc.get("opted_out_statuses", 0)),
            hashtags_by_hour={
                hour: Counter({k: int(v) for k, v in counts.items()})
                for hour, counts in doc["hashtags_by_hour"].items()
            },
            indexable_hashtags_by_hour={
                hour: Counter({k: int(v) for k, v in counts.items()})
                for hour, counts in (doc.get("indexable_hashtags_by_hour") or {}).items()
            },
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> GroundTruth:
        return cls.from_dict(json.loads(text))
