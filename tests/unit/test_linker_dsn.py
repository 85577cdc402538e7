"""Parsing DSNs and classification headers for the linker (mailsync/dsn.py)."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import compat32

from mailsync.dsn import classification_headers, delivery_report
from services.linker.reply_rules import classify

# The shape Postfix sends (RFC 3464), trimmed.
POSTFIX_BOUNCE = b"""From: MAILER-DAEMON@mx.mailsync.test (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: ann@mailsync.test
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="B1"
Message-Id: <20261122.ABC@mx.mailsync.test>

--B1
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not be delivered.

--B1
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.mailsync.test
X-Postfix-Queue-ID: ABC
Arrival-Date: Sun, 22 Nov 2026 03:00:00 +0000 (UTC)

Final-Recipient: rfc822; nobody@mailsync.test
Original-Recipient: rfc822;nobody@mailsync.test
Action: failed
Status: 5.1.1
Diagnostic-Code: X-Postfix; unknown user: "nobody"

--B1
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: ann@mailsync.test
To: nobody@mailsync.test
Subject: Our offer
Message-ID: <mailsync.0123456789abcdef0123456789abcdef@mailsync.test>

--B1--
"""


def test_postfix_dsn_is_parsed() -> None:
    msg = message_from_bytes(POSTFIX_BOUNCE, policy=compat32)
    report = delivery_report(msg)
    assert report is not None
    assert report.original_message_id == "mailsync.0123456789abcdef0123456789abcdef@mailsync.test"
    (r,) = report.recipients
    assert (r.final_recipient, r.action, r.status) == ("nobody@mailsync.test", "failed", "5.1.1")
    assert r.diagnostic and "unknown user" in r.diagnostic
    # A DSN is a bounce, although Postfix also marks it Auto-Submitted.
    c = classify(
        from_emails=["MAILER-DAEMON@mx.mailsync.test"],
        subject=msg["subject"],
        auto_submitted=msg["auto-submitted"],
        headers=classification_headers(msg),
        content_type=msg["content-type"],
        delivery_report=report,
    )
    assert (c.kind, c.bounced_recipients, c.status, c.permanent) == (
        "bounce",
        ["nobody@mailsync.test"],
        "5.1.1",
        True,
    )


def test_ordinary_mail_has_no_report() -> None:
    msg = message_from_bytes(
        b"From: a@x.example\r\nPrecedence: bulk\r\nSubject: hi\r\n\r\nbody", policy=compat32
    )
    assert delivery_report(msg) is None
    assert classification_headers(msg) == {"precedence": "bulk"}
