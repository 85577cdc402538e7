"""Message bodies: what a raw message tells (snippet, attachments, MIME defects) and where it is kept.

`analyze` is pure. Bodies are stored as chunked documents in `message_bodies` (`_id` =
`<message doc id>:<n>`, 1 MiB each) so no document nears the 16 MiB BSON limit; a message above the
size cap is not fetched but flagged on its message document, never dropped.
"""

from __future__ import annotations

import quopri
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from typing import Any

from bson import Binary
from pymongo.asynchronous.database import AsyncDatabase

from mailsync.store import insert_new
from services.fetcher.imap.protocol import Value

BODIES = "message_bodies"
CHUNK = 1 << 20
SNIPPET_CHARS = 200
# Initial sync fetches headers and bodies together; one unit (one FETCH, one batch of writes) holds at
# most this many bytes of bodies, so the three units in flight stay small whatever the mail's size.
UNIT_BYTES = 16 << 20
HEADER_SECTION = "BODY.PEEK[HEADER]"
WHOLE_SECTION = "BODY.PEEK[]"


def unit_length(sizes: list[int], *, cap: int, budget: int) -> int:
    """How many of `sizes` (RFC822.SIZE, in fetch order) make the next unit: the longest prefix whose
    bodies within `cap` add up to at most `budget`, and at least one message. Bodies above `cap` are
    not fetched, so they cost nothing here."""
    total = 0
    for n, size in enumerate(sizes):
        if size <= cap:
            total += size
            if total > budget and n > 0:
                return n
    return len(sizes)


def header_of(raw: bytes) -> bytes:
    """The header block of a whole message, as `BODY[HEADER]` returns it (with the empty line)."""
    end = raw.find(b"\r\n\r\n")
    return raw[: end + 4] if end >= 0 else raw


def without_body(items: dict[str, Value]) -> dict[str, Value]:
    """FETCH items of a whole message as a header FETCH would have returned them (`BODY[HEADER]`, no
    `BODY[]`), so the `message received` event is the same whichever way the message came."""
    raw = items.get("BODY[]")
    out = {k: v for k, v in items.items() if k != "BODY[]"}
    if isinstance(raw, bytes):
        out["BODY[HEADER]"] = header_of(raw)
    return out


@dataclass
class BodyInfo:
    snippet: str | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def analyze(raw: bytes) -> BodyInfo:
    """Snippet (first text/plain words), attachment metadata and MIME defects; never raises."""
    plain = _plain_text(raw)
    return plain if plain is not None else _parsed(raw)


def _parsed(raw: bytes) -> BodyInfo:
    """`analyze` through the stdlib parser (any message)."""
    info = BodyInfo()
    try:
        msg = message_from_bytes(raw, policy=compat32)
    except Exception as exc:  # the stdlib parser is lenient; anything else is a defect to record
        info.parse_errors.append(f"unparseable MIME: {type(exc).__name__}")
        return info
    try:
        _walk(msg, info)
    except Exception as exc:  # e.g. RecursionError walking absurdly deep nesting: keep what was found
        info.parse_errors.append(f"unparseable MIME: {type(exc).__name__}")
    info.parse_errors = sorted(set(info.parse_errors))
    return info


def _walk(msg: Message, info: BodyInfo) -> None:
    for part in msg.walk():
        info.parse_errors += [type(d).__name__ for d in part.defects]
        if part.is_multipart():
            continue
        filename = part.get_filename()
        disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        if filename or disposition == "attachment":
            payload = part.get_payload(decode=True)
            info.attachments.append(
                {
                    "filename": filename,
                    "content_type": part.get_content_type(),
                    "size": len(payload) if isinstance(payload, bytes) else 0,
                    "content_id": (part.get("Content-ID") or "").strip("<> ") or None,
                }
            )
        elif info.snippet is None and part.get_content_type() == "text/plain":
            info.snippet = " ".join(_text(part).split())[:SNIPPET_CHARS] or None


