"""The fetcher and the janitor's deactivation (issues #4 and #7), against the real Dovecot and Kafka.

`deactivated` on mailsync.inbox.v1 → the inbox's sync stops and its IMAP connections close (checked on
Dovecot's side with `doveadm who`), its cursors stay; the store is purged (the janitor's part, done here
by hand); a `resume` command reactivates it → every message comes back, marked as history, with event
ids of their own so consumers that saw the first announcement process them again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from contracts.inbox import (
    InboxCommandData,
    InboxCommandRequested,
    InboxDeactivated,
    InboxDeactivatedData,
)
from tests.integration.conftest import MailUser, eventually
from tests.integration.test_fetcher_sync import append, mail, record, sync_env, unique_by_id
from tests.stack import ROOT

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
DOVECOT_CONF = (os.environ.get("MAILSYNC_STACK_DIR") or str(ROOT / ".stack")) + "/mail/etc/dovecot.conf"


def imap_sessions(email: str) -> int:
    """Logged-in IMAP sessions of `email`, as Dovecot counts them (`doveadm who -1`)."""
    out = subprocess.run(
        ["doveadm", "-c", DOVECOT_CONF, "who", "-1", email],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    return sum(1 for line in out.splitlines()[1:] if line.split()[:1] == [email] and " imap " in f" {line} ")


def received(events: list[dict[str, Any]], inbox_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in unique_by_id(events)
        if e["type"] == "mailsync.message.received" and e["inbox_id"] == inbox_id
    ]


async def test_deactivated_closes_connections_and_reactivation_resyncs_as_history(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service, watch, producer, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("deact")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(i, tag) for i in range(3)])
    messages = await watch("mailsync.messages.v1")
    inbox_events = await watch("mailsync.inbox.v1")
    commands = await watch("mailsync.send.commands.v1")
    fetcher = service("fetcher", **sync_env(MAILSYNC_FETCHER_SYNC_CONFIRMATION_EMAIL="true"))
    db = mongo[fetcher.database]
    inbox_id = f"i-{tag}"
    key = f"t1:{inbox_id}"
    await db.inboxes.insert_one(record(user, port, "t1", inbox_id))
    done = await inbox_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.inbox.initial_sync_completed", 60
    )
    # The optional confirmation email: a send command from the inbox to itself, keyed by the sync run.
    confirm = await commands.wait_for(lambda e: e["inbox_id"] == inbox_id, 30)
    assert confirm["type"] == "mailsync.send.requested"
    assert confirm["data"]["idempotency_key"] == f"initial-sync-confirmation:{done['data']['sync_run_id']}"
    assert [a["email"] for a in confirm["data"]["to"]] == [user.email]
    await messages.wait_for(lambda e: len(received(messages.seen, inbox_id)) >= 3, 30)
    first = received(messages.seen, inbox_id)
    assert len(first) == 3
    assert await eventually(lambda: asyncio.to_thread(imap_sessions, user.email), 20) >= 1

    deactivation = InboxDeactivated.build(
        data=InboxDeactivatedData(deactivation_id=f"d-{tag}", reason="unopened", owner_user_id="u1"),
        tenant_id="t1",
        inbox_id=inbox_id,
        source="/janitor",
    )
    await producer(deactivation)

    async def closed() -> bool:
        doc = await db.inboxes.find_one({"_id": key})
        return bool(doc and doc["status"] == "deactivated") and (
            await asyncio.to_thread(imap_sessions, user.email) == 0
        )

    await eventually(closed, 30)
    cursors = await db.sync_cursors.count_documents({"inbox_id": inbox_id})
    assert cursors >= 1, "the cursors are kept while deactivated"
    # The janitor purges the stored mail (issue #7); here by hand, as the janitor's purge would.
    for name in ("messages", "message_bodies"):
        await db[name].delete_many({"inbox_id": inbox_id})
    await asyncio.to_thread(append, user, port, [mail(3, tag, subject="while deactivated")])
    await asyncio.sleep(1.5)  # > scan interval: a stopped sync stays stopped
    assert await asyncio.to_thread(imap_sessions, user.email) == 0

    resume = InboxCommandRequested.build(
        data=InboxCommandData(request_id=f"r-{tag}", action="resume", by_user_id="admin"),
        tenant_id="t1",
        inbox_id=inbox_id,
        source="/crm",
    )
    await producer(resume)
    await inbox_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.inbox.reactivated", 30
    )
    await messages.wait_for(lambda e: len(received(messages.seen, inbox_id)) >= 7, 60)
    again = [e for e in received(messages.seen, inbox_id) if e["data"].get("resync_id")]
    assert len(again) == 4, [e["data"]["subject"] for e in again]
    assert all(e["data"]["history"] for e in again), "mail found again by the resync is history"
    assert {e["data"]["message_id"] for e in again} == {f"{tag}-{i}@example.com" for i in range(4)}
    assert not {e["id"] for e in again} & {e["id"] for e in first}, "new ids: consumers process them again"
    stored = await eventually(
        lambda: db.messages.count_documents({"inbox_id": inbox_id, "deleted": False}), 20
    )
    assert stored == 4
    # After the resync the inbox is live again: new mail is not history.
    await asyncio.to_thread(append, user, port, [mail(4, tag, subject="after resync")])
    live = await messages.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["data"].get("subject") == "after resync", 30
    )
    assert live["data"]["history"] is False
    again_confirm = await commands.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["id"] != confirm["id"], 30
    )
    assert again_confirm["data"]["idempotency_key"] != confirm["data"]["idempotency_key"]
    assert live["data"].get("resync_id") is None
    # Nothing was synced while deactivated: the one message that arrived then came with the resync.
    plain = [e for e in received(messages.seen, inbox_id) if not e["data"].get("resync_id")]
    assert sorted(e["data"]["subject"] for e in plain) == [
        "after resync",
        "message 0",
        "message 1",
        "message 2",
    ]
