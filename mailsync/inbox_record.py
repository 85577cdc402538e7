"""The inbox registry document (collection `inboxes`, `_id` = `tenant_id:inbox_id`).

The fetcher owns and writes it; the sender and the janitor read it. Secrets inside are only ever
`EncryptedSecret`s (see `credentials.py`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.inbox import InboxStatus

from .credentials import EncryptedSecret

# Registry statuses under which the fetcher keeps an inbox synced; inside them the sync engine's live
# status (`sync_state.live_status`: syncing, idle, connect_failed, throttled) says how it is going.
RUNNING_STATUSES: frozenset[str] = frozenset({"connecting", "syncing", "idle", "connect_failed", "throttled"})

Security = Literal["tls", "starttls", "plain"]


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    security: Security


class PasswordAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["password"] = "password"
    username: str
    password: EncryptedSecret


class OAuth2Auth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["oauth2"] = "oauth2"
    username: str
    token_endpoint: str
    client_id: str
    client_secret: EncryptedSecret | None = None
    refresh_token: EncryptedSecret
    access_token: EncryptedSecret | None = None
    access_token_expires_at: datetime | None = None
    scope: str | None = None


Auth = PasswordAuth | OAuth2Auth


class SyncOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folders: list[str] | None = Field(default=None, description="None: INBOX + Sent (or Gmail's All Mail).")
    backfill_days: int | None = Field(default=90, ge=0, description="None: everything.")


class InboxRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(alias="_id")
    tenant_id: str
    inbox_id: str
    owner_user_id: str
    email: str
    display_name: str | None = None
    provider: str | None = Field(default=None, description="Preset id, e.g. `gmail`; None for custom.")
    imap: ServerSettings
    smtp: ServerSettings
    smtp_allow_plain: bool = Field(default=False, description="Plain SMTP on port 25 only when set.")
    imap_auth: Auth = Field(discriminator="kind")
    smtp_auth: Auth | None = Field(default=None, description="None: use the IMAP credentials.")
    additional_from: list[str] = Field(default_factory=list)
    sharing: Literal["private", "metadata", "subject", "full"] = "private"
    shared_with: list[str] = Field(default_factory=list)
    contact_discovery: Literal["off", "sent_only", "sent_and_received"] = Field(
        default="off", description="Which participants the linker may report as discovered contacts."
    )
    sent_copy: Literal["auto", "always", "never"] = "auto"
    provider_files_sent_copy: bool = Field(
        default=False, description="From the preset (Gmail, O365, iCloud)."
    )
    sync: SyncOptions = Field(default_factory=SyncOptions)
    status: InboxStatus = "connecting"
    revision: int = Field(default=0, ge=0, description="Bumped by each settings change (onboarding).")
    status_reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @staticmethod
    def key(tenant_id: str, inbox_id: str) -> str:
        return f"{tenant_id}:{inbox_id}"

    def secret_owner(self, field: str) -> str:
        """Associated data for a credential of this inbox, e.g. `t1:i1:imap_auth.password`."""
        return f"{self.id}:{field}"
