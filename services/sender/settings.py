"""Sender settings: environment variables `MAILSYNC_*` (shared) and `MAILSYNC_SENDER_*`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mailsync.settings import ServiceSettings


class SenderSettings(ServiceSettings):
    service_name: str = "sender"
    http_port: int = Field(default=8083, ge=0, le=65535)

    # Delivery loop
    sender_concurrency: int = Field(
        default=64,
        ge=1,
        le=256,
        description="Sends in flight per process (cheap tasks; each inbox's SMTP/IMAP limits still apply).",
    )
    sender_intake_batch_size: int = Field(
        default=200, ge=1, le=5000, description="Send commands (and synced messages) taken per poll."
    )
    sender_reply_index_enabled: bool = Field(
        default=True,
        description="Index synced messages (mailsync.messages.v1) for replies' In-Reply-To/References; "
        "off only where another sender replica of the same database does it.",
    )
    sender_poll_interval_seconds: float = Field(default=0.5, gt=0, description="Idle poll of the outbox.")
    sender_lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A claimed request not finished within this time is taken over (crash recovery); "
        "must exceed the longest SMTP transaction.",
    )
    # Retries (connection errors, timeouts, 4xx): jittered exponential backoff, bounded attempts.
    sender_max_attempts: int = Field(default=6, ge=1, le=50)
    sender_backoff_base_seconds: float = Field(default=5.0, gt=0)
    sender_backoff_max_seconds: float = Field(default=900.0, gt=0)
    sender_unconfirmed_policy: Literal["resend", "fail"] = Field(
        default="resend",
        description="A send interrupted after SMTP started whose Message-ID is not in the Sent folder: "
        "send again (duplicates possible for servers that file no copy), within sender_max_attempts (past "
        "it: send.attempts_exhausted and the dead-letter topic), or fail with send.outcome_unknown.",
    )
    # SMTP and IMAP
    sender_smtp_timeout_seconds: float = Field(default=60.0, gt=0)
    sender_imap_timeout_seconds: float = Field(default=60.0, gt=0)
    sender_smtp_connections_per_inbox: int = Field(default=4, ge=1, le=32)
    sender_imap_sessions_per_inbox: int = Field(
        default=2,
        ge=1,
        le=10,
        description="For the Sent copy; never more than the sender's share of the account's IMAP "
        "connections (mailsync/connection_budget.py), the fetcher holding the rest.",
    )
    sender_smtp_idle_seconds: float = Field(
        default=15.0, ge=0, description="Reuse an SMTP session this long."
    )
    sender_tls_verify: bool = Field(default=True, description="Verify server certificates (keep on).")
    sender_tls_cafile: str | None = Field(
        default=None, description="Extra CA bundle, e.g. a lab certificate."
    )
    sender_ehlo_hostname: str | None = Field(
        default=None, description="EHLO name; default: this host's FQDN."
    )
    # Content
    sender_max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    sender_attachment_fetch_timeout_seconds: float = Field(default=30.0, gt=0)
    # Limits (None: the provider preset's, or unlimited for custom servers)
    sender_daily_limit: int | None = Field(default=None, ge=1)
    sender_per_minute_limit: int | None = Field(default=None, ge=1)
    sender_upload_budget_bytes_per_day: int | None = Field(default=None, ge=1)
    # Sent copy
    sender_copy_max_attempts: int = Field(default=8, ge=1, le=100)
    # Fault injection for crash tests only: sleep at these points so a test can SIGKILL the process.
    sender_fault_pause_after_smtp_seconds: float = Field(default=0.0, ge=0)
    sender_fault_pause_before_append_seconds: float = Field(default=0.0, ge=0)
