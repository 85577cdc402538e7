"""What a viewer may see of an inbox's mail: pure decisions, no I/O.

The inbox owner sees everything. Others see an inbox only when it is shared with them, at the inbox's
sharing level: `full` (everything), `subject` (no body), `metadata` (neither subject nor body).
Tenants are separated before any of this: a query never reads another tenant's data.
"""

from __future__ import annotations

from typing import Any, Literal

Level = Literal["full", "subject", "metadata"]
Sharing = Literal["private", "metadata", "subject", "full"]

# Fields that need at least this level. Everything else (addresses, dates, links) is metadata.
_SUBJECT_FIELDS = ("subject", "thread_subject")
_BODY_FIELDS = ("ref", "has_attachments", "body_stored", "snippet")


def visible_level(viewer: str, owner: str, sharing: Sharing, shared_with: list[str]) -> Level | None:
    if viewer == owner:
        return "full"
    if sharing == "private" or viewer not in shared_with:
        return None
    return sharing


def redact(item: dict[str, Any], level: Level) -> dict[str, Any]:
    """A copy of a listed email with the fields the level hides removed (set to None)."""
    out = dict(item)
    if level in ("subject", "metadata"):
        for f in _BODY_FIELDS:
            if f in out:
                out[f] = None
    if level == "metadata":
        for f in _SUBJECT_FIELDS:
            if f in out:
                out[f] = None
    out["visibility"] = level
    return out
