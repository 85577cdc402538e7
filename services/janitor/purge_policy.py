"""What the purge of a deactivated inbox may delete, and when it must stop. Pure decisions.

The purge races with a reactivation: `resume` makes the fetcher resync the inbox at once, and the
resynced documents reuse the ids of the purged ones (inbox, folder, message key). So the purge
- deletes only documents stored before the deactivation: a document whose `stored_at` is at or after
  the bound is the resync's (or later mail's) and survives. A document without a usable stamp comes
  from a writer that does not stamp its documents; it counts as stored before (the purge's old
  behaviour), so only the stop rule below protects such documents;
- stops once the inbox was reactivated after the deactivation — the fetcher's registry shows a
  resync requested after the bound, or the janitor moved the inbox to a newer generation. What is
  left is the inbox's mail again, and the resync relies on it: it does not store a message whose
  document it finds.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

STORED_AT = "stored_at"  # when the writer stored the document (a datetime it sets on insert and rewrite)

StopReason = str  # "reactivated" (registry) or "new_generation" (janitor)


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def purge_bound(case: Mapping[str, Any], started_at: datetime) -> datetime:
    """The deactivation time recorded in the case; a case without one is bounded by the purge's start."""
    return _aware(case.get("deactivated_at")) or started_at


def stored_before(stored_at: Any, bound: datetime) -> bool:
    """Whether a document stamped `stored_at` may be deleted by a purge bounded at `bound`."""
    at = _aware(stored_at)
    return at is None or at < bound


def stored_before_filter(field: str, bound: datetime) -> dict[str, Any]:
    """The query form of `stored_before`: `$not` also matches a missing, null or non-date stamp."""
    return {field: {"$not": {"$gte": bound}}}


def stop_reason(
    registry: Mapping[str, Any] | None,
    bound: datetime,
    *,
    case_generation: int,
    current_generation: int,
) -> StopReason | None:
    """Why the purge must stop before its next batch, or None to go on.

    `registry` is the fetcher's inbox document (`inboxes`): a `resume` of a deactivated inbox sets
    `resync_requested_at`, and the fetcher's resync starts from that field, so it is the earliest sign.
    A resync requested before the deactivation (a manual resync) does not count.
    """
    requested = _aware((registry or {}).get("resync_requested_at"))
    if requested is not None and requested > bound:
        return "reactivated"
    if current_generation > case_generation:
        return "new_generation"
    return None
