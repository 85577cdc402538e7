"""Sent copies in batches on one IMAP session: the wire text and its answers (no I/O).

One `UID SEARCH` for all Message-IDs of a batch (an `OR` chain) says whether any is in the Sent folder
already; then the batch's APPENDs go out pipelined in one write, each with a non-synchronizing literal
(LITERAL+, RFC 7888), so the batch costs two round trips instead of two per message. Each APPEND keeps
its own tag and answer: one refused message does not fail the others.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .sent_copy import quote

MAX_BATCH = 32  # Message-IDs per SEARCH (a nested OR chain) and APPENDs per write

_CRLF = re.compile(rb"\r\n|\r|\n")
_TAGGED = re.compile(rb"^(?P<tag>[A-Za-z0-9]+) (?P<status>OK|NO|BAD)\b ?(?P<text>.*?)\r?\n?$", re.IGNORECASE)
_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r?\n?$")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)


@dataclass(frozen=True)
class CopyItem:
    message_id: str
    raw: bytes
    internal_date: str  # as imaplib.Time2Internaldate gives it: quoted


@dataclass(frozen=True)
class Tagged:
    tag: str
    status: str  # OK, NO or BAD
    text: str


def search_any(message_ids: Sequence[str]) -> list[str]:
    """`UID SEARCH` arguments matching a message with any of these Message-IDs (prefix `OR`s)."""
    if not message_ids:
        raise ValueError("no Message-ID to search for")
    terms: list[str] = []
    for i, mid in enumerate(message_ids):
        if i < len(message_ids) - 1:
            terms.append("OR")
        terms += ["HEADER", "Message-ID", quote(mid)]
    return terms


def with_crlf(raw: bytes) -> bytes:
    """Line ends as IMAP wants them (what imaplib's own APPEND does), so the literal length is exact."""
    return _CRLF.sub(b"\r\n", raw)


def append_commands(tags: Sequence[str], folder: str, items: Sequence[CopyItem]) -> bytes:
    """Pipelined `APPEND`s, one per item, `\\Seen`, each message as a LITERAL+ literal."""
    out = bytearray()
    for tag, item in zip(tags, items, strict=True):
        body = with_crlf(item.raw)
        head = f"{tag} APPEND {quote(folder)} (\\Seen) {item.internal_date} {{{len(body)}+}}\r\n"
        out += head.encode("ascii")
        out += body
        out += b"\r\n"
    return bytes(out)


def literal_length(line: bytes) -> int | None:
    """The size of the literal announced at the end of a response line, if any."""
    m = _LITERAL_AT_END.search(line)
    return int(m.group(1)) if m else None


def parse_tagged(line: bytes) -> Tagged | None:
    """A tagged completion (`A1 OK ...`); None for untagged data (`* ...`) and continuations (`+`)."""
    if line.startswith((b"*", b"+")):
        return None
    m = _TAGGED.match(line)
    if m is None:
        return None
    text = m.group("text").decode("utf-8", "replace")
    return Tagged(m.group("tag").decode("ascii"), m.group("status").upper().decode("ascii"), text)


def appended_uid(text: str) -> tuple[int | None, int | None]:
    """(uid, uidvalidity) from an APPEND's `[APPENDUID validity uid]` (UIDPLUS), else (None, None)."""
    m = _APPENDUID.search(text.encode("utf-8", "replace"))
    return (int(m.group(2)), int(m.group(1))) if m else (None, None)
