"""Whether a send command may be accepted: a pure decision over the command and the inbox record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts.common import ErrorInfo
from contracts.sending import SendRequestedData

SENDABLE_STATUSES = {"connecting", "syncing", "idle", "throttled"}


@dataclass(frozen=True)
class Refusal:
    error: ErrorInfo


def _allowed_from(inbox: dict[str, Any]) -> set[str]:
    addresses = [inbox.get("email", ""), *inbox.get("additional_from", [])]
    return {a.strip().casefold() for a in addresses if a}


def admit(cmd: SendRequestedData, inbox: dict[str, Any] | None, inbox_id: str) -> Refusal | None:
    if inbox is None:
        return Refusal(
            ErrorInfo(code="inbox.unknown", message=f"no inbox with id {inbox_id!r}", field="inbox_id")
        )
    status = inbox.get("status", "connecting")
    if status not in SENDABLE_STATUSES:
        return Refusal(
            ErrorInfo(
                code=f"inbox.{status}", message=f"inbox is {status}", hint="reconnect or resume the inbox"
            )
        )
    if cmd.from_.email.strip().casefold() not in _allowed_from(inbox):
        return Refusal(
            ErrorInfo(
                code="send.from_not_allowed",
                message=f"{cmd.from_.email!r} is neither the inbox address nor one of its From addresses",
                field="from",
                hint="add it to the inbox's additional From addresses",
            )
        )
    return None
