"""Sender service wiring: send commands in → outbox → delivery loop (SMTP, events, Sent copy)."""

from __future__ import annotations

import socket

import httpx

from mailsync.credentials import CredentialKeyError, Keyring
from mailsync.service import Runtime

from .delivery import Delivery
from .imap_sent import ImaplibSentMailboxes
from .outbox import Outbox
from .reply_index import ReplyIndex
from .settings import SenderSettings
from .smtp_transport import AioSmtpTransport, tls_context


def setup(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, SenderSettings)
    try:
        keyring: Keyring | None = Keyring.from_env()
    except CredentialKeyError as exc:
        # Without a key no inbox credential opens; each send then fails with a clear reason.
        rt.log.warning("no credential keyring; sends will fail", extra={"reason": str(exc)})
        keyring = None
    tls = tls_context(settings.sender_tls_verify, settings.sender_tls_cafile)
    http = httpx.AsyncClient(timeout=settings.sender_attachment_fetch_timeout_seconds)
    delivery = Delivery(
        rt.db,
        rt.publisher,
        rt.source,
        settings,
        smtp=AioSmtpTransport(
            timeout=settings.sender_smtp_timeout_seconds,
            tls=tls,
            ehlo_hostname=settings.sender_ehlo_hostname or socket.getfqdn(),
            connections_per_inbox=settings.sender_smtp_connections_per_inbox,
            idle_seconds=settings.sender_smtp_idle_seconds,
        ),
        imap=ImaplibSentMailboxes(
            timeout=settings.sender_imap_timeout_seconds,
            tls=tls,
            sessions_per_inbox=settings.sender_imap_sessions_per_inbox,
            account_connections=settings.imap_connections_per_account,
        ),
        keyring=keyring,
        http=http,
    )
    outbox = Outbox(
        rt.db,
        rt.publisher,
        rt.source,
        wake=delivery.wake,
        inbox_lookup=delivery.inbox_doc,
        handoff=delivery,
    )
    # Batched intake: a poll's commands cost a few writes together. Both handlers are idempotent by
    # their own keys (idempotency key, message key), so no per-event markers are written.
    batch = settings.sender_intake_batch_size
    rt.subscribe_batch("mailsync.send.commands.v1", outbox.apply_batch, max_records=batch, dedupe=False)
    if settings.sender_reply_index_enabled:
        rt.subscribe_batch(
            "mailsync.messages.v1", ReplyIndex(rt.db).apply_batch, max_records=batch, dedupe=False
        )
    rt.consumer.reject_hooks.append(outbox.on_rejected)
    rt.startup_hooks.append(delivery.start)

    async def _stop() -> None:
        await delivery.stop()
        await http.aclose()

    rt.shutdown_hooks.append(_stop)
