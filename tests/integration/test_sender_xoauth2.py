"""The sender's SMTP XOAUTH2 against the real Postfix submission port (SASL through Dovecot's oauth2
passdb, which asks the test's OAuth2 server to introspect each token).

- An inbox whose `smtp_auth` is OAuth2 with an expired access token: the sender refreshes it at the
  token endpoint (the same `ensure_access_token` path onboarding uses), stores the new token, logs in
  with XOAUTH2 and the message reaches the recipient's Dovecot mailbox.
- A revoked grant (stored token refused, refresh refused): `send failed` with `oauth.invalid_grant`.
- A token the server refuses even after a refresh (issued for another user): `send failed` with an
  SMTP authentication reason.
No access or refresh token shows up in any send event or in the sender's log.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import smtplib
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosmtplib
import pytest
from pymongo import AsyncMongoClient

from mailsync.inbox_record import InboxRecord, OAuth2Auth, ServerSettings
from services.sender.failures import classify_smtp
from services.sender.logins import Login
from services.sender.smtp_transport import AioSmtpTransport, tls_context
from tests.integration.conftest import eventually
from tests.integration.onboarding_servers import AuthServer
from tests.integration.test_secret_leak import encodings, find_hits
from tests.integration.test_sender_delivery import (
    BACKLOG_S,
    KEYRING,
    LAB_CA,
    TENANT,
    count_copies,
    inbox_doc,
    send_command,
    sender_env,
)
from tests.stack import SCRIPTS, MailLab

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
POSTFIX_LOG = LAB_CA.parent.parent / "log" / "postfix.log"


def _submission_auth(lab: MailLab) -> str:
    """The AUTH line Postfix offers on the submission port after STARTTLS."""
    with smtplib.SMTP(lab.host, lab.submission_port, timeout=10) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=str(LAB_CA)))
        smtp.ehlo()
        return smtp.esmtp_features.get("auth", "")


@pytest.fixture(scope="module")
def xoauth2_lab(mail_lab: MailLab) -> MailLab:
    """The lab with Dovecot's oauth2 passdb active (a Dovecot started before it re-reads its config)."""
    if "XOAUTH2" not in _submission_auth(mail_lab).upper().split():
        subprocess.run([str(SCRIPTS / "mail.sh"), "reload"], check=True, capture_output=True, timeout=60)
    offered = _submission_auth(mail_lab).upper().split()
    assert "XOAUTH2" in offered and "OAUTHBEARER" in offered, offered
    return mail_lab


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    """The introspection port is fixed (Dovecot's config names it) and other test modules use it too:
    wait a while for it to be free rather than fail on a neighbour's module-scoped server."""
    port = int(os.environ.get("OAUTH2_INTROSPECTION_PORT", "31080"))
    server = AuthServer(port)
    deadline = time.monotonic() + 120
    while True:
        try:
            server.start()
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    yield server
    server.close()


def oauth_inbox(
    inbox_id: str,
    email: str,
    password: str,
    lab: MailLab,
    server: AuthServer,
    *,
    refresh: str,
    access: str,
    expires_at: datetime,
) -> dict[str, Any]:
    """Password IMAP (for the Sent copy), OAuth2 SMTP through the submission port (STARTTLS)."""
    doc = inbox_doc(inbox_id, email, password, lab)
    rid = InboxRecord.key(TENANT, inbox_id)
    smtp_auth = OAuth2Auth(
        username=email,
        token_endpoint=server.token_endpoint,
        client_id="mailsync-sender-test",
        refresh_token=KEYRING.encrypt(refresh, f"{rid}:smtp_auth.refresh_token"),
        access_token=KEYRING.encrypt(access, f"{rid}:smtp_auth.access_token"),
        access_token_expires_at=expires_at,
    )
    doc["smtp"] = ServerSettings(host=lab.host, port=lab.submission_port, security="starttls").model_dump()
    doc["smtp_auth"] = smtp_auth.model_dump()
    return doc


def _postfix_log() -> str:
    try:
        return POSTFIX_LOG.read_text(errors="replace")
    except OSError as exc:
        pytest.fail(f"cannot read the lab's Postfix log {POSTFIX_LOG}: {exc}")


