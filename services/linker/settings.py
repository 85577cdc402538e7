"""Linker settings: environment variables `MAILSYNC_*` (shared) and `MAILSYNC_LINKER_*`."""

from __future__ import annotations

from pydantic import Field

from mailsync.settings import ServiceSettings


class LinkerSettings(ServiceSettings):
    service_name: str = "linker"
    http_port: int = Field(default=8082, ge=0, le=65535)
    linker_strip_plus_addresses: bool = Field(
        default=False,
        description="Index CRM addresses without their +tag (all tenants). Prefer the per-tenant setting.",
    )
    linker_plus_addressing_tenants: str = Field(
        default="",
        description="Comma-separated tenant ids where a message from ann+x@d also matches a record with "
        "ann@d (decided when matching, so changing it needs no reindex).",
    )

    linker_batch: bool = Field(
        default=True,
        description="Consume messages and send events in batches (false: one record at a time, the old "
        "path, kept as the benchmark's baseline).",
    )
    linker_batch_max_records: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Messages and send events are linked in batches of up to this many records per poll: "
        "a few database queries per batch instead of several per message.",
    )
    linker_batch_timeout_ms: int = Field(
        default=100, ge=1, description="How long a poll waits for records when none are ready."
    )

    def plus_addressing_tenants(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.linker_plus_addressing_tenants.split(",") if t.strip())
