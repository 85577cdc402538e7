"""Fetcher service wiring: onboarding (admin API), inbox commands → registry status + lifecycle events,
and the sync manager that runs IMAP sync for the inboxes this replica holds a lease on."""

from __future__ import annotations

from mailsync import metrics
from mailsync.service import Runtime

from .console.wiring import install as install_console
from .onboarding.wiring import install as install_onboarding
from .registry import InboxRegistry
from .settings import FetcherSettings
from .sync.inbox import SyncConfig
from .sync.manager import SyncManager


def setup(rt: Runtime) -> None:
    registry = InboxRegistry(rt.db, rt.publisher, rt.source)
    rt.subscribe("mailsync.inbox.commands.v1", registry.apply)
    # The janitor's `deactivated` (issue #7) pauses sync; other inbox events are ignored here, so the
    # batch consumer without per-event dedupe lookups (the status update is idempotent).
    rt.subscribe_batch("mailsync.inbox.v1", registry.apply_all, dedupe=False)
    # Onboarding (issue #3): admin API under /admin/*, credential keys checked at start-up.
    onboarding = install_onboarding(rt)
    # Operator console (issue #10): pages under /console, using onboarding in-process.
    install_console(rt, onboarding)
    # /metrics: inboxes by status, read from the registry at each scrape.
    rt.metrics_collectors.append(lambda: metrics.count_inboxes(rt.db))
    # IMAP sync (issue #4): a startup hook starts syncing the registered inboxes this replica leases.
    settings = rt.settings
    if isinstance(settings, FetcherSettings) and settings.fetcher_sync_enabled:
        manager = SyncManager(
            rt.db,
            rt.publisher,
            SyncConfig(
                fetch_chunk=settings.fetcher_sync_fetch_chunk,
                idle_restart_seconds=settings.fetcher_sync_idle_restart_seconds,
                poll_interval_seconds=settings.fetcher_sync_poll_interval_seconds,
                reconcile_interval_seconds=settings.fetcher_sync_reconcile_interval_seconds,
                connect_timeout_seconds=settings.fetcher_connect_timeout_seconds,
                command_timeout_seconds=settings.fetcher_sync_command_timeout_seconds,
                backoff_base_seconds=settings.fetcher_sync_backoff_base_seconds,
                backoff_cap_seconds=settings.fetcher_sync_backoff_cap_seconds,
                auth_failure_limit=settings.fetcher_sync_auth_failure_limit,
                tls_cafile=settings.fetcher_tls_ca_file,
                bodies=settings.fetcher_sync_bodies,
                body_max_bytes=settings.fetcher_sync_body_max_bytes,
                body_pass_seconds=settings.fetcher_sync_body_pass_seconds,
                burst_poll_seconds=settings.fetcher_sync_burst_poll_seconds,
                burst_poll_every_seconds=settings.fetcher_sync_burst_poll_every_seconds,
                daily_download_mb=settings.fetcher_sync_daily_download_mb,
                connect_concurrency=settings.fetcher_sync_connect_concurrency,
                confirmation_email=settings.fetcher_sync_confirmation_email,
                confirmation_subject=settings.fetcher_sync_confirmation_subject,
                imap_connections_per_account=settings.imap_connections_per_account,
            ),
            rt.source,
            scan_interval=settings.fetcher_sync_scan_interval_seconds,
            lease_seconds=settings.fetcher_sync_lease_seconds,
        )
        rt.startup_hooks.append(manager.start)
        rt.shutdown_hooks.append(manager.stop)
