"""Honouring accounts that asked not to be indexed (`noindex`, `indexable: false`, ...) (pure)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from enum import StrEnum
from typing import Any

from fedilake.contracts import Envelope, EventKind

_HTML_TAG = re.compile(r"<[^>]+>")

# What survives anonymisation: enough to count the post (time, language, tags, media
# types, engagement), nothing that says who wrote it or what it said.
_KEPT_FIELDS = (
    "id",
    "uri",
    "created_at",
    "edited_at",
    "language",
    "visibility",
    "sensitive",
    "replies_count",
    "reblogs_count",
    "favourites_count",
)


class OptOutPolicy(StrEnum):
    ANONYMIZE = "anonymize"  # the default: counted, but without author, text, links or mentions
    DROP = "drop"  # not published at all
    KEEP = "keep"  # stored as sent (only for deployments with the people's consent)


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


def _opts_out(status: Any) -> bool:
    return isinstance(status, dict) and account_opts_out(status.get("account") or {})


def anonymized_status(status: Mapping[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {k: status[k] for k in _KEPT_FIELDS if k in status}
    kept["account"] = {"id": "", "acct": "", "anonymized": True}
    kept["tags"] = [
        {"name": t.get("name")} for t in status.get("tags") or [] if isinstance(t, dict)
    ]
    kept["media_attachments"] = [
        {"type": m.get("type")}
        for m in status.get("media_attachments") or []
        if isinstance(m, dict)
    ]
    kept["content"] = ""
    kept["mentions"] = []
    kept["card"] = None
    kept["fedilake_anonymized"] = True
    return kept


def apply_optout(envelope: Envelope, policy: OptOutPolicy) -> Envelope | None:
    """The envelope to publish for an opted-out author under `policy` (None: publish nothing).

    Statuses, edits and refreshes carry an author; a boost is judged by both its booster
    and the boosted status's author. Other kinds pass unchanged.
    """
    if policy is OptOutPolicy.KEEP or envelope.kind not in (
        EventKind.STATUS,
        EventKind.EDIT,
        EventKind.REFRESH,
    ):
        return envelope
    status = envelope.payload_json
    reblog = status.get("reblog")
    if not _opts_out(status) and not _opts_out(reblog):
        return envelope
    if policy is OptOutPolicy.DROP:
        return None
    changed = anonymized_status(status) if _opts_out(status) else dict(status)
    if isinstance(reblog, dict):
        changed["reblog"] = anonymized_status(reblog) if _opts_out(reblog) else reblog
    text = json.dumps(changed, ensure_ascii=False, separators=(",", ":"))
    anonymous = replace(envelope, payload=text)
    object.__setattr__(anonymous, "_parsed", changed)
    return anonymous
