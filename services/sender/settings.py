"""Sender settings: environment variables `MAILSYNC_*` (shared) and `MAILSYNC_SENDER_*`."""

from __future__ import annotations

from pydantic import Field

from mailsync.settings import ServiceSettings


class SenderSettings(ServiceSettings):
    service_name: str = "sender"
    http_port: int = Field(default=8083, ge=0, le=65535)
