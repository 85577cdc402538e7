#!/usr/bin/env python3
"""End-to-end check of the local mail lab started by deploy/local/mail.sh (stdlib only).

Run after `deploy/local/mail.sh start`:  python3 deploy/local/mail/smoke_test.py
It creates alice@, bob@ and a throw-away carol@ in $MAIL_DOMAIN through mail.sh, then checks IMAP
(STARTTLS, implicit TLS, capabilities, special-use folders, APPEND), submission (STARTTLS and
implicit TLS with SASL), the unauthenticated MTA port, refusals (bad password, unknown user,
outside domain) and that adduser/deluser act without a restart. Prints one line per check and
exits non-zero on the first failure.
"""

from __future__ import annotations

import email.message
import email.utils
import imaplib
import os
import smtplib
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

HOST = "127.0.0.1"
DOMAIN = os.environ.get("MAIL_DOMAIN", "mailsync.test")
IMAP_PORT = int(os.environ.get("IMAP_PORT", "31143"))
IMAPS_PORT = int(os.environ.get("IMAPS_PORT", "31993"))
SMTP_PORT = int(os.environ.get("SMTP_PORT", "31025"))
SUBMISSION_PORT = int(os.environ.get("SUBMISSION_PORT", "31587"))
SUBMISSIONS_PORT = int(os.environ.get("SUBMISSIONS_PORT", "31465"))
MAIL_SH = Path(__file__).resolve().parent.parent / "mail.sh"

ALICE, ALICE_PW = f"alice@{DOMAIN}", "alice-secret-1"
BOB, BOB_PW = f"bob@{DOMAIN}", "bob-secret-1"
CAROL, CAROL_PW = f"carol@{DOMAIN}", "carol-secret-1"
DELIVERY_TIMEOUT = 10.0


def tls_context() -> ssl.SSLContext:
    # The lab certificate is self-signed.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ok(what: str, t0: float | None = None) -> None:
    extra = f" ({(time.monotonic() - t0) * 1000:.0f} ms)" if t0 is not None else ""
    print(f"ok   {what}{extra}", flush=True)


def fail(what: str) -> None:
    print(f"FAIL {what}", flush=True)
    sys.exit(1)


def mail_sh(*args: str) -> None:
    subprocess.run([str(MAIL_SH), *args], check=True)


def imap_login(user: str, password: str, implicit_tls: bool) -> imaplib.IMAP4:
    if implicit_tls:
        conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(HOST, IMAPS_PORT, ssl_context=tls_context(), timeout=10)
    else:
        conn = imaplib.IMAP4(HOST, IMAP_PORT, timeout=10)
        conn.starttls(ssl_context=tls_context())
    conn.login(user, password)
    return conn


def make_message(sender: str, rcpt: str, subject: str) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{DOMAIN}>"
    msg.set_content(f"body of {subject}\n")
    return msg


def wait_for_message(user: str, password: str, message_id: str) -> float:
    """Poll the user's INBOX until a message with this Message-ID shows up; return seconds taken."""
    t0 = time.monotonic()
    conn = imap_login(user, password, implicit_tls=True)
    try:
        while time.monotonic() - t0 < DELIVERY_TIMEOUT:
            conn.select("INBOX")
            typ, data = conn.uid("SEARCH", None, "HEADER", "Message-ID", message_id)
            if typ == "OK" and data and data[0].split():
                return time.monotonic() - t0
            time.sleep(0.05)
    finally:
        conn.logout()
    fail(f"{message_id} not in {user}'s INBOX after {DELIVERY_TIMEOUT:.0f} s")
    raise AssertionError  # unreachable


def submit(port: str, user: str, password: str, msg: email.message.EmailMessage) -> None:
    if port == "submissions":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(HOST, SUBMISSIONS_PORT, context=tls_context(), timeout=10)
    else:
        smtp = smtplib.SMTP(HOST, SUBMISSION_PORT, timeout=10)
        smtp.starttls(context=tls_context())
    try:
        smtp.login(user, password)
        smtp.send_message(msg)
    finally:
        smtp.quit()


def check_imap() -> None:
    for implicit in (False, True):
        label = "IMAPS implicit TLS" if implicit else "IMAP STARTTLS"
        t0 = time.monotonic()
        conn = imap_login(ALICE, ALICE_PW, implicit)
        ok(f"{label} login as {ALICE}", t0)
        # imaplib keeps the pre-login list; Dovecot announces the full set after login.
        typ, data = conn.capability()
        caps = set(data[0].decode().upper().split())
        missing = {"CONDSTORE", "QRESYNC", "IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE"} - caps
        if missing:
            fail(f"{label} CAPABILITY lacks {sorted(missing)}: {sorted(caps)}")
        ok(f"{label} CAPABILITY has CONDSTORE QRESYNC IDLE UIDPLUS MOVE SPECIAL-USE")
        typ, boxes = conn.list()
        listing = [b.decode() for b in boxes if b]
        wanted = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}
        for name, flag in wanted.items():
            if not any(line.endswith(f'"{name}"') or line.endswith(f" {name}") for line in listing if flag in line):
                fail(f"{label} LIST has no {name} with {flag}: {listing}")
        ok(f"{label} LIST shows Sent \\Sent, Drafts, Trash, Junk, Archive")
        conn.logout()

    conn = imap_login(ALICE, ALICE_PW, implicit_tls=True)
    subject = f"append {uuid.uuid4().hex}"
    msg = make_message(ALICE, ALICE, subject)
    typ, data = conn.append("INBOX", "(\\Seen)", imaplib.Time2Internaldate(time.time()), msg.as_bytes())
    if typ != "OK" or b"APPENDUID" not in data[0]:
        fail(f"APPEND to INBOX: {typ} {data}")
    uid = data[0].split()[2].rstrip(b"]").decode()  # [APPENDUID <uidvalidity> <uid>] ...
    conn.select("INBOX")
    typ, data = conn.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] MODSEQ)")
    if typ != "OK" or subject.encode() not in data[0][1]:
        fail(f"FETCH of appended uid {uid}: {typ} {data}")
    ok(f"APPEND to INBOX (UID {uid}, APPENDUID) and FETCH it back with MODSEQ")
    conn.logout()


