"""Inbox lifecycle and status events (topic `mailsync.inbox.v1`) and operator commands."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from .common import ErrorInfo
from .envelope import Envelope, Payload

InboxStatus = Literal[
    "connecting",
    "syncing",
    "idle",
    "auth_failed",
    "connect_failed",
    "throttled",
    "paused",
    "deactivated",
    "removed",
]

DeactivationReason = Literal["unopened", "user_inactive", "admin", "removed"]


class InboxConnectedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("connection_id",)
    connection_id: str = Field(description="Stable id of this connect attempt (e.g. settings revision).")
    email: str
    owner_user_id: str
    provider: str | None = Field(default=None, description="Preset id (gmail, office365, ...) or None.")
    capabilities: list[str] = Field(default_factory=list)


class InboxConnected(Envelope[InboxConnectedData]):
    event_type: ClassVar[str] = "mailsync.inbox.connected"
    type: Literal["mailsync.inbox.connected"] = "mailsync.inbox.connected"


class InboxSyncingData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("sync_run_id",)
    sync_run_id: str
    folders: list[str] = Field(default_factory=list)
    initial: bool = Field(description="True while the initial (backfill) sync has not completed.")


class InboxSyncing(Envelope[InboxSyncingData]):
    event_type: ClassVar[str] = "mailsync.inbox.syncing"
    type: Literal["mailsync.inbox.syncing"] = "mailsync.inbox.syncing"


class SyncProgressData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("sync_run_id", "folder", "done")
    sync_run_id: str
    folder: str
    done: int = Field(ge=0)
    total: int = Field(ge=0)


class SyncProgress(Envelope[SyncProgressData]):
    event_type: ClassVar[str] = "mailsync.inbox.sync_progress"
    type: Literal["mailsync.inbox.sync_progress"] = "mailsync.inbox.sync_progress"


class InitialSyncCompletedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("sync_run_id",)
    sync_run_id: str
    messages: int = Field(ge=0)
    folders: list[str] = Field(default_factory=list)
    backfill_days: int | None = Field(default=None, description="None means everything was synced.")
    duration_seconds: float = Field(ge=0)


class InitialSyncCompleted(Envelope[InitialSyncCompletedData]):
    event_type: ClassVar[str] = "mailsync.inbox.initial_sync_completed"
    type: Literal["mailsync.inbox.initial_sync_completed"] = "mailsync.inbox.initial_sync_completed"


class InboxFailureData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("attempt_id",)
    attempt_id: str = Field(description="Id of the failed attempt; a retry is a new attempt.")
    protocol: Literal["imap", "smtp", "oauth"]
    error: ErrorInfo
    retry_at: datetime | None = Field(default=None, description="When mailsync tries again, if it does.")


class InboxAuthFailed(Envelope[InboxFailureData]):
    event_type: ClassVar[str] = "mailsync.inbox.auth_failed"
    type: Literal["mailsync.inbox.auth_failed"] = "mailsync.inbox.auth_failed"


class InboxConnectFailed(Envelope[InboxFailureData]):
    event_type: ClassVar[str] = "mailsync.inbox.connect_failed"
    type: Literal["mailsync.inbox.connect_failed"] = "mailsync.inbox.connect_failed"


class InboxThrottledData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("attempt_id",)
    attempt_id: str
    limit: str = Field(description="Which limit, e.g. `gmail.download_per_day`, `connections`.")
    resume_at: datetime
    error: ErrorInfo | None = None


class InboxThrottled(Envelope[InboxThrottledData]):
    event_type: ClassVar[str] = "mailsync.inbox.throttled"
    type: Literal["mailsync.inbox.throttled"] = "mailsync.inbox.throttled"


class InboxPausedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("request_id",)
    request_id: str
    reason: str
    by_user_id: str | None = None


class InboxPaused(Envelope[InboxPausedData]):
    event_type: ClassVar[str] = "mailsync.inbox.paused"
    type: Literal["mailsync.inbox.paused"] = "mailsync.inbox.paused"


class DeactivationWarningData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("reason", "deactivate_at")
    reason: DeactivationReason
    owner_user_id: str
    deactivate_at: datetime
    last_opened_at: datetime | None = None
    last_active_at: datetime | None = None


class InboxDeactivationWarning(Envelope[DeactivationWarningData]):
    event_type: ClassVar[str] = "mailsync.inbox.deactivation_warning"
    type: Literal["mailsync.inbox.deactivation_warning"] = "mailsync.inbox.deactivation_warning"


class DeactivationWarningCancelledData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("reason", "deactivate_at")
    reason: DeactivationReason
    owner_user_id: str
    deactivate_at: datetime = Field(description="The date of the warning this cancels.")
    cause: str = Field(default="activity", description="Why: `activity`, `reactivated`, `removed`.")


class InboxDeactivationWarningCancelled(Envelope[DeactivationWarningCancelledData]):
    """A deactivation warning no longer holds (the mail was opened or the user was active)."""

    event_type: ClassVar[str] = "mailsync.inbox.deactivation_warning_cancelled"
    type: Literal["mailsync.inbox.deactivation_warning_cancelled"] = (
        "mailsync.inbox.deactivation_warning_cancelled"
    )


class InboxDeactivatedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("deactivation_id",)
    deactivation_id: str
    reason: DeactivationReason
    owner_user_id: str
    disable_salesinbox: bool = Field(
        default=True, description="The CRM should disable SalesInbox for the owner."
    )


class InboxDeactivated(Envelope[InboxDeactivatedData]):
    event_type: ClassVar[str] = "mailsync.inbox.deactivated"
    type: Literal["mailsync.inbox.deactivated"] = "mailsync.inbox.deactivated"


class InboxReactivatedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("reactivation_id",)
    reactivation_id: str
    owner_user_id: str
    by_user_id: str | None = None


class InboxReactivated(Envelope[InboxReactivatedData]):
    event_type: ClassVar[str] = "mailsync.inbox.reactivated"
    type: Literal["mailsync.inbox.reactivated"] = "mailsync.inbox.reactivated"


class InboxRemovedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("inbox_id",)
    inbox_id: str
    owner_user_id: str
    by_user_id: str | None = None


class InboxRemoved(Envelope[InboxRemovedData]):
    event_type: ClassVar[str] = "mailsync.inbox.removed"
    type: Literal["mailsync.inbox.removed"] = "mailsync.inbox.removed"


class InboxCommandData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("request_id",)
    request_id: str = Field(description="Idempotency key of the command.")
    action: Literal["pause", "resume", "resync", "remove"]
    by_user_id: str | None = None
    reason: str | None = None


class InboxCommandRequested(Envelope[InboxCommandData]):
    """An operator or the CRM asks the fetcher to pause, resume, resync or remove an inbox."""

    kind: ClassVar[Literal["event", "command"]] = "command"
    event_type: ClassVar[str] = "mailsync.inbox.command_requested"
    type: Literal["mailsync.inbox.command_requested"] = "mailsync.inbox.command_requested"