async def test_xoauth2_send_through_postfix_refresh_and_auth_failures(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service,
    producer,
    watch,
    mongo: Mongo,
    xoauth2_lab: MailLab,
    auth_server: AuthServer,
    mail_user_factory: Callable,  # type: ignore[type-arg]
) -> None:
    lab = xoauth2_lab
    alice, bob, carol = (
        mail_user_factory("xo-alice"),
        mail_user_factory("xo-bob"),
        mail_user_factory("xo-carol"),
    )
    sender = service("sender", **sender_env(MAILSYNC_SENDER_MAX_ATTEMPTS="2"))
    db = mongo[sender.database]
    run = uuid.uuid4().hex[:6]
    past, later = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)

    # good: the stored access token expired; the refresh token is valid → refresh, then XOAUTH2.
    good_refresh = auth_server.issue_refresh(alice.email)
    good_stale = auth_server.issue_access(alice.email, ttl=-60)
    # revoked: the stored token looks fresh to us but the server revoked the grant (and the token).
    revoked_refresh = auth_server.issue_refresh(alice.email)
    revoked_access = "at-never-issued-" + uuid.uuid4().hex
    auth_server.refresh[revoked_refresh]["revoked"] = True
    # wrong: tokens minted for carol presented as alice: Dovecot refuses the username mismatch, also
    # after the forced refresh (which again yields a carol token).
    wrong_refresh = auth_server.issue_refresh(carol.email)
    wrong_access = auth_server.issue_access(carol.email)
    # early: the token the server took back before the expiry we stored → one forced refresh, sent.
    early_refresh = auth_server.issue_refresh(alice.email)
    early_access = auth_server.issue_access(alice.email, ttl=-60)
    # fresh-wrong: stored token expired, the refresh yields a carol token → refused, no second refresh.
    fresh_wrong_refresh = auth_server.issue_refresh(carol.email)
    inboxes = {
        f"xo-good-{run}": oauth_inbox(
            f"xo-good-{run}", alice.email, alice.password, lab, auth_server,
            refresh=good_refresh, access=good_stale, expires_at=past,
        ),
        f"xo-revoked-{run}": oauth_inbox(
            f"xo-revoked-{run}", alice.email, alice.password, lab, auth_server,
            refresh=revoked_refresh, access=revoked_access, expires_at=later,
        ),
        f"xo-wrong-{run}": oauth_inbox(
            f"xo-wrong-{run}", alice.email, alice.password, lab, auth_server,
            refresh=wrong_refresh, access=wrong_access, expires_at=later,
        ),
        f"xo-early-{run}": oauth_inbox(
            f"xo-early-{run}", alice.email, alice.password, lab, auth_server,
            refresh=early_refresh, access=early_access, expires_at=later,
        ),
        f"xo-fresh-wrong-{run}": oauth_inbox(
            f"xo-fresh-wrong-{run}", alice.email, alice.password, lab, auth_server,
            refresh=fresh_wrong_refresh, access="at-stale-" + uuid.uuid4().hex, expires_at=past,
        ),
    }  # fmt: skip
    await db.inboxes.insert_many(list(inboxes.values()))
    events = await watch("mailsync.send.events.v1")
    log_mark = len(_postfix_log())
    keys = {inbox_id: f"xo-{inbox_id}" for inbox_id in inboxes}
    for inbox_id, key in keys.items():
        await producer(send_command(inbox_id, key, alice.email, bob.email, subject=f"xoauth2 {key}"))

    outcomes: dict[str, dict[str, Any]] = {}
    for inbox_id, key in keys.items():
        try:
            outcomes[inbox_id] = await events.wait_for(
                lambda e, k=key: (
                    e["data"].get("idempotency_key") == k
                    and e["type"] in ("mailsync.send.message_sent", "mailsync.send.failed")
                ),
                BACKLOG_S,
            )
        except AssertionError:
            print(sender.log()[-5000:])
            raise
    good, revoked, wrong, early, fresh_wrong = (outcomes[i] for i in inboxes)
    refreshed_with = [r["refresh_token"] for r in auth_server.token_requests]

    # Delivered with XOAUTH2 after one refresh; the new token (encrypted) replaced the stale one.
    assert good["type"] == "mailsync.send.message_sent", good["data"]
    assert good["data"]["accepted_recipients"] == [bob.email]
    mid = good["data"]["message_id"]
    await eventually(lambda: count_copies(lab, bob.email, bob.password, f"<{mid}>", sent=False), 20)
    assert refreshed_with.count(good_refresh) == 1
    stored = await db.inboxes.find_one({"_id": InboxRecord.key(TENANT, f"xo-good-{run}")})
    assert stored is not None
    assert stored["smtp_auth"]["access_token_expires_at"] > datetime.now(UTC) + timedelta(minutes=30)
    fresh = KEYRING.decrypt(
        OAuth2Auth.model_validate(stored["smtp_auth"]).access_token,  # type: ignore[arg-type]
        f"{TENANT}:xo-good-{run}:smtp_auth.access_token",
    )
    assert fresh != good_stale and auth_server.access[fresh]["username"] == alice.email
    # Postfix itself says the session authenticated with XOAUTH2 as alice (not some other mechanism).
    pattern = rf"sasl_method=XOAUTH2, sasl_username={re.escape(alice.email)}"

    async def authenticated() -> bool:
        return re.search(pattern, _postfix_log()[log_mark:]) is not None

    await eventually(authenticated, 10)

    # A revoked grant: refused by the server, the forced refresh refused → permanent, reconnect.
    assert revoked["type"] == "mailsync.send.failed", revoked["data"]
    err = revoked["data"]["error"]
    assert (err["code"], err["field"]) == ("oauth.invalid_grant", "smtp_auth"), err
    assert "reconnect" in (err.get("hint") or "")
    assert refreshed_with.count(revoked_refresh) == 1

    # A token for the wrong user: refused before and after the refresh → an SMTP authentication reason.
    assert wrong["type"] == "mailsync.send.failed", wrong["data"]
    err = wrong["data"]["error"]
    assert err["code"] == "auth.invalid_credentials" and err["field"] == "smtp_auth", err
    assert err["server_response"].startswith("535"), err
    # An OAuth2 inbox has no password to check: the user is told to reconnect (grant access again).
    assert "reconnect" in (err.get("hint") or "") and "password" not in (err.get("hint") or ""), err
    assert refreshed_with.count(wrong_refresh) == 1

    # A token the server took back early: refused, refreshed once on the same session, then sent.
    assert early["type"] == "mailsync.send.message_sent", early["data"]
    assert refreshed_with.count(early_refresh) == 1
    early_mid = early["data"]["message_id"]
    await eventually(lambda: count_copies(lab, bob.email, bob.password, f"<{early_mid}>", sent=False), 20)

    # A token minted for this very login and refused: no second refresh, an authentication reason.
    assert fresh_wrong["type"] == "mailsync.send.failed", fresh_wrong["data"]
    assert fresh_wrong["data"]["error"]["code"] == "auth.invalid_credentials"
    assert "reconnect" in (fresh_wrong["data"]["error"].get("hint") or ""), fresh_wrong["data"]
    assert refreshed_with.count(fresh_wrong_refresh) == 1

    # No token in any of this test's send events or in the sender's log (raw, base64, URL-encoded).
    assert sender.stop() == 0, sender.log()[-3000:]
    secrets = {
        "good refresh": good_refresh,
        "good stale access": good_stale,
        "revoked refresh": revoked_refresh,
        "revoked access": revoked_access,
        "wrong refresh": wrong_refresh,
        "wrong access": wrong_access,
        "early refresh": early_refresh,
        "early access": early_access,
        "fresh-wrong refresh": fresh_wrong_refresh,
        **{f"issued access {i}": t for i, t in enumerate(auth_server.access)},
    }
    needles = {name: encodings(value) for name, value in secrets.items()}
    ours = [repr(e).encode() for e in events.seen if e["data"].get("idempotency_key") in set(keys.values())]
    assert len(ours) >= 3
    log_lines = [line.encode() for line in sender.log().splitlines()]
    assert log_lines
    hits = find_hits({"send event": ours, "sender log line": log_lines}, needles)
    assert not hits, hits
    # Control: the scan finds a token the way an XOAUTH2 leak would carry it.
    planted = f"user={alice.email}\x01auth=Bearer {fresh}\x01\x01".encode()
    assert find_hits({"planted": [base64.b64encode(planted)]}, needles)


