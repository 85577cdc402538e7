"""The ASGI pieces the fetcher's HTTP apps share (admin API, console): types and a bounded body read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it grows past `limit` (the caller answers 413)."""
    body = b""
    while True:
        msg = await receive()
        body += bytes(msg.get("body", b""))
        if len(body) > limit:
            return None
        if not msg.get("more_body"):
            return body
