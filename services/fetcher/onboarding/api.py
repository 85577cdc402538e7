"""The admin HTTP API (ASGI), served by the fetcher beside /healthz and /readyz.

FastStream matches exact paths only, so the inbox is named in the query (`?tenant_id=&inbox_id=`):

    GET  /admin/openapi.json                     this API as OpenAPI 3.1
    GET  /admin/presets                          provider presets
    POST /admin/discover        {"email"}        autodiscovery, with the winning source
    POST /admin/test            SettingsInput    connection test without saving
    GET  /admin/inboxes?tenant_id=&owner_user_id=   list
    POST /admin/inboxes         InboxInput       add (tests first; 422 unless `force`)
    GET  /admin/inbox?tenant_id=&inbox_id=       show
    PATCH /admin/inbox?...      InboxUpdate      update (connection changes are tested first)
    DELETE /admin/inbox?...                      remove
    POST /admin/inbox/test?...                   test the stored settings
    POST /admin/inbox/pause?... | /resume?...    ActionInput

Responses never contain a secret; errors are `{"error": ErrorInfo}` with a stable code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ValidationError

from mailsync.logs import scrub
from services.fetcher.asgi import Receive, Scope, Send, read_body

from . import presets
from .inboxes import Onboarding, OnboardingError, _err
from .models import ActionInput, InboxInput, InboxUpdate, SettingsInput

log = logging.getLogger("mailsync.fetcher.admin")

Handler = Callable[["Request"], Awaitable[tuple[int, Any]]]
MAX_BODY = 256 * 1024


class Request:
    def __init__(self, scope: Scope, body: bytes) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


def _validation_error(exc: ValidationError) -> dict[str, Any]:
    # Pydantic errors echo the input; only locations and messages are returned (no values).
    problems = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
    first = problems[0] if problems else {"field": None, "message": "invalid input"}
    return {
        "error": {
            "code": "input.invalid",
            "message": f"{first['field']}: {first['message']}",
            "field": first["field"],
            "hint": "fix the field and send again",
            "server_response": None,
        },
        "problems": problems,
    }


class AdminApi:
    def __init__(self, onboarding: Onboarding) -> None:
        self.ob = onboarding
        self.table: dict[str, dict[str, Handler]] = {
            "/admin/openapi.json": {"GET": self.openapi},
            "/admin/presets": {"GET": self.presets},
            "/admin/discover": {"POST": self.discover},
            "/admin/test": {"POST": self.test_settings},
            "/admin/inboxes": {"GET": self.list, "POST": self.add},
            "/admin/inbox": {"GET": self.show, "PATCH": self.update, "DELETE": self.remove},
            "/admin/inbox/test": {"POST": self.test},
            "/admin/inbox/pause": {"POST": self.pause},
            "/admin/inbox/resume": {"POST": self.resume},
        }

    def routes(self) -> list[tuple[str, Any]]:
        return [(path, self._app(path)) for path in self.table]

    def _app(self, path: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        methods = self.table[path]

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            body = await read_body(receive, MAX_BODY)
            if body is None:
                await _respond(send, 413, {"error": {"code": "input.too_large", "message": "body too large"}})
                return
            handler = methods.get(scope["method"])
            if handler is None:
                await _respond(
                    send,
                    405,
                    {
                        "error": {
                            "code": "http.method_not_allowed",
                            "message": f"{scope['method']} not allowed on {path}",
                        }
                    },
                )
                return
            try:
                status, payload = await handler(Request(scope, body))
            except OnboardingError as exc:
                status, payload = exc.status, exc.body
            except ValidationError as exc:
                status, payload = 422, _validation_error(exc)
            except json.JSONDecodeError:
                status, payload = 400, {"error": {"code": "input.bad_json", "message": "body is not JSON"}}
            except Exception as exc:  # never a stack trace or a secret to the caller
                log.exception("admin request failed", extra={"path": path})
                status, payload = 500, {"error": {"code": "internal", "message": scrub(type(exc).__name__)}}
            log.info("admin request", extra={"method": scope["method"], "path": path, "status": status})
            await _respond(send, status, payload)

        return app

    # ------------------------------------------------------------ handlers

    @staticmethod
    def _inbox(req: Request) -> tuple[str | None, str]:
        inbox_id = req.query.get("inbox_id")
        if not inbox_id:
            raise _err(400, "input.inbox_id_missing", "query parameter inbox_id is required", "inbox_id")
        return req.query.get("tenant_id"), inbox_id

    async def openapi(self, req: Request) -> tuple[int, Any]:
        return 200, openapi_document()

    async def presets(self, req: Request) -> tuple[int, Any]:
        return 200, {"presets": [p.model_dump() for p in presets.all_presets().values()]}

    async def discover(self, req: Request) -> tuple[int, Any]:
        email = str(req.json().get("email", ""))
        return 200, (await self.ob.discoverer.discover(email)).as_dict()

    async def test_settings(self, req: Request) -> tuple[int, Any]:
        return 200, await self.ob.test_settings(SettingsInput.model_validate(req.json()))

    async def list(self, req: Request) -> tuple[int, Any]:
        return 200, {
            "inboxes": await self.ob.list_inboxes(req.query.get("tenant_id"), req.query.get("owner_user_id"))
        }

    async def add(self, req: Request) -> tuple[int, Any]:
        return await self.ob.add(InboxInput.model_validate(req.json()))

    async def show(self, req: Request) -> tuple[int, Any]:
        return 200, await self.ob.show(*self._inbox(req))

    async def update(self, req: Request) -> tuple[int, Any]:
        return await self.ob.update(*self._inbox(req), InboxUpdate.model_validate(req.json()))

    async def remove(self, req: Request) -> tuple[int, Any]:
        return 200, await self.ob.action(*self._inbox(req), "remove", ActionInput.model_validate(req.json()))

    async def test(self, req: Request) -> tuple[int, Any]:
        body = req.json()
        return 200, await self.ob.test(
            *self._inbox(req), body.get("request_id") if isinstance(body, dict) else None
        )

    async def pause(self, req: Request) -> tuple[int, Any]:
        return 200, await self.ob.action(*self._inbox(req), "pause", ActionInput.model_validate(req.json()))

    async def resume(self, req: Request) -> tuple[int, Any]:
        return 200, await self.ob.action(*self._inbox(req), "resume", ActionInput.model_validate(req.json()))


async def _respond(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload, default=str).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def openapi_document() -> dict[str, Any]:
    components: dict[str, Any] = {}
    for model in (SettingsInput, InboxInput, InboxUpdate, ActionInput):
        schema = _schema(model)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    inbox_q = [
        {"name": "tenant_id", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "inbox_id", "in": "query", "required": True, "schema": {"type": "string"}},
    ]

    def body(name: str) -> dict[str, Any]:
        return {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }

    ok = {"200": {"description": "OK"}, "4XX": {"description": "`{error: {code, message, field, hint}}`"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailsync fetcher admin API", "version": "1"},
        "paths": {
            "/admin/presets": {"get": {"summary": "Provider presets", "responses": ok}},
            "/admin/discover": {
                "post": {
                    "summary": "Autodiscover server settings for an address",
                    "responses": ok,
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"email": {"type": "string"}}}
                            }
                        }
                    },
                }
            },
            "/admin/test": {
                "post": {
                    "summary": "Test settings without saving",
                    "requestBody": body("SettingsInput"),
                    "responses": ok,
                }
            },
            "/admin/inboxes": {
                "get": {
                    "summary": "List inboxes",
                    "responses": ok,
                    "parameters": [
                        {"name": "tenant_id", "in": "query", "schema": {"type": "string"}},
                        {"name": "owner_user_id", "in": "query", "schema": {"type": "string"}},
                    ],
                },
                "post": {
                    "summary": "Add an inbox (tested first; refused on failure unless force)",
                    "requestBody": body("InboxInput"),
                    "responses": {
                        "201": {"description": "saved"},
                        "422": {"description": "test failed"},
                        "409": {"description": "exists"},
                    },
                },
            },
            "/admin/inbox": {
                "get": {"summary": "Show an inbox", "parameters": inbox_q, "responses": ok},
                "patch": {
                    "summary": "Update an inbox",
                    "parameters": inbox_q,
                    "requestBody": body("InboxUpdate"),
                    "responses": ok,
                },
                "delete": {"summary": "Remove an inbox", "parameters": inbox_q, "responses": ok},
            },
            "/admin/inbox/test": {
                "post": {"summary": "Test the stored settings", "parameters": inbox_q, "responses": ok}
            },
            "/admin/inbox/pause": {
                "post": {
                    "summary": "Pause syncing",
                    "parameters": inbox_q,
                    "requestBody": body("ActionInput"),
                    "responses": ok,
                }
            },
            "/admin/inbox/resume": {
                "post": {
                    "summary": "Resume syncing",
                    "parameters": inbox_q,
                    "requestBody": body("ActionInput"),
                    "responses": ok,
                }
            },
        },
        "components": {"schemas": components},
    }
