"""The MIME message of a send request, built with the stdlib `email` package (no I/O).

Our Message-ID carries the send id (`mailsync/outbound_ids.py`) so the linker recognises replies, and the
`X-Mailsync-Send-Id` header lets the fetcher reconcile the Sent-folder copy with the request. Bcc
recipients are in the SMTP envelope only, never in a header.
"""

from __future__ import annotations

import email.errors
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage

from contracts.common import Address
from contracts.sending import SendRequestedData
from mailsync.outbound_ids import SEND_ID_HEADER

# Lines longer than 998 octets are illegal (RFC 5322); SMTP policy folds headers and uses CRLF.
WIRE_POLICY = email.policy.SMTP


class ComposeError(ValueError):
    """The request cannot become a valid message; the text says which field and why."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


@dataclass(frozen=True)
class ResolvedAttachment:
    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None


@dataclass(frozen=True)
class ReplyContext:
    """The answered message: its Message-ID (with brackets) and its own References chain."""

    message_id: str
    references: list[str] = field(default_factory=list)


def _bracket(mid: str) -> str:
    mid = mid.strip()
    return mid if mid.startswith("<") else f"<{mid}>"


def _header_address(addr: Address, where: str) -> HeaderAddress:
    try:
        return HeaderAddress(display_name=addr.name or "", addr_spec=addr.email.strip())
    except (ValueError, IndexError, email.errors.MessageError) as exc:
        raise ComposeError("send.invalid_address", f"{where}: invalid address ({exc})", where) from None


def envelope_recipients(cmd: SendRequestedData) -> list[str]:
    """To, Cc and Bcc addresses for RCPT TO, each once, in order."""
    seen: set[str] = set()
    out: list[str] = []
    for addr in [*cmd.to, *cmd.cc, *cmd.bcc]:
        email_addr = addr.email.strip()
        if email_addr.casefold() not in seen:
            seen.add(email_addr.casefold())
            out.append(email_addr)
    return out


def threading_headers(reply: ReplyContext | None) -> tuple[str | None, str | None]:
    """In-Reply-To and References for a reply (RFC 5322 §3.6.4): parent's References + parent's id."""
    if reply is None:
        return None, None
    parent = _bracket(reply.message_id)
    chain = [_bracket(r) for r in reply.references if r.strip()]
    # Keep the first and the most recent ids when the chain grows long (header size stays sane).
    if len(chain) > 20:
        chain = [chain[0], *chain[-19:]]
    if parent not in chain:
        chain.append(parent)
    return parent, " ".join(chain)


def compose(
    cmd: SendRequestedData,
    *,
    send_id: str,
    message_id: str,
    date: datetime,
    reply: ReplyContext | None = None,
    attachments: list[ResolvedAttachment] | None = None,
) -> EmailMessage:
    if not (cmd.text or cmd.html or attachments):
        raise ComposeError("send.empty_body", "the message has no text, html or attachment", "text")
    msg = EmailMessage(policy=email.policy.default)
    msg["From"] = _header_address(cmd.from_, "from")
    for name, addrs in (("To", cmd.to), ("Cc", cmd.cc), ("Reply-To", cmd.reply_to)):
        if addrs:
            msg[name] = [_header_address(a, name.lower()) for a in addrs]
    if cmd.subject:
        msg["Subject"] = cmd.subject
    msg["Date"] = email.utils.format_datetime(date)
    msg["Message-ID"] = message_id
    in_reply_to, references = threading_headers(reply)
    if in_reply_to and references:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = references
    msg[SEND_ID_HEADER] = send_id
    msg["MIME-Version"] = "1.0"

    if cmd.text is not None:
        msg.set_content(cmd.text)
        if cmd.html is not None:
            msg.add_alternative(cmd.html, subtype="html")
    elif cmd.html is not None:
        msg.set_content(cmd.html, subtype="html")
    else:
        msg.set_content("")
    for att in attachments or []:
        _attach(msg, att, has_html=cmd.html is not None)
    return msg


def _attach(msg: EmailMessage, att: ResolvedAttachment, *, has_html: bool) -> None:
    maintype, _, subtype = att.content_type.partition("/")
    if not maintype or not subtype:
        maintype, subtype = "application", "octet-stream"
    html_part = msg.get_body(("html",)) if att.content_id and has_html else None
    if html_part is not None and att.content_id:
        # Inline image referenced from the HTML part as cid:...
        html_part.add_related(
            att.data, maintype, subtype, cid=_bracket(att.content_id), filename=att.filename
        )
        return
    msg.add_attachment(att.data, maintype=maintype, subtype=subtype, filename=att.filename)


def to_wire(msg: EmailMessage) -> bytes:
    try:
        return msg.as_bytes(policy=WIRE_POLICY)
    except (UnicodeError, ValueError, email.errors.MessageError) as exc:
        raise ComposeError("send.unencodable", f"the message cannot be encoded: {exc}") from None


def compose_wire(
    cmd: SendRequestedData,
    *,
    send_id: str,
    message_id: str,
    date: datetime,
    reply: ReplyContext | None = None,
    attachments: list[ResolvedAttachment] | None = None,
) -> bytes:
    """The wire bytes of `compose`: written directly when the message is one short-lined ASCII text
    part with plain headers (the email package costs ~1.5 ms a message; this a few µs), else built by
    `compose`. Both give the same bytes for such a message (tests/unit/test_sender_rules.py)."""
    if not attachments:
        fast = _plain_wire(cmd, send_id=send_id, message_id=message_id, date=date, reply=reply)
        if fast is not None:
            return fast
    msg = compose(
        cmd, send_id=send_id, message_id=message_id, date=date, reply=reply, attachments=attachments
    )
    return to_wire(msg)


# What the email package writes unchanged: printable ASCII without encoded-word starts, short lines.
_PLAIN_TEXT = re.compile(r"[\x20-\x7e]*")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9'_-]+(?: [A-Za-z0-9'_-]+)*")
_PLAIN_ADDR = re.compile(r"[A-Za-z0-9._+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_PLAIN_MSGID = re.compile(r"<[A-Za-z0-9._+=-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>")
_HEADER_MAX = 78  # the SMTP policy folds longer lines
_BODY_LINE_MAX = 78  # longer body lines make set_content pick another transfer encoding


def _plain_address(addr: Address) -> str | None:
    mail = addr.email.strip()
    if not _PLAIN_ADDR.fullmatch(mail):
        return None
    if not addr.name:
        return mail
    if not _PLAIN_NAME.fullmatch(addr.name):
        return None
    return f"{addr.name} <{mail}>"


def _plain_headers(
    cmd: SendRequestedData, *, send_id: str, message_id: str, date: datetime, reply: ReplyContext | None
) -> list[str] | None:
    headers: list[tuple[str, str]] = []
    for name, addrs in (("From", [cmd.from_]), ("To", cmd.to), ("Cc", cmd.cc), ("Reply-To", cmd.reply_to)):
        rendered = [_plain_address(a) for a in addrs]
        if any(r is None for r in rendered):
            return None
        if rendered:
            headers.append((name, ", ".join(r for r in rendered if r is not None)))
    if cmd.subject:
        if not _plain_unstructured(cmd.subject):
            return None
        headers.append(("Subject", cmd.subject))
    headers += [("Date", email.utils.format_datetime(date)), ("Message-ID", message_id)]
    in_reply_to, references = threading_headers(reply)
    if in_reply_to and references:
        if not all(_PLAIN_MSGID.fullmatch(i) for i in references.split(" ")):
            return None
        headers += [("In-Reply-To", in_reply_to), ("References", references)]
    if not _plain_unstructured(send_id) or not _PLAIN_MSGID.fullmatch(message_id):
        return None
    headers += [
        (SEND_ID_HEADER, send_id),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'text/plain; charset="utf-8"'),
        ("Content-Transfer-Encoding", "7bit"),
    ]
    lines = [f"{name}: {value}" for name, value in headers]
    return None if any(len(line) > _HEADER_MAX for line in lines) else lines


def _plain_unstructured(value: str) -> bool:
    return (
        bool(_PLAIN_TEXT.fullmatch(value))
        and value == value.strip()
        and "  " not in value
        and "=?" not in value
    )


def _plain_wire(
    cmd: SendRequestedData, *, send_id: str, message_id: str, date: datetime, reply: ReplyContext | None
) -> bytes | None:
    if cmd.html is not None or not cmd.text:
        return None
    lines = _plain_headers(cmd, send_id=send_id, message_id=message_id, date=date, reply=reply)
    if lines is None:
        return None
    try:
        body = cmd.text.encode("ascii").splitlines()
    except UnicodeEncodeError:
        return None
    if any(len(line) > _BODY_LINE_MAX or b"\0" in line for line in body):
        return None
    return "\r\n".join(lines).encode("ascii") + b"\r\n\r\n" + b"".join(line + b"\r\n" for line in body)
