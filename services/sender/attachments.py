"""Attachment content: inline base64 or by reference, always within the message size limit.

References: `blob:<id>` is a document in the sender's `send_blobs` collection (`{_id, data: bytes,
content_type?}`) written by whoever stages large files; `https://…` is fetched with a bounded read.
"""

from __future__ import annotations

import base64
import binascii

import httpx
from pymongo.asynchronous.database import AsyncDatabase

from contracts.sending import Attachment
from mailsync.store import Document

from .compose import ComposeError, ResolvedAttachment

BLOBS = "send_blobs"


class AttachmentUnavailable(Exception):
    """A referenced attachment could not be read now (network, server): worth a retry."""


def _too_big(name: str, limit: int) -> ComposeError:
    return ComposeError(
        "send.attachment_too_large",
        f"attachment {name!r} makes the message larger than the limit of {limit} bytes",
        "attachments",
    )


async def resolve(
    items: list[Attachment], db: AsyncDatabase[Document], http: httpx.AsyncClient, limit: int
) -> list[ResolvedAttachment]:
    """Content of every attachment; the sum of raw sizes stays under `limit` (base64 adds a third)."""
    out: list[ResolvedAttachment] = []
    budget = limit
    for att in items:
        if att.content_b64 is not None:
            if len(att.content_b64) * 3 // 4 > budget:
                raise _too_big(att.filename, limit)
            try:
                data = base64.b64decode(att.content_b64, validate=True)
            except (binascii.Error, ValueError):
                raise ComposeError(
                    "send.attachment_invalid",
                    f"attachment {att.filename!r} is not valid base64",
                    "attachments",
                ) from None
        else:
            data = await _by_ref(att.ref or "", att.filename, db, http, budget=budget, limit=limit)
        budget -= len(data)
        if budget < 0:
            raise _too_big(att.filename, limit)
        out.append(ResolvedAttachment(att.filename, att.content_type, data, att.content_id))
    return out


async def _by_ref(
    ref: str, name: str, db: AsyncDatabase[Document], http: httpx.AsyncClient, *, budget: int, limit: int
) -> bytes:
    if ref.startswith("blob:"):
        doc = await db[BLOBS].find_one({"_id": ref.removeprefix("blob:")})
        if doc is None or not isinstance(doc.get("data"), bytes):
            raise ComposeError(
                "send.attachment_missing", f"attachment {name!r}: no blob {ref!r}", "attachments"
            )
        data: bytes = doc["data"]
        if len(data) > budget:
            raise _too_big(name, limit)
        return data
    if ref.startswith("https://"):
        try:
            async with http.stream("GET", ref) as resp:
                if resp.status_code == 404:
                    raise ComposeError(
                        "send.attachment_missing", f"attachment {name!r}: HTTP 404", "attachments"
                    )
                if resp.status_code >= 400:
                    raise AttachmentUnavailable(f"attachment {name!r}: HTTP {resp.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > budget:
                        raise _too_big(name, limit)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise AttachmentUnavailable(f"attachment {name!r}: {type(exc).__name__}") from None
    raise ComposeError(
        "send.attachment_ref_unsupported",
        f"attachment {name!r}: reference must be `blob:<id>` or an https URL",
        "attachments",
    )
