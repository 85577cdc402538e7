"""TLS sessions of one process share a receive buffer (services/fetcher/imap/tls_buffers.py): against the
real Dovecot, bodies fetched at the same time over STARTTLS and implicit TLS arrive byte for byte."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import os
import ssl
from collections.abc import Callable

import pytest

from services.fetcher.imap.session import ImapSession
from tests.integration.conftest import MailUser
from tests.stack import ROOT, MailLab

pytestmark = pytest.mark.integration
CA_FILE = str(ROOT / ".stack" / "mail" / "tls" / "cert.pem")


def message(n: int, size: int) -> bytes:
    body = base64.encodebytes(os.urandom(size)).replace(b"\n", b"\r\n")
    return (
        f"From: a@example.com\r\nTo: b@mailsync.test\r\nSubject: m{n}\r\n"
        f"Message-ID: <tlsbuf-{n}@example.com>\r\n\r\n"
    ).encode() + body


def ssl_protocol(session: ImapSession) -> object:
    return session._writer.transport._ssl_protocol  # type: ignore[attr-defined]


async def test_tls_sessions_share_one_buffer_and_read_bodies_intact(
    mail_lab: MailLab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("tlsbuf")
    sent = [message(n, size) for n, size in enumerate((300, 20_000, 70_000, 150_000, 5_000, 400_000))]
    m = imaplib.IMAP4_SSL(
        "127.0.0.1", mail_lab.imaps_port, ssl_context=ssl.create_default_context(cafile=CA_FILE)
    )
    try:
        m.login(user.email, user.password)
        for raw in sent:
            assert m.append("INBOX", None, None, raw)[0] == "OK"
    finally:
        m.logout()

    ctx = ssl.create_default_context(cafile=CA_FILE)
    ports = [(mail_lab.imap_port, "starttls"), (mail_lab.imaps_port, "tls")] * 2
    sessions = [
        await ImapSession.connect("127.0.0.1", port, security, ssl_context=ctx)  # type: ignore[arg-type]
        for port, security in ports
    ]
    try:
        for s in sessions:
            await s.login(user.email, user.password)
            await s.examine("INBOX")
        buffers = {id(ssl_protocol(s)._ssl_buffer) for s in sessions}  # type: ignore[attr-defined]
        assert len(buffers) == 1
        # The decoded certificate asyncio kept per connection is gone; the SSL object still has it.
        assert sessions[0]._writer.get_extra_info("peercert") is None
        assert sessions[0]._writer.get_extra_info("ssl_object").getpeercert()["subject"]

        results = await asyncio.gather(*(s.uid_fetch("1:*", "BODY.PEEK[]") for s in sessions))
        for got in results:
            bodies = [item["BODY[]"] for item in sorted(got, key=lambda i: int(str(i["UID"])))]
            assert bodies == sent
    finally:
        for s in sessions:
            await s.logout()
