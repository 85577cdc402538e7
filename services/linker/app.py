"""Linker service wiring: CRM records → directory (and relinking); messages and sends → links, reply
signals and discovered contacts; the query API over HTTP."""

from __future__ import annotations

from typing import Any

from contracts import Envelope
from mailsync import tracing
from mailsync.service import Runtime

from .directory import Directory
from .linking import Linker
from .query_api import linked_emails_app, openapi_app
from .settings import LinkerSettings
from .store import MongoLinkStore


def setup(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, LinkerSettings)
    directory = Directory(rt.db, strip_plus=settings.linker_strip_plus_addresses)
    store = MongoLinkStore(rt.db)
    plus_tenants = settings.plus_addressing_tenants()
    linker = Linker(
        store,
        rt.publisher.publish_all,
        source=rt.source,
        plus_addressing=lambda tenant: tenant in plus_tenants,
        trace=lambda event: tracing.event_span(rt.tracer, event, "link message"),
        publish_grouped=rt.publisher.publish_grouped,
    )
    rt.startup_hooks.append(directory.ensure_indexes)
    rt.startup_hooks.append(store.ensure_indexes)

    async def on_record(event: Envelope[Any]) -> None:
        change = await directory.apply(event)
        if change is not None:
            await linker.relink(change)
            await directory.relinked(change)

    rt.subscribe("crm.records.v1", on_record)
    if settings.linker_batch:
        # New messages are linked a run at a time (Linker.handle_batch), each message's events published
        # inside its own "link message" span. Idempotent by the linker's own keys (`link_seen`, the message
        # documents), so the consumer's per-event markers (a lookup each) are not needed.
        for topic, handler in (
            ("mailsync.messages.v1", linker.on_message_events),
            ("mailsync.send.events.v1", linker.on_send_events),
        ):
            rt.subscribe_batch(
                topic,
                handler,
                max_records=settings.linker_batch_max_records,
                batch_timeout_ms=settings.linker_batch_timeout_ms,
                dedupe=False,
            )
    else:
        rt.subscribe("mailsync.messages.v1", rt.traced("link message", linker.on_message_event))
        rt.subscribe("mailsync.send.events.v1", linker.on_send_event)
    rt.http_routes.append(("/v1/linked-emails", linked_emails_app(store)))
    rt.http_routes.append(("/v1/openapi.json", openapi_app))
