"""What the admin API and CLI accept: an inbox to add, a change to one. Secrets are `SecretStr`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from contracts.common import EmailStr
from mailsync.inbox_record import ServerSettings, SyncOptions


class OAuth2Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token_endpoint: str = Field(pattern=r"^https?://", max_length=2000)
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: SecretStr | None = None
    refresh_token: SecretStr
    access_token: SecretStr | None = None
    access_token_expires_at: datetime | None = None
    scope: str | None = None


class SettingsInput(BaseModel):
    """Connection settings: a preset or explicit servers, and the credentials."""

    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    provider: str | None = Field(default=None, description="Preset id (see GET /admin/presets).")
    imap: ServerSettings | None = Field(default=None, description="Default: the preset's or discovered.")
    smtp: ServerSettings | None = None
    smtp_allow_plain: bool = False
    username: str | None = Field(default=None, description="Default: the email address.")
    password: SecretStr | None = Field(default=None, description="Password or app password.")
    oauth2: OAuth2Input | None = None
    smtp_same_credentials: bool = Field(default=True, description="Use the IMAP credentials for SMTP.")
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None


class InboxInput(SettingsInput):
    tenant_id: str | None = None
    inbox_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    owner_user_id: str = Field(min_length=1)
    display_name: str | None = None
    additional_from: list[EmailStr] = Field(default_factory=list)
    sharing: Literal["private", "metadata", "subject", "full"] = "private"
    shared_with: list[str] = Field(default_factory=list)
    sent_copy: Literal["auto", "always", "never"] = "auto"
    sync: SyncOptions = Field(default_factory=SyncOptions)
    force: bool = Field(default=False, description="Save even when the connection test fails.")
    request_id: str | None = None


class InboxUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    display_name: str | None = None
    imap: ServerSettings | None = None
    smtp: ServerSettings | None = None
    smtp_allow_plain: bool | None = None
    username: str | None = None
    password: SecretStr | None = None
    oauth2: OAuth2Input | None = None
    smtp_same_credentials: bool | None = None
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    additional_from: list[EmailStr] | None = None
    sharing: Literal["private", "metadata", "subject", "full"] | None = None
    shared_with: list[str] | None = None
    sent_copy: Literal["auto", "always", "never"] | None = None
    sync: SyncOptions | None = None
    force: bool = False
    request_id: str | None = None

    def touches_connection(self) -> bool:
        fields = ("imap", "smtp", "username", "password", "oauth2", "smtp_same_credentials", "smtp_username")
        return any(getattr(self, f) is not None for f in (*fields, "smtp_password", "smtp_allow_plain"))


class ActionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str | None = None
    by_user_id: str | None = None
    reason: str | None = None