def check_bad_passwords() -> None:
    t0 = time.monotonic()
    try:
        imap_login(ALICE, "wrong-password", implicit_tls=True)
        fail("IMAP login with a wrong password succeeded")
    except imaplib.IMAP4.error as exc:
        if "AUTHENTICATIONFAILED" not in str(exc):
            fail(f"IMAP wrong password: unexpected {exc}")
        ok(f"IMAP wrong password -> {exc}", t0)
    for port in ("submission", "submissions"):
        t0 = time.monotonic()
        try:
            submit(port, ALICE, "wrong-password", make_message(ALICE, BOB, "never sent"))
            fail(f"{port} AUTH with a wrong password succeeded")
        except smtplib.SMTPAuthenticationError as exc:
            if exc.smtp_code != 535 or not exc.smtp_error.startswith(b"5.7.8"):
                fail(f"{port} wrong password: unexpected {exc}")
            ok(f"{port} wrong password -> {exc.smtp_code} {exc.smtp_error.decode()}", t0)


def check_submission() -> None:
    for port in ("submission", "submissions"):
        msg = make_message(ALICE, BOB, f"{port} {uuid.uuid4().hex}")
        t0 = time.monotonic()
        submit(port, ALICE, ALICE_PW, msg)
        sent = time.monotonic() - t0
        took = wait_for_message(BOB, BOB_PW, msg["Message-ID"])
        ok(f"{port} AUTH as {ALICE} -> {BOB}: accepted in {sent * 1000:.0f} ms, in bob's INBOX {took * 1000:.0f} ms later")


def check_mta_port() -> None:
    msg = make_message("someone@outside.example", BOB, f"inbound {uuid.uuid4().hex}")
    with smtplib.SMTP(HOST, SMTP_PORT, timeout=10) as smtp:
        smtp.send_message(msg)
    took = wait_for_message(BOB, BOB_PW, msg["Message-ID"])
    ok(f"MTA port {SMTP_PORT} without AUTH -> {BOB}: in bob's INBOX {took * 1000:.0f} ms later")

    # Unknown user of the lab domain: refused at RCPT time, no bounce.
    with smtplib.SMTP(HOST, SMTP_PORT, timeout=10) as smtp:
        smtp.mail("someone@outside.example")
        code, text = smtp.rcpt(f"nobody@{DOMAIN}")
        if code != 550:
            fail(f"RCPT to an unknown lab user: expected 550, got {code} {text!r}")
        ok(f"MTA port: unknown user nobody@{DOMAIN} -> {code} {text.decode()}")
        # Outside domain without AUTH: not an open relay.
        code, text = smtp.rcpt("someone@example.com")
        if code < 500:
            fail(f"MTA port relays to an outside domain: {code} {text!r}")
        ok(f"MTA port: relay to someone@example.com -> {code} {text.decode()}")


def check_no_external_relay() -> None:
    for port in ("submission", "submissions"):
        try:
            submit(port, ALICE, ALICE_PW, make_message(ALICE, "someone@example.com", "outside"))
            fail(f"{port}: mail to an outside domain was accepted")
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients["someone@example.com"]
            ok(f"{port}: authenticated relay to someone@example.com -> {code} {text.decode()}")


def check_user_changes() -> None:
    t0 = time.monotonic()
    mail_sh("adduser", CAROL, CAROL_PW)
    conn = imap_login(CAROL, CAROL_PW, implicit_tls=True)
    conn.logout()
    msg = make_message(ALICE, CAROL, f"to carol {uuid.uuid4().hex}")
    submit("submissions", ALICE, ALICE_PW, msg)
    wait_for_message(CAROL, CAROL_PW, msg["Message-ID"])
    ok(f"adduser {CAROL}: IMAP login and delivery work without restart", t0)

    mail_sh("adduser", CAROL, "carol-secret-2")
    try:
        imap_login(CAROL, CAROL_PW, implicit_tls=True)
        fail("old password still accepted after adduser with a new one")
    except imaplib.IMAP4.error:
        pass
    imap_login(CAROL, "carol-secret-2", implicit_tls=True).logout()
    ok("adduser again with a new password: only the new one works")

    mail_sh("deluser", CAROL)
    try:
        imap_login(CAROL, "carol-secret-2", implicit_tls=True)
        fail("deleted user can still log in")
    except imaplib.IMAP4.error:
        pass
    with smtplib.SMTP(HOST, SMTP_PORT, timeout=10) as smtp:
        smtp.mail("someone@outside.example")
        code, text = smtp.rcpt(CAROL)
    if code != 550:
        fail(f"RCPT to a deleted user: expected 550, got {code} {text!r}")
    ok(f"deluser {CAROL}: login refused, RCPT -> {code} {text.decode()}")


def main() -> None:
    mail_sh("adduser", ALICE, ALICE_PW)
    mail_sh("adduser", BOB, BOB_PW)
    check_imap()
    check_bad_passwords()
    check_submission()
    check_mta_port()
    check_no_external_relay()
    check_user_changes()
    print("mail lab smoke test: all checks passed")


if __name__ == "__main__":
    main()
