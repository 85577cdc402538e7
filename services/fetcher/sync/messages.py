"""What a fetched message becomes: its stable key, its `message received` event and its stored document.

Pure functions over the FETCH items of one message (no I/O). Headers are parsed with the cheap
`compat32` header parser; RFC 2047 words are decoded only for the fields events carry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache
from typing import Any, Literal

from contracts.common import Address, MessageRef
from contracts.messages import DeliveryReport, MessageReceived, MessageReceivedData
from mailsync.dsn import CLASSIFICATION_HEADERS, delivery_report
from mailsync.imap_names import decode_mailbox
from services.fetcher.imap.protocol import Value

from .header_fields import plain_fields

_PARSER = BytesHeaderParser(policy=compat32)
# Flags that describe this session, not the message.
_SESSION_FLAGS = frozenset({"\\Recent"})

HEADER_ITEMS = "UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER]"
GMAIL_ITEMS = " X-GM-MSGID X-GM-THRID X-GM-LABELS"


@dataclass(frozen=True)
class FolderContext:
    """Everything about the inbox and folder that shapes a message's event."""

    tenant_id: str
    inbox_id: str
    folder: str
    uidvalidity: int
    source: str
    own_addresses: frozenset[str]
    is_sent: bool = False
    sharing: Literal["private", "metadata", "subject", "full"] = "private"
    resync_id: str | None = None  # set while the inbox's mail is re-announced by a resync

    def doc_id(self, message_key: str) -> str:
        return f"{self.tenant_id}:{self.inbox_id}:{self.folder}:{message_key}"


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


def parse_internaldate(text: str) -> datetime | None:
    """`22-Nov-2026 02:59:55 +0000` (day may be space-padded) → aware UTC datetime; None if malformed."""
    try:
        date, clock, zone = text.strip().split(" ")
        day, mon, year = date.split("-")
        hh, mm, ss = clock.split(":")
        sign = -1 if zone[0] == "-" else 1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * sign
        dt = datetime(int(year), _MONTHS[mon.title()], int(day), int(hh), int(mm), int(ss), tzinfo=UTC)
        return dt - offset
    except (ValueError, KeyError, IndexError, OverflowError):  # OverflowError: past year 9999 in UTC
        return None


class FetchedMessage:
    """Typed view of one FETCH response's items (`UID`, `FLAGS`, `BODY[HEADER]`, ...)."""

    __slots__ = ("_by_name", "_headers", "_internal", "items")

    def __init__(self, items: dict[str, Value]) -> None:
        self.items = items
        self._headers: Message | None = None
        self._by_name: dict[str, list[str]] | None = None
        self._internal: datetime | bool | None = False

    @property
    def uid(self) -> int:
        uid = self.items.get("UID")
        if not isinstance(uid, int):
            raise ValueError("FETCH response without a numeric UID")
        return uid

    @property
    def flags(self) -> list[str]:
        raw = self.items.get("FLAGS")
        if not isinstance(raw, list):
            return []
        return sorted(str(f) for f in raw if isinstance(f, str) and f not in _SESSION_FLAGS)

    @property
    def size(self) -> int:
        size = self.items.get("RFC822.SIZE")
        return size if isinstance(size, int) else 0

    @property
    def modseq(self) -> int:
        m = self.items.get("MODSEQ")
        if isinstance(m, list) and m and isinstance(m[0], int):
            return m[0]
        return 0

    @property
    def internal_date(self) -> datetime | None:
        if self._internal is False:
            raw = self.items.get("INTERNALDATE")
            if isinstance(raw, (bytes, str)):
                text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
                self._internal = parse_internaldate(text)
            else:
                self._internal = None
        assert not isinstance(self._internal, bool)
        return self._internal

    @property
    def gmail_msgid(self) -> str | None:
        v = self.items.get("X-GM-MSGID")
        return str(v) if isinstance(v, int) else None

    @property
    def gmail_thrid(self) -> str | None:
        v = self.items.get("X-GM-THRID")
        return str(v) if isinstance(v, int) else None

    @property
    def gmail_labels(self) -> list[str]:
        v = self.items.get("X-GM-LABELS")
        if not isinstance(v, list):
            return []
        # Labels are mailbox names, so in modified UTF-7 (`&AOk-t&AOk-` is "été") like folder names.
        return sorted(
            decode_mailbox(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x))
            for x in v
            if isinstance(x, (bytes, str, int))
        )

    @property
    def header_bytes(self) -> bytes:
        raw = self.items.get("BODY[HEADER]")
        return raw if isinstance(raw, bytes) else b""

    @property
    def headers(self) -> Message:
        if self._headers is None:
            self._headers = _PARSER.parsebytes(self.header_bytes)
        return self._headers

    def _index(self) -> dict[str, list[str]]:
        if self._by_name is None:
            fields = plain_fields(self.header_bytes)
            if fields is None:  # not plain: the stdlib parses it (and reports its defects)
                fields = [(name, str(value)) for name, value in self.headers.items()]
            index: dict[str, list[str]] = {}
            for name, value in fields:
                index.setdefault(name.lower(), []).append(value)
            self._by_name = index
        return self._by_name

    @property
    def header_defects(self) -> list[str]:
        """The stdlib's defect class names for this header block (a plain block has none)."""
        self._index()  # parses with the stdlib only when the block is not plain
        return [] if self._headers is None else [type(d).__name__ for d in self._headers.defects]

    def header(self, name: str) -> str | None:
        values = self._index().get(name.lower())
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return self._index().get(name.lower(), [])