# The fast path: a message of one text/plain part whose header block the stdlib parser reads without a
# defect. Anything it is not sure of goes to the full parse; the result is the same either way
# (tests/unit/test_body_fast_path.py compares them). It skips building a Message tree: ~4x faster.
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:[\x20-\x7e\t]*|[ \t][\x20-\x7e\t]*")
_PLAIN = re.compile(
    r"text/plain\s*((?:;\s*[A-Za-z0-9-]+\s*=\s*(?:[A-Za-z0-9._:+/-]+|\"[A-Za-z0-9._:+/-]*\")\s*)*)", re.I
)
_PARAM = re.compile(r';\s*([A-Za-z0-9-]+)\s*=\s*"?([A-Za-z0-9._:+/-]*)"?\s*')
_WATCHED = (b"content-type", b"content-transfer-encoding", b"content-disposition")


def _plain_text(raw: bytes) -> BodyInfo | None:
    """`analyze` for a plain single-part message, or None when the message is anything else."""
    end = raw.find(b"\r\n\r\n")
    fields = _watched_fields(raw[:end]) if end > 0 else None
    if fields is None or b"content-disposition" in fields:
        return None
    charset = None
    ctype = fields.get(b"content-type")
    if ctype is not None:
        m = _PLAIN.fullmatch(ctype.decode("ascii"))
        if m is None:
            return None
        params: dict[str, str] = {}
        for k, v in _PARAM.findall(m.group(1)):
            params.setdefault(k.lower(), v)  # the parser reads the first of a repeated parameter
        if "name" in params:
            return None  # `name` makes it an attachment
        charset = params.get("charset")
    body = raw[end + 4 :]
    # The parser compares the field as it stands (leading blanks dropped, trailing ones kept).
    cte = fields.get(b"content-transfer-encoding", b"").decode("ascii").lower()
    if cte == "quoted-printable":
        body = quopri.decodestring(body)
    elif cte in ("base64", "x-uuencode", "uuencode", "uue", "x-uue"):
        return None
    try:
        text = body.decode(charset.lower() if charset else "utf-8", "replace")
    except LookupError:
        text = body.decode("utf-8", "replace")
    return BodyInfo(snippet=" ".join(text.split())[:SNIPPET_CHARS] or None)


def _watched_fields(head: bytes) -> dict[bytes, bytes] | None:
    """Content-Type/-Transfer-Encoding/-Disposition values (lower-case names) of a header block the
    parser reads without a defect; None when unsure: odd bytes or line ends, a line that is no header,
    a first line that continues nothing, a watched field folded or repeated."""
    fields: dict[bytes, bytes] = {}
    name = b""
    for n, line in enumerate(head.split(b"\r\n")):
        if _HEADER_LINE.fullmatch(line) is None:
            return None
        if line[:1] in (b" ", b"\t"):
            if n == 0 or name in fields:
                return None
            continue
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in _WATCHED:
            if name in fields:
                return None
            fields[name] = value.lstrip(b" \t")
    return fields


class BodyStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._col = db[BODIES]

    @staticmethod
    def documents(message_doc_id: str, raw: bytes, meta: dict[str, Any]) -> list[dict[str, Any]]:
        """Chunk documents of one body; chunk 0 also carries what `analyze` found (`meta`)."""
        chunks = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)] or [b""]
        now = datetime.now(UTC)  # `stored_at`: the janitor's purge bound, as on message documents
        docs = [
            {
                "_id": f"{message_doc_id}:{n}",
                "message": message_doc_id,
                "n": n,
                "data": Binary(data),
                "stored_at": now,
            }
            for n, data in enumerate(chunks)
        ]
        docs[0].update(meta, chunks=len(chunks), size=len(raw))
        return docs

    async def put_many(self, docs: list[dict[str, Any]]) -> None:
        """Insert; a duplicate key is a replay of a body already stored (same bytes)."""
        await insert_new(self._col, docs)

    async def get(self, message_doc_id: str) -> bytes | None:
        parts = [d async for d in self._col.find({"message": message_doc_id})]
        if not parts:
            return None
        return b"".join(bytes(d["data"]) for d in sorted(parts, key=lambda d: d["n"]))
