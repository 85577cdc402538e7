"""The console's HTTP side: raw ASGI apps on exact paths (FastStream matches exact paths only).

    GET  /console                 inboxes of the user's tenant (live status and progress)
    GET  /console/connect         connect form;  POST: op=preset|discover|test|save
    GET  /console/inbox?id=       inbox detail
    POST /console/action          op=pause|resume|remove|retest (the onboarding service's own paths)
    GET  /console/api/inboxes     JSON polled by the pages (`?id=` for one inbox)

Every request is authenticated (unless the local demo turned it off) and scoped to the user's tenant;
every POST carries a CSRF token. Onboarding is called in-process, not over HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from pydantic import ValidationError

from mailsync.logs import scrub
from services.fetcher.asgi import Receive, Scope, Send, read_body
from services.fetcher.onboarding import presets
from services.fetcher.onboarding.inboxes import Onboarding, OnboardingError
from services.fetcher.onboarding.models import ActionInput

from . import views
from .auth import ConsoleUser, authenticate, csrf_token, csrf_valid
from .data import ConsoleData
from .forms import Form, FormError, checklist, error_field, to_inbox, to_settings
from .tail import EventLog, Tail

log = logging.getLogger("mailsync.fetcher.console")

MAX_BODY = 64 * 1024
HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
]
DONE = {"pause": "paused", "resume": "resumed", "remove": "removed"}


class Response:
    def __init__(
        self, status: int, body: bytes, content_type: str, extra: list[tuple[bytes, bytes]] | None = None
    ):
        self.status, self.body, self.content_type, self.extra = status, body, content_type, extra or []

    async def send(self, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
            *HEADERS,
            *self.extra,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def html(status: int, text: str) -> Response:
    return Response(status, text.encode(), "text/html; charset=utf-8")


def redirect(location: str) -> Response:
    return Response(303, b"", "text/plain", [(b"location", location.encode())])


class Request:
    def __init__(self, scope: Scope, body: bytes, user: ConsoleUser) -> None:
        self.scope, self.user = scope, user
        self.method: str = scope["method"]
        self.query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        self.form: Form = {}
        if self.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            self.form = {k: v[-1] for k, v in parsed.items()}
            self.form["_posted"] = "1"


class Console:
    def __init__(
        self,
        onboarding: Onboarding,
        tail: Tail | None,
        *,
        users: dict[str, ConsoleUser],
        auth: bool,
        local_tenant: str,
        secret: bytes | None = None,
    ) -> None:
        self.ob = onboarding
        self.tail = tail
        self.events = tail.log if tail else None
        self.data = ConsoleData(onboarding.db, self.events or EventLog())
        self.users = users
        self.auth = auth
        self.local = ConsoleUser("local", local_tenant)
        self.secret = secret or os.urandom(32)
        self.table: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {
            "/console": {"GET": self.inboxes},
            "/console/": {"GET": self.inboxes},
            "/console/connect": {"GET": self.connect_form, "POST": self.connect_post},
            "/console/inbox": {"GET": self.detail},
            "/console/action": {"POST": self.action},
            "/console/api/inboxes": {"GET": self.api_inboxes},
        }

    def routes(self) -> list[tuple[str, Any]]:
        return [(path, self._app(path)) for path in self.table]

    # ------------------------------------------------------------ plumbing

    def _user(self, scope: Scope) -> ConsoleUser | None:
        if not self.auth:
            return self.local
        header = next(
            (v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"authorization"), None
        )
        return authenticate(header, self.users)

    def _same_origin(self, req: Request) -> bool:
        origin = req.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        return bool(urlsplit(origin).netloc == req.headers.get("host", ""))

    def _app(self, path: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        methods = self.table[path]

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            body = await read_body(receive, MAX_BODY)
            if body is None:
                await html(413, "request too large").send(send)
                return
            if self.auth and not self.users:
                await html(503, "console: no users configured (MAILSYNC_FETCHER_CONSOLE_USERS)").send(send)
                return
            user = self._user(scope)
            if user is None:
                resp = Response(
                    401,
                    b"authentication required",
                    "text/plain",
                    [(b"www-authenticate", b'Basic realm="mailsync console", charset="UTF-8"')],
                )
                await resp.send(send)
                return
            if self.tail is not None:
                await self.tail.start()
            handler = methods.get(scope["method"])
            if handler is None:
                await html(405, "method not allowed").send(send)
                return
            req = Request(scope, body, user)
            if req.method == "POST" and not (
                self._same_origin(req) and csrf_valid(self.secret, user, req.form.get("csrf"), time.time())
            ):
                await self._page(
                    403,
                    "Refused",
                    views.error_page(
                        "The form expired or did not come from this console: reload the page and try again."
                    ),
                    user,
                ).send(send)
                return
            try:
                resp = await handler(req)
            except OnboardingError as exc:
                err = _error_of(exc)
                resp = self._page(
                    exc.status, "Refused", views.error_page(f"{err.get('code')}: {err.get('message')}"), user
                )
            except Exception as exc:  # never a stack trace or a secret to the browser
                log.exception("console request failed", extra={"path": path})
                resp = self._page(
                    500, "Error", views.error_page(f"internal error ({scrub(type(exc).__name__)})"), user
                )
            log.info(
                "console request",
                extra={"method": req.method, "path": path, "status": resp.status, "user": user.name},
            )
            await resp.send(send)

        return app

    def _csrf(self, user: ConsoleUser) -> str:
        return csrf_token(self.secret, user, time.time())

    def _page(self, status: int, title: str, body: str, user: ConsoleUser) -> Response:
        return html(status, views.page(title, body, user=user.name, tenant=user.tenant, auth=self.auth))

    # ------------------------------------------------------------ inboxes

    async def _rows(
        self, user: ConsoleUser, only: str | None = None
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        if only:
            inboxes = [await self.ob.show(user.tenant, only)]
        else:
            inboxes = await self.ob.list_inboxes(user.tenant)
        return list(zip(inboxes, await self.data.live_rows(user.tenant, inboxes), strict=True))

    async def inboxes(self, req: Request) -> Response:
        rows = await self._rows(req.user)
        q = req.query
        message = None
        if q.get("saved"):
            message = f"Inbox {q['saved']} saved. Its initial sync starts within a few seconds."
        elif q.get("done") in DONE.values() and q.get("id"):
            message = f"Inbox {q['id']} {q['done']}."
        body = views.notice(message) + views.inbox_table(rows, self._csrf(req.user))
        if self.events is not None and self.events.problem:
            body = (
                views.notice(
                    "Events are not available right now (Kafka): progress totals, errors and "
                    "throttling may lag.",
                    True,
                )
                + body
            )
        return self._page(200, "Inboxes", body, req.user)

    async def api_inboxes(self, req: Request) -> Response:
        rows = await self._rows(req.user, req.query.get("id") or None)
        csrf = self._csrf(req.user)
        out = []
        for view, live in rows:
            cells = views.live_cells(live)
            cells["controls"] = views.action_forms(str(view["inbox_id"]), str(view.get("status")), csrf)
            out.append({"inbox_id": view["inbox_id"], "live": live, "cells": cells})
        body = json.dumps({"tenant": req.user.tenant, "rows": out}, default=str).encode()
        return Response(200, body, "application/json")

    # ------------------------------------------------------------ connect

    def _connect(
        self, req: Request, form: Form, problems: dict[str, str], status: int = 200, **kw: Any
    ) -> Response:
        body = views.connect_page(form, problems, presets.all_presets(), self._csrf(req.user), **kw)
        return self._page(status, "Connect an inbox", body, req.user)

    async def connect_form(self, req: Request) -> Response:
        form: Form = {"owner_user_id": req.user.name, "backfill_days": "90", "smtp_same_credentials": "on"}
        return self._connect(req, form, {})

    async def connect_post(self, req: Request) -> Response:
        form = dict(req.form)
        op = form.get("op", "test")
        if op == "preset":
            return self._fill_preset(req, form)
        if op == "discover":
            return await self._discover(req, form)
        try:
            if op == "save":
                inbox = to_inbox(form, req.user.tenant, req.user.name)
                status, result = await self.ob.add(inbox)
                if status in (200, 201) and result.get("saved", True):
                    saved_id = (result.get("inbox") or {}).get("inbox_id") or inbox.inbox_id or ""
                    return redirect("/console?" + urlencode({"saved": saved_id}))
                return self._tested(
                    req, form, result.get("test") or {}, 422, "Not saved: the connection test failed."
                )
            settings = to_settings(form)
            test = await self.ob.test_settings(settings)
        except FormError as exc:
            return self._connect(
                req, form, exc.problems, 422, message="Some fields need attention.", message_problem=True
            )
        except ValidationError:
            return self._connect(req, form, {}, 422, message="The form is not valid.", message_problem=True)
        except OnboardingError as exc:
            err = _error_of(exc)
            field = error_field(err.get("field"), form) or "email"
            problems = {field: f"{err.get('message')} — {err.get('hint') or ''}".rstrip(" —")}
            return self._connect(
                req,
                form,
                problems,
                exc.status,
                message=f"{err.get('code')}: {err.get('message')}",
                message_problem=True,
            )
        for proto in ("imap", "smtp"):
            found = test.get(f"{proto}_settings") or {}
            if found and not form.get(f"{proto}.host"):
                form.update(
                    {
                        f"{proto}.host": str(found["host"]),
                        f"{proto}.port": str(found["port"]),
                        f"{proto}.security": str(found["security"]),
                    }
                )
        if test.get("provider") and not form.get("provider"):
            form["provider"] = str(test["provider"])
        return self._tested(req, form, test, 200, None)

    def _tested(
        self, req: Request, form: Form, test: dict[str, Any], status: int, message: str | None
    ) -> Response:
        checks = checklist(test)
        problems: dict[str, str] = {}
        for check in checks:
            err = check.error
            if err:
                field = error_field(err.get("field"), form) or "email"
                problems.setdefault(
                    field, f"{err.get('message')}" + (f" — {err['hint']}" if err.get("hint") else "")
                )
        if status != 200 and form.get("auth", "password") != "oauth2":
            message = (message or "") + " Enter the password again: it is never sent back to the browser."
        return self._connect(
            req,
            form,
            problems,
            status,
            test_html=views.checklist_html(checks, test),
            message=message,
            message_problem=bool(message),
        )

    def _fill_preset(self, req: Request, form: Form) -> Response:
        preset = presets.get(form.get("provider", ""))
        if preset is None:
            return self._connect(req, form, {"provider": "choose a provider first"})
        for proto in ("imap", "smtp"):
            server = getattr(preset, proto)
            form.update(
                {
                    f"{proto}.host": server.host,
                    f"{proto}.port": str(server.port),
                    f"{proto}.security": server.security,
                }
            )
        if preset.oauth2:
            form["oauth2.token_endpoint"], form["oauth2.scope"] = (
                preset.oauth2.token_endpoint,
                preset.oauth2.scope or "",
            )
        if preset.auth_methods == ["oauth2"]:
            form["auth"] = "oauth2"
        return self._connect(
            req, form, {}, message=f"Server details of {preset.name} filled in; edit them if needed."
        )

    async def _discover(self, req: Request, form: Form) -> Response:
        email = form.get("email", "").strip()
        if "@" not in email:
            return self._connect(req, form, {"email": "enter the email address to discover its servers"})
        found = await self.ob.discoverer.discover(email)
        if found.imap is None:
            return self._connect(
                req,
                form,
                {"imap.host": "no server settings found: enter them by hand"},
                message=f"Nothing found for {found.domain}.",
                message_problem=True,
            )
        for proto in ("imap", "smtp"):
            server = getattr(found, proto)
            if server is not None:
                form.update(
                    {
                        f"{proto}.host": server.host,
                        f"{proto}.port": str(server.port),
                        f"{proto}.security": server.security,
                    }
                )
        if found.username and not form.get("imap.username"):
            form["imap.username"] = found.username
        if found.preset_id:
            form["provider"] = found.preset_id
        return self._connect(
            req, form, {}, message=f"Server details found by {found.source} for {found.domain}."
        )

    # ------------------------------------------------------------ detail and actions

    async def _detail(
        self,
        req: Request,
        inbox_id: str,
        *,
        status: int = 200,
        test_html: str = "",
        message: str | None = None,
    ) -> Response:
        tenant = req.user.tenant
        view = await self.ob.show(tenant, inbox_id)
        live = (await self.data.live_rows(tenant, [view]))[0]
        cursors = await self.data.cursors(tenant, inbox_id)
        ev = self.data.events.inbox(tenant, inbox_id)
        stats = self.data.events.messages.get(inbox_id)
        note = None
        if self.events is None:
            note = "Event history is off in this fetcher (MAILSYNC_FETCHER_CONSOLE_EVENTS=false)."
        elif self.events.problem:
            note = f"Events are not available right now (Kafka: {self.events.problem or 'connecting'})."
        have = self.events is not None
        body = views.detail_page(
            view,
            live,
            cursors,
            list(ev.events) if ev else [],
            (stats.last_at, dict(stats.by_type)) if stats else None,
            (ev.links_found, list(ev.links)) if ev else ((0, []) if have else None),
            list(ev.sent_copies) if ev else ([] if have else None),
            self._csrf(req.user),
            events_note=note,
            test_html=test_html,
            message=message,
        )
        return self._page(status, f"Inbox {view.get('display_name') or view.get('email')}", body, req.user)

    async def detail(self, req: Request) -> Response:
        inbox_id = req.query.get("id", "")
        if not inbox_id:
            return redirect("/console")
        q = req.query
        message = f"Inbox {q['done']}." if q.get("done") in DONE.values() else None
        return await self._detail(req, inbox_id, message=message)

    async def action(self, req: Request) -> Response:
        inbox_id, op = req.form.get("inbox_id", ""), req.form.get("op", "")
        back = req.form.get("back") == "detail"
        if op == "retest":
            record = await self.ob.get(req.user.tenant, inbox_id)
            test = await self.ob.test(req.user.tenant, inbox_id)
            form = {"smtp_same_credentials": "on"} if record.smtp_auth is None else {}
            checks = checklist(test)
            return await self._detail(
                req,
                inbox_id,
                test_html="<h2>Retest</h2>" + views.checklist_html(checks, test) + _fields_note(checks, form),
            )
        if op not in DONE:
            return self._page(400, "Refused", views.error_page("unknown action"), req.user)
        inp = ActionInput(by_user_id=req.user.name, reason="operator console")
        await self.ob.action(req.user.tenant, inbox_id, op, inp)
        query = urlencode({"id": inbox_id, "done": DONE[op]})
        return redirect(("/console/inbox?" if back and op != "remove" else "/console?") + query)


def _fields_note(checks: list[Any], form: Form) -> str:
    fields = sorted({f for c in checks if c.error and (f := error_field(c.error.get("field"), form))})
    if not fields:
        return ""
    return (
        '<p class="muted">To fix: '
        + ", ".join(views.esc(f) for f in fields)
        + " (reconnect the inbox with new settings).</p>"
    )


def _error_of(exc: OnboardingError) -> dict[str, Any]:
    err = exc.body.get("error")
    return err if isinstance(err, dict) else {}
