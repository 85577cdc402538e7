"""Janitor settings: environment variables `MAILSYNC_*` (shared) and `MAILSYNC_JANITOR_*`."""

from __future__ import annotations

from pydantic import Field

from mailsync.settings import ServiceSettings


class JanitorSettings(ServiceSettings):
    service_name: str = "janitor"
    http_port: int = Field(default=8084, ge=0, le=65535)
    janitor_unopened_days: int = Field(default=30, ge=1, description="Deactivate when unopened this long.")
    janitor_inactive_days: int = Field(default=150, ge=1, description="Deactivate when the user is idle.")
    janitor_warning_days: int = Field(default=7, ge=0, description="Warn this many days before acting.")