def decode_words(value: str | None) -> str | None:
    """RFC 2047 decoding that never raises; unknown charsets fall back to the raw text."""
    if value is None:
        return None
    if "=?" not in value:
        return " ".join(value.split())
    try:
        return " ".join(str(make_header(decode_header(value))).split())
    except (LookupError, ValueError, UnicodeError):
        return " ".join(value.split())


def addresses(msg: FetchedMessage, name: str) -> list[Address]:
    values = msg.header_all(name)
    if not values:
        return []
    key = tuple(values)
    if sum(map(len, key)) > CACHED_FIELD_CHARS:  # long lists are rare: not worth the memory
        return list(_parse_addresses(key))
    return list(_cached_addresses(key))


# A mailbox's mail repeats the same few address fields (the owner in To, regular correspondents in
# From): parsing one costs ~40 µs, a lookup well under 1. `Address` is frozen, so sharing is safe.
# At most 8,192 fields of at most 512 characters: a few MB per process.
CACHED_FIELD_CHARS = 512


def _parse_addresses(values: tuple[str, ...]) -> tuple[Address, ...]:
    return tuple(
        Address(name=decode_words(display) or None, email=email[:320])
        for display, email in getaddresses(list(values))
        if email
    )


_cached_addresses = lru_cache(maxsize=8192)(_parse_addresses)


def message_ids(value: str | None) -> list[str]:
    """`<a@b> <c@d>` → ['a@b', 'c@d']; tolerant of missing brackets."""
    if not value:
        return []
    found = [p.strip("<> \t\r\n") for p in value.replace(",", " ").split()]
    return [f for f in found if "@" in f or f]


def parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None:
        return None
    try:
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    except (OverflowError, ValueError):  # e.g. 31 Dec 9999 23:59 -1200 is past year 9999 in UTC
        return None


