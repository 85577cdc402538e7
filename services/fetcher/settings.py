"""Fetcher settings: environment variables `MAILSYNC_*` (shared) and `MAILSYNC_FETCHER_*`."""

from __future__ import annotations

from pydantic import Field

from mailsync.settings import ServiceSettings


class FetcherSettings(ServiceSettings):
    service_name: str = "fetcher"
    http_port: int = Field(default=8081, ge=0, le=65535)
