"""Delivery reports (bounces) found by the initial sync carry their parsed `delivery_report`, as new ones do.

Real Dovecot, Kafka and FerretDB. The fetcher as a real process: a mailbox seeded with a DSN among
ordinary mail before the inbox is registered. In-process, with bodies inline in the initial FETCH
(`SyncTuning.inline_bodies`): the report comes from the body already fetched. And the common case stays
as it was: a unit without a report costs no extra FETCH.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from contracts.messages import MessageReceived
from services.fetcher.sync.folder import FolderSync, SyncTuning
from tests.integration.conftest import MailUser
from tests.integration.folder_kit import connect, inbox_context
from tests.integration.test_fetcher_initial_bodies import Recorder, spy_fetches
from tests.integration.test_fetcher_sync import append, mail, record, sync_env, unique_by_id

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]


def dsn(tag: str, to: str) -> bytes:
    """A Postfix-style bounce of a message sent from the inbox to a missing recipient."""
    return f"""From: MAILER-DAEMON@mx.mailsync.test (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender {tag}
To: {to}
Date: {format_datetime(datetime.now(UTC))}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="B-{tag}"
Message-Id: <bounce-{tag}@mx.mailsync.test>

--B-{tag}
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not be delivered.

--B-{tag}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.mailsync.test

Final-Recipient: rfc822; nobody-{tag}@example.com
Original-Recipient: rfc822;nobody-{tag}@example.com
Action: failed
Status: 5.1.1
Diagnostic-Code: X-Postfix; unknown user: "nobody-{tag}"

--B-{tag}
Content-Type: text/rfc822-headers

From: {to}
To: nobody-{tag}@example.com
Subject: Our offer
Message-ID: <orig-{tag}@mailsync.test>

--B-{tag}--
""".replace("\n", "\r\n").encode()


async def test_backfilled_dsn_carries_its_delivery_report(  # type: ignore[no-untyped-def]
    service, watch, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("bfdsn")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    # Seeded before the inbox is registered: all three come through the initial sync (history).
    await asyncio.to_thread(append, user, port, [mail(1, tag), dsn(tag, user.email), mail(2, tag)])
    messages = await watch("mailsync.messages.v1")
    inbox_events = await watch("mailsync.inbox.v1")
    fetcher = service("fetcher", **sync_env())
    db = mongo[fetcher.database]
    inbox_id = f"i-{tag}"
    await db.inboxes.insert_one(record(user, port, "t1", inbox_id))

    await inbox_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.inbox.initial_sync_completed", 60
    )
    await messages.wait_for(
        lambda e: (
            e["inbox_id"] == inbox_id
            and e["type"] == "mailsync.message.received"
            and e["data"]["ref"]["uid"] == 1
        ),
        30,
    )
    received = {
        e["data"]["ref"]["uid"]: e
        for e in unique_by_id(messages.seen)
        if e["inbox_id"] == inbox_id and e["type"] == "mailsync.message.received"
    }
    assert sorted(received) == [1, 2, 3]
    bounce = received[2]["data"]
    assert bounce["history"] is True, "found by the initial sync"
    report = bounce["delivery_report"]
    assert report is not None, "the backfilled DSN carries its parsed report"
    assert report["original_message_id"] == f"orig-{tag}@mailsync.test"
    assert [(r["final_recipient"], r["action"], r["status"]) for r in report["recipients"]] == [
        (f"nobody-{tag}@example.com", "failed", "5.1.1")
    ]
    assert received[1]["data"]["delivery_report"] is None
    assert received[3]["data"]["delivery_report"] is None


@pytest.mark.parametrize("inline", [False, True], ids=["headers-first", "inline-bodies"])
async def test_initial_units_fetch_a_report_whole_and_nothing_more_without_one(  # type: ignore[no-untyped-def]
    mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser], inline: bool
) -> None:
    user = mail_user_factory("bfunit")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    # UIDs 1-4 ordinary, 5 the report, 6-8 ordinary; units of 3, newest first: [8,7,6] [5,4,3] [2,1].
    raws = [mail(i, tag) for i in range(1, 5)] + [dsn(tag, user.email)] + [mail(i, tag) for i in range(6, 9)]
    await asyncio.to_thread(append, user, port, raws)
    db = mongo[f"test_bfunit_{tag}"]
    ctx = inbox_context(user, tag)
    tuning = SyncTuning(backfill_days=None, fetch_chunk=3, inline_bodies=inline)
    recorder = Recorder(db, ctx)
    fetches: list[tuple[str, str]] = []
    session = await connect(user, port)
    spy_fetches(session, fetches)
    try:
        result = await FolderSync(ctx, db=db, publisher=recorder, tuning=tuning).run_pass(session)
    finally:
        session.abort()
        await mongo.drop_database(db.name)
    assert result.initial_completed_now and result.received == 8
    received = {e.data.ref.uid: e for e in recorder.events if isinstance(e, MessageReceived)}
    assert sorted(received) == list(range(1, 9))
    report = received[5].data.delivery_report
    assert report is not None
    assert [(r.final_recipient, r.status) for r in report.recipients] == [
        (f"nobody-{tag}@example.com", "5.1.1")
    ]
    assert all(received[u].data.delivery_report is None for u in received if u != 5)
    # The initial sync's FETCHes: those before the body backlog's (`UID FLAGS RFC822.SIZE BODY.PEEK[]`).
    backlog = [i for i, (_, items) in enumerate(fetches) if items.startswith("UID FLAGS RFC822.SIZE BODY")]
    initial = fetches[: backlog[0]] if backlog else fetches
    whole_reports = [f for f in initial if f[1] == "UID BODY.PEEK[]"]
    if inline:
        assert whole_reports == [], "the inline body already holds the report"
    else:
        assert whole_reports == [("5", "UID BODY.PEEK[]")], "only the report, once"
    units = [f for f in initial if f[1].startswith("UID FLAGS INTERNALDATE")]
    assert len(units) == 3, "one FETCH per unit: the units without a report cost nothing more"
