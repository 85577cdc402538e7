"""The mail lab is real: IMAP APPEND to Dovecot read back; SMTP submission through Postfix into Dovecot."""

from __future__ import annotations

import asyncio
import imaplib
import ssl
import time
import uuid
from email.message import EmailMessage

import aiosmtplib
import pytest
from aioimaplib import IMAP4_SSL

from tests.stack import MailLab

pytestmark = pytest.mark.integration


def _lab_tls() -> ssl.SSLContext:
    # The lab's certificate is self-signed at start; production keeps verification on.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _message(sender: str, to: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@mailsync.test>"
    msg.set_content(f"body of {subject}\n")
    return msg


async def _imap_login(lab: MailLab, email: str, password: str) -> IMAP4_SSL:
    client = IMAP4_SSL(host=lab.host, port=lab.imaps_port, ssl_context=_lab_tls(), timeout=10)
    await client.wait_hello_from_server()
    res = await client.login(email, password)
    assert res.result == "OK", res
    return client


async def _examine(client: IMAP4_SSL, mailbox: str) -> None:
    """Read-only open. aioimaplib 2.0.3 leaves its state at AUTH after EXAMINE (only SELECT moves it to
    SELECTED), so it would refuse the FETCH that follows; the fetcher's session layer must handle this."""
    res = await client.examine(mailbox)
    assert res.result == "OK", res
    client.protocol.state = "SELECTED"


async def _find_subject(
    lab: MailLab, email: str, password: str, subject: str, timeout: float = 20.0
) -> bytes:
    """EXAMINE (read-only) INBOX and return the raw message whose Subject matches, via BODY.PEEK."""
    deadline = time.monotonic() + timeout
    while True:
        client = await _imap_login(lab, email, password)
        try:
            await _examine(client, "INBOX")
            res = await client.uid_search(f'HEADER Subject "{subject}"')
            uids = res.lines[0].split() if res.result == "OK" and res.lines and res.lines[0] else []
            if uids:
                fetched = await client.uid("fetch", uids[-1].decode(), "(BODY.PEEK[])")
                assert fetched.result == "OK", fetched
                raw = next(
                    line
                    for line in fetched.lines
                    if isinstance(line, (bytes, bytearray)) and b"Subject:" in line
                )
                return bytes(raw)
        finally:
            await client.logout()
        if time.monotonic() > deadline:
            raise AssertionError(f"{subject!r} not delivered to {email} within {timeout}s")
        await asyncio.sleep(0.3)


async def test_imap_append_is_read_back(mail_lab: MailLab, mail_user_factory) -> None:  # type: ignore[no-untyped-def]
    user = mail_user_factory("append")
    subject = f"appended {uuid.uuid4().hex[:8]}"
    msg = _message("someone@elsewhere.test", user.email, subject)
    client = await _imap_login(mail_lab, user.email, user.password)
    try:
        caps = " ".join(client.protocol.capabilities)
        for cap in ("IDLE", "UIDPLUS", "CONDSTORE", "QRESYNC"):
            assert cap in caps, caps
        res = await client.append(msg.as_bytes(), mailbox="INBOX", flags=None)
        assert res.result == "OK", res
    finally:
        await client.logout()
    raw = await _find_subject(mail_lab, user.email, user.password, subject)
    assert subject.encode() in raw and b"body of" in raw


def _starttls_login(lab: MailLab, email: str, password: str) -> list[bytes]:
    # aioimaplib has no STARTTLS command; the stdlib client proves the lab's STARTTLS listener.
    with imaplib.IMAP4(lab.host, lab.imap_port, timeout=10) as client:
        client.starttls(_lab_tls())
        client.login(email, password)
        typ, data = client.list()
        assert typ == "OK"
        return [d for d in data if isinstance(d, bytes)]


async def test_imap_starttls_login_and_special_use_folders(mail_lab: MailLab, mail_user_factory) -> None:  # type: ignore[no-untyped-def]
    user = mail_user_factory("starttls")
    folders = await asyncio.to_thread(_starttls_login, mail_lab, user.email, user.password)
    assert any(b"\\Sent" in f for f in folders), folders


async def test_wrong_imap_password_is_refused(mail_lab: MailLab, mail_user_factory) -> None:  # type: ignore[no-untyped-def]
    user = mail_user_factory("wrongpw")
    client = IMAP4_SSL(host=mail_lab.host, port=mail_lab.imaps_port, ssl_context=_lab_tls(), timeout=10)
    await client.wait_hello_from_server()
    res = await client.login(user.email, "not-the-password")
    assert res.result == "NO"
    assert b"AUTHENTICATIONFAILED" in b" ".join(line for line in res.lines if isinstance(line, bytes))
    await client.logout()


@pytest.mark.parametrize("mode", ["starttls", "implicit_tls"])
async def test_smtp_submission_is_delivered_to_dovecot(
    mail_lab: MailLab, mail_user_factory, mode: str
) -> None:  # type: ignore[no-untyped-def]
    alice, bob = mail_user_factory("alice"), mail_user_factory("bob")
    subject = f"submitted over {mode} {uuid.uuid4().hex[:8]}"
    port = mail_lab.submission_port if mode == "starttls" else mail_lab.submissions_port
    await aiosmtplib.send(
        _message(alice.email, bob.email, subject),
        hostname=mail_lab.host,
        port=port,
        username=alice.email,
        password=alice.password,
        use_tls=mode == "implicit_tls",
        start_tls=mode == "starttls",
        tls_context=_lab_tls(),
        timeout=15,
    )
    raw = await _find_subject(mail_lab, bob.email, bob.password, subject)
    assert alice.email.encode() in raw


async def test_wrong_smtp_password_gets_535(mail_lab: MailLab, mail_user_factory) -> None:  # type: ignore[no-untyped-def]
    alice = mail_user_factory("alice")
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
        await aiosmtplib.send(
            _message(alice.email, alice.email, "never"),
            hostname=mail_lab.host,
            port=mail_lab.submission_port,
            username=alice.email,
            password="wrong",
            start_tls=True,
            tls_context=_lab_tls(),
            timeout=15,
        )
    assert info.value.code == 535
    assert "wrong" not in str(info.value)


async def test_submission_without_auth_cannot_relay(mail_lab: MailLab, mail_user_factory) -> None:  # type: ignore[no-untyped-def]
    alice = mail_user_factory("alice")
    with pytest.raises(aiosmtplib.SMTPException):
        await aiosmtplib.send(
            _message(alice.email, "someone@outside.example", "relay attempt"),
            hostname=mail_lab.host,
            port=mail_lab.submission_port,
            start_tls=True,
            tls_context=_lab_tls(),
            timeout=15,
        )
