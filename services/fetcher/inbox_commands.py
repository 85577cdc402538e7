"""What an inbox command does to an inbox's status: a pure decision, no I/O.

(current status, action) → (new status, event to emit or None, refusal reason or None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["pause", "resume", "resync", "remove"]
Emit = Literal["paused", "reactivated", "removed"]


@dataclass(frozen=True)
class Decision:
    status: str
    emit: Emit | None = None
    resync: bool = False
    refused: str | None = None


def decide(status: str, action: Action) -> Decision:
    if status == "removed":
        return Decision(status, refused="inbox was removed; connect it again to use it")
    if action == "pause":
        return Decision("paused", None if status == "paused" else "paused")
    if action == "resume":
        if status in ("paused", "deactivated"):
            return Decision("connecting", "reactivated", resync=status == "deactivated")
        return Decision(status)  # already running: nothing to do, idempotent
    if action == "resync":
        if status in ("paused", "deactivated"):
            return Decision(status, refused=f"inbox is {status}; resume it first")
        return Decision(status, resync=True)
    return Decision("removed", "removed")
