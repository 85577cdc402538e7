"""Janitor service wiring: activity and inbox events in → clocks; a periodic sweep applies the policy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import timedelta

from mailsync import metrics
from mailsync.service import Runtime

from .activity import ActivityClock
from .cleanup_policy import Thresholds
from .clock import Clock, SystemClock
from .lease import Lease
from .lifecycle import InboxLifecycle
from .purge import Purger
from .schedule import Schedule
from .settings import JanitorSettings
from .sweep import Sweeper


def thresholds(settings: JanitorSettings) -> Thresholds:
    return Thresholds.days(
        settings.janitor_unopened_days, settings.janitor_inactive_days, settings.janitor_warning_days
    )


def make_sweeper(
    rt: Runtime, settings: JanitorSettings, clock: Clock, purger: Purger, schedule: Schedule
) -> Sweeper:
    owner = settings.janitor_instance_id or f"{socket.gethostname()}:{os.getpid()}"
    lease = Lease(rt.db, "sweep", owner, timedelta(seconds=settings.janitor_lease_seconds))
    return Sweeper(
        rt.db,
        rt.publisher,
        clock,
        thresholds=thresholds(settings),
        lease=lease,
        purger=purger,
        source=rt.source,
        schedule=schedule if settings.janitor_incremental else None,
        batch_size=settings.janitor_batch_size,
    )


def setup(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, JanitorSettings)
    schedule = Schedule(rt.db, thresholds(settings))
    clock = ActivityClock(rt.db, schedule if settings.janitor_incremental else None)
    purger = Purger(
        rt.db,
        settings.janitor_purge_collections,
        settings.janitor_purge_batch_size,
        stored_at_field=settings.janitor_purge_stored_at_field,
    )
    lifecycle = InboxLifecycle(rt.db, clock, purger)
    if settings.janitor_consume_enabled:
        rt.subscribe("crm.activity.v1", clock.apply)
        rt.subscribe("mailsync.inbox.v1", lifecycle.apply)
    if not settings.janitor_sweep_enabled:
        return
    sweeper = make_sweeper(rt, settings, SystemClock(), purger, schedule)
    tasks: list[asyncio.Task[None]] = []

    async def loop() -> None:
        await sweeper.ensure_indexes()
        while True:
            try:
                stats = await sweeper.sweep()
                metrics.observe_sweep(stats)
                if stats.actions or stats.purged_documents:
                    rt.log.info(
                        "sweep acted",
                        extra={
                            "warned": stats.warned,
                            "cancelled": stats.cancelled,
                            "deactivated": stats.deactivated,
                            "purged_documents": stats.purged_documents,
                        },
                    )
            except Exception:
                metrics.observe_sweep(None)
                rt.log.exception("sweep failed; the next one resumes it")
            await asyncio.sleep(settings.janitor_sweep_interval_seconds)

    def start() -> None:
        tasks.append(asyncio.create_task(loop(), name="janitor-sweep"))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    rt.startup_hooks.append(start)
    rt.shutdown_hooks.append(stop)
