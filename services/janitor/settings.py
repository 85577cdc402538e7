"""Janitor settings: environment variables `MAILSYNC_*` (shared) and `MAILSYNC_JANITOR_*`."""

from __future__ import annotations

from pydantic import Field

from mailsync.settings import ServiceSettings

DEFAULT_PURGE = ["messages", "message_bodies", "attachments", "link_messages", "link_threads"]


class JanitorSettings(ServiceSettings):
    service_name: str = "janitor"
    http_port: int = Field(default=8084, ge=0, le=65535)
    janitor_unopened_days: int = Field(default=30, ge=1, description="Deactivate when unopened this long.")
    janitor_inactive_days: int = Field(default=150, ge=1, description="Deactivate when the user is idle.")
    janitor_warning_days: int = Field(default=7, ge=0, description="Warn this many days before acting.")
    janitor_sweep_interval_seconds: float = Field(default=60.0, gt=0, description="Pause between sweeps.")
    janitor_sweep_enabled: bool = Field(default=True, description="False: only keep the activity clocks.")
    janitor_consume_enabled: bool = Field(
        default=True, description="False: a sweep-only replica that consumes no events."
    )
    janitor_lease_seconds: float = Field(
        default=120.0, gt=0, description="Sweep lease; renewed every batch, must outlast one batch."
    )
    janitor_batch_size: int = Field(default=1000, ge=1, description="Inboxes read per batch.")
    janitor_purge_batch_size: int = Field(default=500, ge=1, description="Documents deleted per batch.")
    janitor_purge_collections: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PURGE),
        description="Collections holding an inbox's stored data, keyed by tenant_id + inbox_id.",
    )
    janitor_purge_stored_at_field: str = Field(
        default="stored_at",
        description=(
            "Field (a datetime) in which the data's writers record when they stored a document: a purge"
            " deletes only documents stored before the deactivation. Documents without it count as older."
        ),
    )
    janitor_incremental: bool = Field(
        default=True,
        description=(
            "Sweep only what the hourly schedule lists as due (O(due) reads by `_id`); the first sweep, a"
            " change of thresholds or a long gap makes one full pass. On FerretDB v1 this needs the"
            " _id-index patch deploy/local/ferretdb.sh builds in (unpatched, each `_id` lookup scans)."
        ),
    )
    janitor_instance_id: str | None = Field(default=None, description="Lease owner; default host:pid.")
