"""Linker settings: environment variables `MAILSYNC_*` (shared) and `MAILSYNC_LINKER_*`."""

from __future__ import annotations

from pydantic import Field

from mailsync.settings import ServiceSettings


class LinkerSettings(ServiceSettings):
    service_name: str = "linker"
    http_port: int = Field(default=8082, ge=0, le=65535)
    linker_strip_plus_addresses: bool = Field(
        default=False,
        description="Match ann+x@d to ann@d (a per-tenant override comes with the linker issue).",
    )
