"""What a folder's IDLE wake tells its next pass: nothing new, new mail only, or go over everything.

A full pass (EXAMINE, UID SEARCH, CONDSTORE flag fetch, expunge checks) costs several round trips while
the connection is out of IDLE, and mail that arrives meanwhile waits for it. A wake that reported only
`* N EXISTS` means messages were added and nothing else changed (an expunge, a flag change or VANISHED
always comes with its own response), so the pass can fetch the new UIDs straight away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from services.fetcher.imap.protocol import Untagged, Value

WakePlan = Literal["nothing", "new_mail", "full"]


def plan_wake(wake: Sequence[Untagged] | None, *, known_exists: int, limit: int) -> WakePlan:
    """`wake`: what ended IDLE (None: no IDLE since the last pass; empty: IDLE's time ran out).

    `known_exists` is the folder's message count as of the last pass; `limit` the most new messages
    worth one FETCH (more: the full pass fetches them in chunks).
    """
    if not wake or any(u.kind != "EXISTS" or u.number is None for u in wake):
        return "full"
    exists = max(u.number for u in wake if u.number is not None)
    if exists <= known_exists:
        return "nothing"  # told mid-command of messages the last pass already fetched
    if exists - known_exists > limit:
        return "full"
    return "new_mail"


def wake_exists(wake: Sequence[Untagged]) -> int:
    return max((u.number for u in wake if u.number is not None), default=0)


@dataclass(frozen=True)
class NewMail:
    """A `UID FETCH uidnext:*` answer sorted out."""

    messages: list[dict[str, Value]]  # above the cursor, with their headers, in UID order
    stray: bool  # something else came with it (a flag change told mid-command): run a full pass


def sort_new_mail(fetched: Sequence[dict[str, Value]], uidnext: int) -> NewMail:
    """`uidnext:*` also returns the folder's last message when nothing is above `uidnext` (RFC 9051
    `*` is the highest UID in use); that one is skipped. A FETCH without the header section was not
    an answer to ours but an unsolicited flag change, which only the full pass handles."""
    messages: dict[int, dict[str, Value]] = {}
    stray = False
    for items in fetched:
        uid = items.get("UID")
        if not isinstance(uid, int):
            continue
        if "BODY[HEADER]" not in items:
            stray = True
        elif uid >= uidnext:
            messages[uid] = items
    return NewMail([messages[u] for u in sorted(messages)], stray)
