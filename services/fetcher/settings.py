"""Fetcher settings: environment variables `MAILSYNC_*` (shared) and `MAILSYNC_FETCHER_*`."""

from __future__ import annotations

from pydantic import Field, SecretStr

from mailsync.settings import ServiceSettings


class FetcherSettings(ServiceSettings):
    service_name: str = "fetcher"
    http_port: int = Field(default=8081, ge=0, le=65535)

    # Onboarding (issue #3): user-supplied hosts are untrusted, every network step is bounded.
    fetcher_allowed_networks: list[str] = Field(
        default_factory=list,
        description="Networks/IPs allowed despite being loopback/private/link-local, e.g. `127.0.0.1`.",
    )
    fetcher_connect_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    fetcher_read_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    fetcher_greeting_timeout_seconds: float = Field(default=8.0, gt=0, le=120)
    fetcher_discovery_step_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    fetcher_dns_nameservers: list[str] = Field(default_factory=list, description="Empty: the system's.")
    fetcher_dns_port: int = Field(default=53, ge=1, le=65535)
    fetcher_tls_ca_file: str | None = Field(default=None, description="Extra CA bundle for mail servers.")
    fetcher_autoconfig_schemes: list[str] = Field(default_factory=lambda: ["https", "http"])
    fetcher_autoconfig_port: int | None = Field(default=None, description="Tests only: autoconfig port.")
    fetcher_smtp_allow_plain: bool = Field(default=False, description="Allow plain SMTP on port 25.")

    # Sync engine (issue #4). IMAP TLS trusts the system CAs plus `fetcher_tls_ca_file`.
    fetcher_sync_enabled: bool = Field(
        default=True, description="Sync registered inboxes (off: registry only)."
    )
    fetcher_sync_fetch_chunk: int = Field(default=500, ge=1, le=5000, description="UIDs per FETCH command.")
    fetcher_sync_idle_restart_seconds: float = Field(
        default=300.0, gt=0, le=1740, description="IDLE is restarted this often (RFC 9051: < 29 min)."
    )
    fetcher_sync_poll_interval_seconds: float = Field(
        default=300.0, gt=0, description="Folders without IDLE; never below the provider floor (Gmail 600)."
    )
    fetcher_sync_reconcile_interval_seconds: float = Field(default=3600.0, gt=0)
    fetcher_sync_command_timeout_seconds: float = Field(default=120.0, gt=0)
    fetcher_sync_backoff_base_seconds: float = Field(default=1.0, gt=0)
    fetcher_sync_backoff_cap_seconds: float = Field(default=600.0, gt=0, le=600)
    fetcher_sync_auth_failure_limit: int = Field(default=5, ge=1)
    fetcher_sync_confirmation_email: bool = Field(
        default=False,
        description="When an inbox's initial sync completes, email the inbox itself a confirmation "
        "(through the sender; once per sync run).",
    )
    fetcher_sync_confirmation_subject: str = Field(default="Your mailbox is synchronized", max_length=200)
    fetcher_sync_connect_concurrency: int = Field(
        default=32, ge=1, description="IMAP connection set-ups (TCP, TLS, login) in progress at once."
    )
    fetcher_sync_scan_interval_seconds: float = Field(default=5.0, gt=0)
    fetcher_sync_lease_seconds: float = Field(default=20.0, gt=0)
    fetcher_sync_daily_download_mb: int | None = Field(
        default=None, ge=0, description="Per-inbox daily download budget; None: Gmail 2,500 MB, others none."
    )
    fetcher_sync_bodies: bool = Field(default=True, description="Fetch and store bodies after headers.")
    fetcher_sync_body_max_bytes: int = Field(
        default=25 * 1024 * 1024, ge=0, description="Larger messages are flagged `too_large`, not fetched."
    )
    fetcher_sync_burst_poll_seconds: float = Field(
        default=2.0,
        ge=0,
        description="After new mail, poll with NOOP instead of IDLE for this long (0: always IDLE): IDLE "
        "hears of the next message only after the server's notification delay (Dovecot: up to ~0.5 s).",
    )
    fetcher_sync_burst_poll_every_seconds: float = Field(
        default=0.05, gt=0, description="NOOP interval while polling after new mail."
    )
    fetcher_sync_body_pass_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long one pass of the body backlog runs before the folder is looked at again "
        "(new mail seen on the connection ends it sooner).",
    )

    # Operator console (issue #10): pages under /console on this HTTP port.
    fetcher_console_enabled: bool = Field(default=True, description="Serve the operator console at /console.")
    fetcher_console_auth: bool = Field(
        default=True, description="Require a console user (HTTP Basic or Bearer); off only in the local demo."
    )
    fetcher_console_users: SecretStr | None = Field(
        default=None, description="Console users, `name:tenant:token` separated by commas or newlines."
    )
    fetcher_console_users_file: str | None = Field(
        default=None, description="A mounted secret file with the console users (same format)."
    )
    fetcher_console_local_tenant: str | None = Field(
        default=None, description="Tenant shown when auth is off; None: `tenant_default`."
    )
    fetcher_console_csrf_secret: SecretStr | None = Field(
        default=None, description="Key for the forms' CSRF tokens; None: random per process (one replica)."
    )
    fetcher_console_events: bool = Field(
        default=True, description="Follow the inbox, message, link and send topics for the console's views."
    )
