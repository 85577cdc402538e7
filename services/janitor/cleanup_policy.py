"""The cleanup policy: whether an inbox is left alone, warned, deactivated or its warning cancelled.

Pure: facts and the current case in, a decision out; no I/O, no clock of its own.

Rules (independent; the earliest one due wins, ties go to `unopened`):
- `unopened`: the synced mail has not been opened for `unopened` (an inbox never opened counts from
  its baseline: when sync began, or its last reactivation).
- `user_inactive`: the owner has not been active for `inactive` (counted at the earliest from the
  baseline too, so a freshly connected or reactivated inbox is never acted on at once).

A warning goes out `warning` ahead of the due date; the inbox is deactivated at the warning's date
at the earliest, so the user always gets the full notice even when the janitor saw the inbox late.
Activity that moves the warned rule out of its warning window cancels the warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Reason = Literal["unopened", "user_inactive"]
CaseStatus = Literal["warned", "deactivating", "deactivated"]
Action = Literal["none", "warn", "cancel", "deactivate"]


@dataclass(frozen=True)
class Thresholds:
    unopened: timedelta
    inactive: timedelta
    warning: timedelta

    @classmethod
    def days(cls, unopened: int, inactive: int, warning: int) -> Thresholds:
        return cls(timedelta(days=unopened), timedelta(days=inactive), timedelta(days=warning))


@dataclass(frozen=True)
class InboxFacts:
    baseline_at: datetime
    last_opened_at: datetime | None = None
    user_active_at: datetime | None = None


@dataclass(frozen=True)
class Case:
    """What the janitor already did about the inbox in its current generation."""

    status: CaseStatus
    reason: Reason
    deactivate_at: datetime


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: Reason | None = None
    deactivate_at: datetime | None = None


NOTHING = Decision("none")


def _latest(*times: datetime | None) -> datetime:
    return max(t for t in times if t is not None)


def due_dates(facts: InboxFacts, th: Thresholds) -> dict[Reason, datetime]:
    """When each rule fires if nothing else happens."""
    return {
        "unopened": _latest(facts.baseline_at, facts.last_opened_at) + th.unopened,
        "user_inactive": _latest(facts.baseline_at, facts.user_active_at) + th.inactive,
    }


def _first_due(dues: dict[Reason, datetime]) -> tuple[Reason, datetime]:
    reason: Reason = "unopened" if dues["unopened"] <= dues["user_inactive"] else "user_inactive"
    return reason, dues[reason]


def decide(facts: InboxFacts, case: Case | None, now: datetime, th: Thresholds) -> Decision:
    dues = due_dates(facts, th)
    if case is not None and case.status != "warned":
        return NOTHING  # deactivating/deactivated: only a reactivation changes that
    if case is not None:
        due = dues[case.reason]
        if now < due - th.warning:
            return Decision("cancel", case.reason, case.deactivate_at)
        if now >= case.deactivate_at and now >= due:
            return Decision("deactivate", case.reason, case.deactivate_at)
        return NOTHING
    reason, due = _first_due(dues)
    if now < due - th.warning:
        return NOTHING
    if th.warning <= timedelta(0):
        return Decision("deactivate", reason, due) if now >= due else NOTHING
    return Decision("warn", reason, max(due, now + th.warning))


def next_due(facts: InboxFacts, th: Thresholds) -> datetime:
    """The earliest time the policy could warn (or act) on this inbox without new events."""
    return _first_due(due_dates(facts, th))[1] - th.warning
