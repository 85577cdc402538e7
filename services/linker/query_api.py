"""Query API: the emails linked to a CRM record, newest first, paginated, filtered by inbox owner and by
what the viewer may see (like Zoho's Emails related list).

`GET /v1/linked-emails?record_id=…&owner=all|<user id>&limit=…&cursor=…` with the caller's identity in
`X-Mailsync-Tenant` and `X-Mailsync-User` (set by the CRM's gateway). A record of another tenant is
never found (404); a `tenant_id` parameter naming another tenant than the caller's is refused (403).
The OpenAPI document is served at `/v1/openapi.json`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from .sharing import Level, redact, visible_level
from .store import Cursor, LinkStore

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_LIMIT = 200


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Query:
    tenant_id: str
    viewer: str
    record_id: str
    owner: str = "all"
    limit: int = 50
    cursor: Cursor | None = None


def encode_cursor(sort_at: datetime, doc_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([sort_at.isoformat(), doc_id]).encode()).decode()


def decode_cursor(value: str) -> Cursor:
    try:
        at, doc_id = json.loads(base64.urlsafe_b64decode(value.encode()))
        return datetime.fromisoformat(at), str(doc_id)
    except (ValueError, TypeError) as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from exc


def parse_query(headers: dict[str, str], raw_query: str) -> Query:
    tenant = headers.get("x-mailsync-tenant", "").strip()
    viewer = headers.get("x-mailsync-user", "").strip()
    if not tenant or not viewer:
        raise ApiError(401, "identity_missing", "X-Mailsync-Tenant and X-Mailsync-User are required")
    params = {k: v[-1] for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
    if params.get("tenant_id") not in (None, tenant):
        raise ApiError(403, "tenant_forbidden", "a caller sees only its own tenant")
    record_id = params.get("record_id", "").strip()
    if not record_id:
        raise ApiError(400, "record_id_missing", "record_id is required")
    try:
        limit = int(params.get("limit", "50"))
    except ValueError as exc:
        raise ApiError(400, "invalid_limit", "limit must be an integer") from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "invalid_limit", f"limit must be between 1 and {MAX_LIMIT}")
    cursor = decode_cursor(params["cursor"]) if params.get("cursor") else None
    owner = params.get("owner", "all").strip() or "all"
    return Query(tenant, viewer, record_id, owner, limit, cursor)


def _item(doc: dict[str, Any], level: Level) -> dict[str, Any]:
    item = {
        "message_key": doc["message_key"],
        "inbox_id": doc["inbox_id"],
        "owner_user_id": doc.get("owner_user_id"),
        "direction": doc["direction"],
        "date": doc["sort_at"].isoformat(),
        "from": doc.get("from", []),
        "to": doc.get("to", []),
        "cc": doc.get("cc", []),
        "subject": doc.get("subject"),
        "thread_id": doc.get("thread_id"),
        "links": doc.get("links") or [],
        "ref": doc.get("ref"),
        "has_attachments": doc.get("has_attachments", False),
        "body_stored": doc.get("body_stored", False),
    }
    return redact(item, level)


async def linked_emails(store: LinkStore, q: Query) -> dict[str, Any]:
    """The page of emails linked to a record that the viewer may see."""
    if not await store.record_exists(q.tenant_id, q.record_id):
        raise ApiError(404, "record_not_found", "no such record")
    levels: dict[str, Level] = {}
    owners: dict[str, str] = {}
    for inbox in await store.inboxes(q.tenant_id):
        if q.owner not in ("all", inbox.owner_user_id):
            continue
        level = visible_level(q.viewer, inbox.owner_user_id, inbox.sharing, list(inbox.shared_with))
        if level is not None:
            levels[inbox.inbox_id] = level
            owners[inbox.inbox_id] = inbox.owner_user_id
    docs = (
        await store.linked(q.tenant_id, q.record_id, levels.keys(), q.cursor, q.limit + 1) if levels else []
    )
    more = len(docs) > q.limit
    docs = docs[: q.limit]
    items = [_item({**d, "owner_user_id": owners[d["inbox_id"]]}, levels[d["inbox_id"]]) for d in docs]
    next_cursor = encode_cursor(docs[-1]["sort_at"], docs[-1]["_id"]) if more and docs else None
    return {"record_id": q.record_id, "items": items, "next_cursor": next_cursor}


_ADDRESS = {
    "type": "object",
    "properties": {"name": {"type": ["string", "null"]}, "email": {"type": "string"}},
}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "mailsync linker query API", "version": "1.0.0"},
    "paths": {
        "/v1/linked-emails": {
            "get": {
                "summary": "Emails linked to a CRM record, newest first, as the viewer may see them",
                "parameters": [
                    {
                        "name": "X-Mailsync-Tenant",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "X-Mailsync-User",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {"name": "record_id", "in": "query", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "owner",
                        "in": "query",
                        "description": "`all` or the user id of the inboxes' owner",
                        "schema": {"type": "string", "default": "all"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "tenant_id",
                        "in": "query",
                        "description": "Optional; must equal the caller's tenant",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "A page of emails",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}}},
                    },
                    "400": {
                        "description": "Invalid parameter",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                    "401": {
                        "description": "Identity headers missing",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                    "403": {
                        "description": "Another tenant",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                    "404": {
                        "description": "No such record in the caller's tenant",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                },
            }
        }
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                "required": ["code", "message"],
            },
            "Email": {
                "type": "object",
                "properties": {
                    "message_key": {"type": "string"},
                    "inbox_id": {"type": "string"},
                    "owner_user_id": {"type": "string"},
                    "direction": {"enum": ["inbound", "outbound"]},
                    "date": {"type": "string", "format": "date-time"},
                    "from": {"type": "array", "items": _ADDRESS},
                    "to": {"type": "array", "items": _ADDRESS},
                    "cc": {"type": "array", "items": _ADDRESS},
                    "subject": {"type": ["string", "null"], "description": "null below `subject` visibility"},
                    "thread_id": {"type": ["string", "null"]},
                    "links": {"type": "array", "items": {"type": "object"}},
                    "ref": {
                        "type": ["object", "null"],
                        "description": "Where the body lives (folder, UID); null below `full` visibility",
                    },
                    "has_attachments": {"type": ["boolean", "null"]},
                    "body_stored": {"type": ["boolean", "null"]},
                    "visibility": {"enum": ["full", "subject", "metadata"]},
                },
            },
            "Page": {
                "type": "object",
                "properties": {
                    "record_id": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Email"}},
                    "next_cursor": {"type": ["string", "null"]},
                },
            },
        }
    },
}


async def _respond(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def linked_emails_app(store: LinkStore) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, {"code": "method_not_allowed", "message": "use GET"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            query = parse_query(headers, scope.get("query_string", b"").decode("latin-1"))
            body = await linked_emails(store, query)
        except ApiError as e:
            await _respond(send, e.status, {"code": e.code, "message": e.message})
            return
        await _respond(send, 200, body)

    return app


async def openapi_app(scope: Scope, receive: Receive, send: Send) -> None:
    await _respond(send, 200, OPENAPI)
