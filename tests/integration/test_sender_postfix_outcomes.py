"""The sender against the lab's real Postfix and Dovecot, for outcomes the other sender tests reach only
through a scripted SMTP server or a simulated provider:

- a 5xx from Postfix itself (an unknown recipient: `550 5.1.1` at RCPT) fails at once with its code;
  a message with one known and one unknown recipient is sent once, reporting the refused one (its
  outcome, refusal included, must be storable in FerretDB: a failed journal write meant a resend);
- an inbox whose server files no Sent copy (the lab's: the sender appends it), SIGKILLed after SMTP
  accepted but before the outcome was journaled: the Sent-folder search finds nothing (our APPEND had
  not happened), and with `MAILSYNC_SENDER_UNCONFIRMED_POLICY=fail` the restart fails it with
  `send.outcome_unknown` instead of a second SMTP send: the recipient holds exactly one copy.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.integration.conftest import eventually
from tests.integration.test_sender_delivery import (
    BACKLOG_S,
    TENANT,
    count_copies,
    inbox_doc,
    kill_after_smtp,
    send_command,
    sender_env,
)
from tests.stack import MailLab

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]


async def test_postfix_5xx_fails_at_once_with_its_code_and_partial_refusals_are_reported(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service, producer, watch, mongo: Mongo, mail_lab: MailLab, mail_user_factory
) -> None:
    alice, bob = mail_user_factory("p5-alice"), mail_user_factory("p5-bob")
    sender = service("sender", **sender_env(MAILSYNC_SENDER_MAX_ATTEMPTS="3"))
    db = mongo[sender.database]
    run = uuid.uuid4().hex[:6]
    inbox_id = f"p5-{run}"
    await db.inboxes.insert_one(inbox_doc(inbox_id, alice.email, alice.password, mail_lab))
    nobody = f"nobody-{run}@{mail_lab.domain}"  # in the lab domain, not in Postfix's mailbox map
    events = await watch("mailsync.send.events.v1")
    only_unknown, mixed = f"p5-unknown-{run}", f"p5-mixed-{run}"
    await producer(send_command(inbox_id, only_unknown, alice.email, nobody))
    await producer(send_command(inbox_id, mixed, alice.email, bob.email, nobody))

    def outcome(key: str) -> Any:
        return events.wait_for(
            lambda e: (
                e["data"].get("idempotency_key") == key
                and e.get("inbox_id") == inbox_id
                and e["type"] in ("mailsync.send.message_sent", "mailsync.send.failed")
            ),
            BACKLOG_S,
        )

    failed = await outcome(only_unknown)
    assert failed["type"] == "mailsync.send.failed", failed["data"]
    data = failed["data"]
    assert data["permanent"] is True and data["attempts"] == 1, data
    assert data["error"]["code"] == "smtp.550" and data["error"]["field"] == "to", data
    assert nobody in data["error"]["server_response"] and "5.1.1" in data["error"]["server_response"], data

    sent = await outcome(mixed)
    assert sent["type"] == "mailsync.send.message_sent", sent["data"]
    assert sent["data"]["accepted_recipients"] == [bob.email]
    assert list(sent["data"]["refused_recipients"]) == [nobody]
    assert sent["data"]["refused_recipients"][nobody].startswith("550 5.1.1")
    mid = f"<{sent['data']['message_id']}>"
    await eventually(lambda: count_copies(mail_lab, bob.email, bob.password, mid, sent=False), 20)
    await events.wait_for(
        lambda e: (
            e["type"] == "mailsync.send.sent_copy_stored" and e["data"]["send_id"] == sent["data"]["send_id"]
        )
    )
    assert await count_copies(mail_lab, alice.email, alice.password, mid, sent=True) == 1

    # Not retried: the failed request's outcome holds one attempt, and no other attempt followed.
    await asyncio.sleep(1.0)
    stored = await db.send_outcomes.find_one({"_id": f"{TENANT}:{inbox_id}:{only_unknown}"})
    assert stored is not None and stored["status"] == "failed" and stored["attempts"] == 1, stored
    ours = [e for e in events.seen if e["data"].get("idempotency_key") == only_unknown]
    assert [e["type"] for e in ours].count("mailsync.send.failed") == 1, ours
    # The partly refused message went out once (its outcome, refusal included, was stored at once).
    assert await count_copies(mail_lab, bob.email, bob.password, mid, sent=False) == 1
    done = await db.send_outcomes.find_one({"_id": f"{TENANT}:{inbox_id}:{mixed}"})
    assert done is not None and done["status"] == "sent" and done["attempts"] == 1, done
    assert sender.stop() == 0, sender.log()[-3000:]


async def test_sigkill_after_smtp_for_an_appending_inbox_never_resends_under_the_fail_policy(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service, producer, watch, mongo: Mongo, mail_lab: MailLab, mail_user_factory
) -> None:
    alice, bob = mail_user_factory("uk-alice"), mail_user_factory("uk-bob")
    k = await kill_after_smtp(service, producer, watch, mongo, mail_lab, alice, bob, "uk")
    db, events, group, inbox_id, key, rid, mid = k.db, k.events, k.group, k.inbox_id, k.key, k.rid, k.mid
    assert await db.send_journal.find_one({"_id": f"{rid}:sent"}) is None
    assert await count_copies(mail_lab, alice.email, alice.password, mid, sent=True) == 0

    second = service(
        "sender",
        **sender_env(
            MAILSYNC_SENDER_LEASE_SECONDS="3",
            MAILSYNC_SENDER_UNCONFIRMED_POLICY="fail",
            MAILSYNC_MONGO_DATABASE=k.database,
            MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX=group,
        ),
    )
    failed = await events.wait_for(
        lambda e: e["data"].get("idempotency_key") == key and e.get("inbox_id") == inbox_id, 40
    )
    assert failed["type"] == "mailsync.send.failed", failed["data"]
    assert failed["data"]["error"]["code"] == "send.outcome_unknown", failed["data"]
    await eventually(lambda: db.send_outcomes.find_one({"_id": rid}))
    # Give a (wrong) second SMTP send time to be delivered before counting.
    await asyncio.sleep(2.0)
    assert await count_copies(mail_lab, bob.email, bob.password, mid, sent=False) == 1
    assert await count_copies(mail_lab, alice.email, alice.password, mid, sent=True) == 0
    assert second.stop() == 0, second.log()[-3000:]
