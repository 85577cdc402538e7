"""Message bodies: what a raw message tells (snippet, attachments, MIME defects) and where it is kept.

`analyze` is pure. Bodies are stored as chunked documents in `message_bodies` (`_id` =
`<message doc id>:<n>`, 1 MiB each) so no document nears the 16 MiB BSON limit; a message above the
size cap is not fetched but flagged on its message document, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from typing import Any

from bson import Binary
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

BODIES = "message_bodies"
CHUNK = 1 << 20
SNIPPET_CHARS = 200


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


class BodyStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._col = db[BODIES]

    @staticmethod
    def documents(message_doc_id: str, raw: bytes, meta: dict[str, Any]) -> list[dict[str, Any]]:
        """Chunk documents of one body; chunk 0 also carries what `analyze` found (`meta`)."""
        chunks = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)] or [b""]
        docs = [
            {"_id": f"{message_doc_id}:{n}", "message": message_doc_id, "n": n, "data": Binary(data)}
            for n, data in enumerate(chunks)
        ]
        docs[0].update(meta, chunks=len(chunks), size=len(raw))
        return docs

    async def put_many(self, docs: list[dict[str, Any]]) -> None:
        """Insert; a duplicate key is a replay of a body already stored (same bytes)."""
        if not docs:
            return
        try:
            await self._col.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise

    async def get(self, message_doc_id: str) -> bytes | None:
        parts = [d async for d in self._col.find({"message": message_doc_id})]
        if not parts:
            return None
        return b"".join(bytes(d["data"]) for d in sorted(parts, key=lambda d: d["n"]))
