"""Seeded generator of realistic Mastodon statuses, and the ground truth of what it emitted.

Pure: no I/O. The simulator draws statuses from a `StatusGenerator` and records each in
a `GroundTruth`, which tests compare with what the pipeline counted.
"""

from __future__ import annotations

import itertools
import json
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

_HTML_TAG = re.compile(r"<[^>]+>")
_SNOWFLAKE_SEQ_BITS = 16


def account_opts_out(account: Mapping[str, Any]) -> bool:
    """Whether an account asked not to be indexed: `noindex`, `indexable: false`,
    `discoverable: false`, or `#nobot` / `#noindex` in its bio.

    The bio is HTML (`#<span>nobot</span>`), so tags are stripped before looking.
    """
    if account.get("noindex") is True:
        return True
    if account.get("indexable") is False or account.get("discoverable") is False:
        return True
    note = _HTML_TAG.sub("", str(account.get("note") or "")).lower()
    return "#nobot" in note or "#noindex" in note


def _zipf_cumulative(size: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + 1) ** exponent for rank in range(size)))


def _snowflake(moment: datetime, sequence: int) -> int:
    """Mastodon's ID layout: milliseconds since the epoch, then 16 bits of sequence."""
    millis = int(moment.timestamp() * 1000)
    return (millis << _SNOWFLAKE_SEQ_BITS) | (sequence & ((1 << _SNOWFLAKE_SEQ_BITS) - 1))


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
    ) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        if spread_den <= 0:
            raise ValueError("spread_den must be positive")
        self._rng = random.Random(seed)
        self._domain = domain
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
            settings.seed, domain=domain, start=start, spread_num=num, spread_den=den, clock=clock
        )

    @property
    def domain(self) -> str:
        return self._domain

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

    def _pick(self, cumulative: Sequence[float]) -> int:
        return bisect(cumulative, self._rng.random() * cumulative[-1])

    def next_status(self) -> dict[str, Any]:
        rng = self._rng
        index = self._emitted
        self._emitted += 1
        created = self.event_time(index)
        status_id = max(_snowflake(created, index), self._last_id + 1)
        self._last_id = status_id
        sid = str(status_id)
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
            shown = name[:1].upper() + name[1:] if rng.random() < 0.25 else name
            parts.append(
                f'<a href="https://{author.domain}/tags/{quote(name)}" '
                f'class="mention hashtag" rel="tag">#<span>{escape(shown)}</span></a>'
            )
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
        if author.local:
            status["application"] = {"name": "Web", "website": None}
        status["account"] = author.payload
        status["media_attachments"] = media
        status["mentions"] = [mention for mention, _ in mentioned]
        status["tags"] = [
            {"name": name, "url": f"https://{self._domain}/tags/{quote(name)}"}
            for name in tag_names
        ]
        status["emojis"] = []
        status["card"] = self._card(link, language) if link and rng.random() < 0.7 else None
        status["poll"] = None
        self._recent.append((sid, author.id))
        return status

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
                if author.local
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
            if (username, domain) in used:
                continue
            used.add((username, domain))
            created = epoch + timedelta(days=rng.randrange(3500))
            account_id = str(_snowflake(created, len(authors)))
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
                "acct": username if local else f"{username}@{domain}",
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
                # Mastodon only reports `noindex` for its own users.
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
    whose author opted out of indexing (`account_opts_out`).
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