async def _temporary_auth_failure_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Offers XOAUTH2 and answers every AUTH with 454 (RFC 4954: temporary authentication failure)."""
    writer.write(b"220 scripted.test ESMTP\r\n")
    try:
        while line := await reader.readline():
            verb = line.decode(errors="replace").strip().upper()
            if verb.startswith("EHLO"):
                writer.write(b"250-scripted.test\r\n250-AUTH XOAUTH2\r\n250 8BITMIME\r\n")
            elif verb.startswith("AUTH"):
                writer.write(b"454 4.7.0 Temporary authentication failure\r\n")
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()
    finally:
        writer.close()


async def test_xoauth2_temporary_auth_failure_does_not_refresh_the_token() -> None:
    """A 454 is the server's trouble (its token check is down): the transport passes it on for a retry
    later and does not spend a refresh on a token that may well be good."""
    server = await asyncio.start_server(_temporary_auth_failure_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    record = InboxRecord.model_validate(
        {
            **inbox_doc("xo-454", "ann@mailsync.test", "unused", MailLab("127.0.0.1", 1, 1, 1, 1, 1, "x")),
            "smtp": {"host": "127.0.0.1", "port": port, "security": "plain"},
            "smtp_allow_plain": True,
        }
    )
    asked: list[bool] = []

    async def login(force_refresh: bool) -> Login:
        asked.append(force_refresh)
        return Login("xoauth2", "ann@mailsync.test", "at-scripted-token")

    transport = AioSmtpTransport(
        timeout=5,
        tls=tls_context(True, None),
        ehlo_hostname="t.test",
        connections_per_inbox=1,
        idle_seconds=0,
    )
    try:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
            await transport.send(
                record, login, "ann@mailsync.test", ["bob@mailsync.test"], b"Subject: x\r\n\r\nx\r\n"
            )
        assert info.value.code == 454
        assert classify_smtp(info.value).transient
        assert asked == [False]  # the stored token only; no forced refresh
    finally:
        await transport.close()
        server.close()