def message_key(msg: FetchedMessage) -> str:
    """The message's key, stable across folders, UIDVALIDITY resets and resyncs.

    Gmail's X-GM-MSGID where offered; else the Message-ID plus a hash of content that does not change
    between copies (Date, From, Subject, size), so two different mails reusing one Message-ID stay
    apart; mail without a Message-ID gets a key from that content hash alone (kept, not dropped).
    """
    gm = msg.gmail_msgid
    if gm:
        return f"gm:{gm}"
    mid = (msg.header("Message-ID") or "").strip()
    content = "\x1f".join(
        [mid, msg.header("Date") or "", msg.header("From") or "", msg.header("Subject") or "", str(msg.size)]
    )
    digest = hashlib.sha256(content.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"m:{digest}" if mid else f"h:{digest}"


# Headers events carry so subscribers can tell auto-replies, lists and bounces apart: the same list
# the linker's DSN/auto-reply helpers read.
SELECTED_HEADERS = CLASSIFICATION_HEADERS


def selected_headers(msg: FetchedMessage) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in SELECTED_HEADERS:
        value = msg.header(name)
        if value is not None:
            out[name] = " ".join(value.split())[:998]
    return out


def direction(
    ctx: FolderContext, sender: list[Address], labels: list[str] | None = None
) -> Literal["inbound", "outbound"]:
    # Gmail's All Mail mixes both ways; its `\Sent` label marks what the account sent (aliases too).
    if ctx.is_sent or "\\Sent" in (labels or ()):
        return "outbound"
    if any(a.email.lower() in ctx.own_addresses for a in sender):
        return "outbound"
    return "inbound"


# Fields RFC 5322 allows at most once; a second copy marks a broken (or forged) message.
_SINGLE_FIELDS = (
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "message-id",
    "in-reply-to",
    "references",
    "subject",
    "date",
)


def header_problems(msg: FetchedMessage) -> list[str]:
    """Stable short codes for what is malformed in the header block; empty for well-formed mail.

    The event still carries what could be read; these codes go to `parse_errors` so a consumer can
    tell "no Date" from "a Date nobody can read". The raw bytes are stored with the body either way.
    """
    raw = msg.header_bytes
    out: set[str] = set()
    if not raw.strip():
        out.add("header.empty")
    if b"\x00" in raw:
        out.add("header.nul_byte")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        out.add("header.not_utf8")
    out.update(f"header.{name}" for name in msg.header_defects)
    out.update(f"header.duplicate.{name}" for name in _SINGLE_FIELDS if len(msg.header_all(name)) > 1)
    date = msg.header("Date")
    if date is not None and date.strip() and parse_date(date) is None:
        out.add("date.invalid")
    return sorted(out)


def received_event(
    ctx: FolderContext, msg: FetchedMessage, *, history: bool, key: str | None = None
) -> MessageReceived:
    """The message's `message received` event. Never raises over the message's content: a header block
    that cannot become a full event still yields one (addresses and subject left out, `parse_errors`
    naming the failure), so the message is stored and announced instead of stalling its folder."""
    key = key or message_key(msg)
    try:
        return _received_event(ctx, msg, history=history, key=key)
    except Exception as exc:  # any content-driven failure becomes a flag, not a stall
        return _minimal_event(
            ctx, msg, history=history, key=key, error=f"event.unbuildable.{type(exc).__name__}"
        )


def _minimal_event(
    ctx: FolderContext, msg: FetchedMessage, *, history: bool, key: str, error: str
) -> MessageReceived:
    data = MessageReceivedData(
        ref=MessageRef(message_key=key, folder=ctx.folder, uidvalidity=ctx.uidvalidity, uid=msg.uid),
        history=history,
        direction="outbound" if ctx.is_sent else "inbound",
        internal_date=msg.internal_date,
        size=max(0, msg.size),
        flags=msg.flags,
        parse_errors=[error],
        resync_id=ctx.resync_id if history else None,
    )
    return MessageReceived.build(
        data=data,
        tenant_id=ctx.tenant_id,
        inbox_id=ctx.inbox_id,
        source=ctx.source,
        subject=key,
        time=msg.internal_date,
    )


def _received_event(ctx: FolderContext, msg: FetchedMessage, *, history: bool, key: str) -> MessageReceived:
    h = msg
    sender = addresses(h, "From")
    mid_list = message_ids(msg.header("Message-ID"))
    subject = None if ctx.sharing == "metadata" else decode_words(msg.header("Subject"))
    raw_ctype = msg.header("Content-Type") or ""
    ctype = raw_ctype.lower()
    data = MessageReceivedData(
        ref=MessageRef(message_key=key, folder=ctx.folder, uidvalidity=ctx.uidvalidity, uid=msg.uid),
        history=history,
        direction=direction(ctx, sender, msg.gmail_labels),
        message_id=mid_list[0] if mid_list else None,
        in_reply_to=message_ids(msg.header("In-Reply-To")),
        references=message_ids(msg.header("References")),
        subject=subject,
        from_=sender,
        sender=next(iter(addresses(h, "Sender")), None),
        to=addresses(h, "To"),
        cc=addresses(h, "Cc"),
        bcc=addresses(h, "Bcc"),
        reply_to=addresses(h, "Reply-To"),
        date=parse_date(msg.header("Date")),
        internal_date=msg.internal_date,
        size=msg.size,
        flags=msg.flags,
        gmail_labels=msg.gmail_labels,
        gmail_thread_id=msg.gmail_thrid,
        auto_submitted=msg.header("Auto-Submitted"),
        mailsync_send_id=msg.header("X-Mailsync-Send-Id"),
        # From headers alone: a multipart/mixed message almost always carries attachments.
        has_attachments=ctype.startswith("multipart/mixed"),
        body_stored=False,
        content_type=" ".join(raw_ctype.split()) or None,
        headers=selected_headers(msg),
        parse_errors=header_problems(msg),
        resync_id=ctx.resync_id if history else None,
        delivery_report=report_of(msg) if ctype.startswith("multipart/report") else None,
    )
    return MessageReceived.build(
        data=data,
        tenant_id=ctx.tenant_id,
        inbox_id=ctx.inbox_id,
        source=ctx.source,
        subject=key,
        time=msg.internal_date or data.date,
    )


REPORT_MAX_BYTES = 1024 * 1024  # DSNs are small; a bigger "report" is not worth fetching twice


def is_report(msg: FetchedMessage) -> bool:
    """A delivery report (multipart/report) small enough to parse when it arrives."""
    ctype = (msg.header("Content-Type") or "").lower()
    return ctype.startswith("multipart/report") and 0 <= msg.size <= REPORT_MAX_BYTES


def report_of(msg: FetchedMessage) -> DeliveryReport | None:
    """The parsed delivery-status part when the whole message was fetched (`BODY[]`), else None."""
    raw = msg.items.get("BODY[]")
    if not isinstance(raw, bytes):
        return None
    try:
        return delivery_report(message_from_bytes(raw, policy=compat32))
    except Exception:  # a malformed report must not cost the event; the raw mail is stored anyway
        return None


def message_document(ctx: FolderContext, event: MessageReceived, modseq: int) -> dict[str, Any]:
    """The stored document of a message (collection `messages`), keyed by inbox, folder and key."""
    d = event.data
    return {
        "_id": ctx.doc_id(d.ref.message_key),
        "tenant_id": ctx.tenant_id,
        "inbox_id": ctx.inbox_id,
        "folder": ctx.folder,
        "message_key": d.ref.message_key,
        "uidvalidity": d.ref.uidvalidity,
        "uid": d.ref.uid,
        "modseq": modseq,
        "flags": d.flags,
        "gmail_labels": d.gmail_labels,
        "size": d.size,
        "message_id": d.message_id,
        "subject": d.subject,
        "from": [a.model_dump() for a in d.from_],
        "date": d.date,
        "internal_date": d.internal_date,
        "direction": d.direction,
        "history": d.history,
        "body_stored": False,
        "deleted": False,
        "received_event_id": event.id,
        "parse_errors": d.parse_errors,
        # The janitor's purge of a deactivated inbox deletes only what was stored before the deactivation.
        "stored_at": datetime.now(UTC),
    }
