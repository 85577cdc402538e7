"""The operator console's pure parts: users and auth, CSRF tokens, form → onboarding request,
test result → checklist and highlighted field, initial-sync progress, the event log, markup."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr

from services.fetcher.console import views
from services.fetcher.console.auth import (
    ConsoleUser,
    UsersError,
    authenticate,
    csrf_token,
    csrf_valid,
    parse_users,
)
from services.fetcher.console.data import progress, shown_status
from services.fetcher.console.forms import (
    FormError,
    checklist,
    error_field,
    form_field,
    to_inbox,
    to_settings,
)
from services.fetcher.console.routes import Console
from services.fetcher.console.tail import INBOX_TOPIC, MESSAGES_TOPIC, EventLog, InboxEvents
from services.fetcher.onboarding.presets import all_presets

TOKEN = "s3cret-token-0123456789"
USERS = parse_users(f"ops:acme:{TOKEN}\n# comment\nbob:globex:{'b' * 20}")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------- users and auth


def test_users_parse_and_refuse_bad_entries() -> None:
    assert USERS["ops"] == ConsoleUser("ops", "acme", TOKEN)
    assert USERS["bob"].tenant == "globex"
    assert TOKEN not in repr(USERS["ops"])
    for bad in (
        "ops:acme",
        "ops::" + TOKEN,
        "ops:acme:short",
        f"o/s:acme:{TOKEN}",
        f"a:t:{TOKEN},a:u:{TOKEN}",
    ):
        with pytest.raises(UsersError) as info:
            parse_users(bad)
        assert TOKEN not in str(info.value)


def test_authenticate_basic_and_bearer() -> None:
    assert authenticate(basic("ops", TOKEN), USERS) == USERS["ops"]
    assert authenticate(f"Bearer {TOKEN}", USERS) == USERS["ops"]
    assert authenticate(f"bearer {'b' * 20}", USERS) == USERS["bob"]
    assert authenticate(basic("ops", "b" * 20), USERS) is None  # bob's token is not ops's
    assert authenticate(basic("eve", TOKEN), USERS) is None
    assert authenticate(basic("ops", TOKEN + "x"), USERS) is None
    assert authenticate("Bearer nope", USERS) is None
    assert authenticate("Basic %%%", USERS) is None
    assert authenticate("Basic " + base64.b64encode(b"no-colon").decode(), USERS) is None
    assert authenticate(None, USERS) is None
    assert authenticate("Digest x", USERS) is None


def test_csrf_token_is_bound_to_user_tenant_and_time() -> None:
    secret, now = b"k" * 32, 1_800_000_000.0
    ops = USERS["ops"]
    token = csrf_token(secret, ops, now)
    assert csrf_valid(secret, ops, token, now + 60)
    assert not csrf_valid(secret, USERS["bob"], token, now)  # another user
    assert not csrf_valid(secret, ConsoleUser("ops", "other", TOKEN), token, now)  # another tenant
    assert not csrf_valid(b"x" * 32, ops, token, now)  # another key (other process)
    assert not csrf_valid(secret, ops, token, now + 9 * 3600)  # expired
    assert not csrf_valid(secret, ops, token, now - 3600)  # from the future
    issued, mac = token.split(".")
    assert not csrf_valid(secret, ops, f"{int(issued) + 1}.{mac}", now)  # time tampered
    for bad in (None, "", "abc", "123", "x.y", f"{issued}."):
        assert not csrf_valid(secret, ops, bad, now)


# ---------------------------------------------------------------- form → onboarding request


def base_form(**extra: str) -> dict[str, str]:
    form = {
        "email": "ann@example.org",
        "provider": "",
        "imap.host": "mail.example.org",
        "imap.port": "993",
        "imap.security": "tls",
        "smtp.host": "mail.example.org",
        "smtp.port": "587",
        "smtp.security": "starttls",
        "auth": "password",
        "imap.password": "pw-123",
        "smtp_same_credentials": "on",
    }
    form.update(extra)
    return form


def test_form_to_inbox_maps_every_field_and_forces_the_user_tenant() -> None:
    form = base_form(
        inbox_id="ann",
        display_name="Ann",
        additional_from="sales@example.org\nann.b@example.org, x@example.org",
        sharing="subject",
        shared_with="u1, u2",
        sent_copy="never",
        backfill_days="30",
        force="on",
        tenant_id="someone-else",
    )
    form["imap.username"] = "ann"
    inp = to_inbox(form, "acme", "ops")
    assert inp.tenant_id == "acme" and inp.owner_user_id == "ops" and inp.inbox_id == "ann"
    assert inp.imap is not None and (inp.imap.host, inp.imap.port, inp.imap.security) == (
        "mail.example.org",
        993,
        "tls",
    )
    assert inp.smtp is not None and (inp.smtp.port, inp.smtp.security) == (587, "starttls")
    assert inp.username == "ann"
    assert isinstance(inp.password, SecretStr) and inp.password.get_secret_value() == "pw-123"
    assert inp.smtp_same_credentials and inp.smtp_password is None
    assert inp.additional_from == ["sales@example.org", "ann.b@example.org", "x@example.org"]
    assert inp.sharing == "subject" and inp.shared_with == ["u1", "u2"] and inp.sent_copy == "never"
    assert inp.sync.backfill_days == 30 and inp.force
    assert "pw-123" not in repr(inp)


def test_form_preset_leaves_servers_to_onboarding_and_oauth2() -> None:
    form = {"email": "ann@gmail.com", "provider": "gmail", "auth": "oauth2", "smtp_same_credentials": "on"}
    form |= {
        "oauth2.token_endpoint": "https://oauth2.googleapis.com/token",
        "oauth2.client_id": "cid",
        "oauth2.refresh_token": "rt-1",
    }
    s = to_settings(form)
    assert s.provider == "gmail" and s.imap is None and s.smtp is None and s.password is None
    assert s.oauth2 is not None and s.oauth2.refresh_token.get_secret_value() == "rt-1"
    inbox = to_inbox(form, "acme", "ops")
    assert inbox.force is False and inbox.sync.backfill_days is None


def test_form_own_smtp_credentials() -> None:
    form = base_form()
    del form["smtp_same_credentials"]
    form |= {"smtp.username": "relay", "smtp.password": "smtp-pw"}
    s = to_settings(form)
    assert not s.smtp_same_credentials and s.smtp_username == "relay"
    assert s.smtp_password is not None and s.smtp_password.get_secret_value() == "smtp-pw"


def test_form_problems_name_fields_without_echoing_values() -> None:
    with pytest.raises(FormError) as info:
        to_inbox(
            base_form(**{"imap.port": "99999", "smtp.security": "bogus", "backfill_days": "x"}), "t", "u"
        )
    assert set(info.value.problems) >= {"imap.port", "smtp.security", "backfill_days"}
    with pytest.raises(FormError) as info:
        to_settings(base_form(email="not-an-address", provider="nope"))
    assert "email" in info.value.problems and "provider" in info.value.problems
    with pytest.raises(FormError) as info:
        to_settings(base_form(auth="oauth2"))
    assert "oauth2.refresh_token" in info.value.problems
    with pytest.raises(FormError) as info:
        to_inbox(base_form(additional_from="pw-123-not-mail"), "t", "u")
    assert list(info.value.problems) == ["additional_from"]
    assert "pw-123" not in str(info.value)


def test_error_fields_map_to_inputs() -> None:
    assert form_field(("imap", "port")) == "imap.port"
    assert form_field(("password",)) == "imap.password"
    assert form_field(("smtp_password",)) == "smtp.password"
    assert form_field(("additional_from", 0)) == "additional_from"
    assert form_field(("sync", "backfill_days")) == "backfill_days"
    assert form_field(("oauth2",)) == "oauth2.refresh_token"
    shared = {"smtp_same_credentials": "on"}
    assert error_field("smtp.password", shared) == "imap.password"  # no SMTP login field shown
    assert error_field("smtp.password", {}) == "smtp.password"
    assert error_field("smtp.port", shared) == "smtp.port"
    assert error_field("oauth2", shared) == "oauth2.refresh_token"
    assert error_field(None, shared) is None


# ---------------------------------------------------------------- test result → checklist


def _step(name: str, ok: bool = True, detail: str = "") -> dict[str, object]:
    return {"name": name, "ok": ok, "detail": detail, "ms": 1}


WRONG_PASSWORD = {
    "ok": False,
    "imap": {
        "ok": False,
        "steps": [
            _step("resolve"),
            _step("connect", detail="127.0.0.1:993 (TLS)"),
            _step("greeting"),
            _step("capability"),
            _step("auth", False, "PASSWORD refused"),
        ],
        "error": {
            "code": "auth.invalid_credentials",
            "field": "imap.password",
            "hint": "use an app password",
        },
    },
    "smtp": {"ok": True, "steps": [_step("ehlo"), _step("starttls"), _step("auth")], "error": None},
}


def test_checklist_wrong_password() -> None:
    checks = {c.key: c for c in checklist(WRONG_PASSWORD)}
    assert [c.state for c in checks.values()] == ["ok", "ok", "failed", "skipped", "ok"]
    assert checks["tls"].detail == "implicit TLS"
    assert checks["login"].error is not None and checks["login"].error["code"] == "auth.invalid_credentials"
    html = views.checklist_html(list(checks.values()), WRONG_PASSWORD)
    assert 'data-step="login" data-state="failed"' in html and "use an app password" in html


def test_checklist_connect_refused_and_starttls_and_oauth() -> None:
    refused = {
        "ok": False,
        "imap": {"steps": [_step("resolve"), _step("connect", False)], "error": {"code": "connect.refused"}},
        "smtp": None,
    }
    states = {c.key: c.state for c in checklist(refused)}
    assert states == {
        "connect": "failed",
        "tls": "skipped",
        "login": "skipped",
        "folders": "skipped",
        "smtp": "skipped",
    }
    ok = {
        "ok": True,
        "imap": {"steps": [_step("connect"), _step("starttls"), _step("auth"), _step("list")], "error": None},
        "smtp": {"ok": True, "steps": [_step("auth")], "error": None},
    }
    assert {c.state for c in checklist(ok)} == {"ok"}
    oauth = {
        "ok": False,
        "imap": {"steps": []},
        "smtp": None,
        "oauth_error": {"code": "auth.token_refresh_failed"},
    }
    login = next(c for c in checklist(oauth) if c.key == "login")
    assert login.state == "failed" and login.error == {"code": "auth.token_refresh_failed"}


# ---------------------------------------------------------------- progress and event log


def test_progress_from_cursors_state_and_events() -> None:
    ev = InboxEvents()
    assert progress([], None, None).percent is None
    ev.progress = {"INBOX": (50, 200)}
    cursors = [{"folder": "INBOX", "initial_done_count": 40}, {"folder": "Sent", "initial_done_count": 0}]
    p = progress(cursors, {"initial_completed": False}, ev)
    assert (p.done, p.total, p.percent) == (50, None, None)  # Sent's total not known yet
    ev.progress["Sent"] = (0, 0)
    assert progress(cursors, None, ev).percent == 25
    done = progress([{"folder": "INBOX", "initial_done": True, "initial_done_count": 200}], None, ev)
    assert (done.done, done.total, done.percent) == (200, 200, 99)  # 100 only once completed
    final = progress(cursors, {"initial_completed": True}, ev)
    assert final.completed and final.percent == 100
    assert shown_status("connecting", final) == "idle"
    assert shown_status("connecting", progress(cursors, None, ev)) == "syncing"
    assert shown_status("paused", final) == "paused"
    assert shown_status("connecting", final, "connect_failed") == "connect_failed"
    assert shown_status("paused", final, "idle") == "paused"


def _event(kind: str, data: dict[str, object], tenant: str = "acme", inbox: str = "i1") -> bytes:
    return json.dumps({"type": kind, "tenant_id": tenant, "inbox_id": inbox, "data": data}).encode()


def test_event_log_keeps_status_per_tenant_and_inbox() -> None:
    log = EventLog()
    t = 1_800_000_000_000
    log.apply(
        INBOX_TOPIC,
        b"i1",
        None,
        _event(
            "mailsync.inbox.sync_progress", {"sync_run_id": "r", "folder": "INBOX", "done": 5, "total": 10}
        ),
        t,
    )
    log.apply(
        INBOX_TOPIC,
        b"i1",
        None,
        _event(
            "mailsync.inbox.sync_progress", {"sync_run_id": "r", "folder": "INBOX", "done": 10, "total": 10}
        ),
        t,
    )
    err = {"code": "auth.invalid_credentials", "message": "refused", "hint": "app password"}
    log.apply(
        INBOX_TOPIC,
        b"i1",
        None,
        _event(
            "mailsync.inbox.auth_failed",
            {"attempt_id": "a", "protocol": "imap", "error": err, "retry_at": "2027-01-15T10:00:00+00:00"},
        ),
        t,
    )
    log.apply(
        INBOX_TOPIC,
        b"i1",
        None,
        _event(
            "mailsync.inbox.throttled",
            {"attempt_id": "b", "limit": "gmail.download_per_day", "resume_at": "2027-01-16T00:00:00Z"},
        ),
        t,
    )
    log.apply(
        INBOX_TOPIC,
        b"i1",
        None,
        _event(
            "mailsync.inbox.deactivation_warning",
            {"reason": "unopened", "owner_user_id": "u", "deactivate_at": "2027-02-01T00:00:00Z"},
        ),
        t,
    )
    log.apply(INBOX_TOPIC, b"i1", None, b"not json", t)
    log.apply(MESSAGES_TOPIC, b"i1", "mailsync.message.received", b"ignored", t)
    slot = log.inbox("acme", "i1")
    assert slot is not None and log.inbox("other", "i1") is None
    assert slot.progress == {"INBOX": (10, 10)}
    assert [e["type"].rsplit(".", 1)[-1] for e in slot.events] == [
        "deactivation_warning",
        "throttled",
        "auth_failed",
        "sync_progress",
    ]
    assert slot.failure is not None and slot.failure["retry_at"] == datetime(2027, 1, 15, 10, tzinfo=UTC)
    assert slot.throttled_until == datetime(2027, 1, 16, tzinfo=UTC)
    assert slot.deactivation is not None and slot.deactivation["reason"] == "unopened"
    assert log.messages["i1"].by_type == {"mailsync.message.received": 1}
    log.apply(
        INBOX_TOPIC,
        b"i1",
        None,
        _event(
            "mailsync.inbox.initial_sync_completed",
            {"sync_run_id": "r", "messages": 10, "duration_seconds": 1},
        ),
        t,
    )
    log.apply(
        INBOX_TOPIC,
        b"i1",
        None,
        _event(
            "mailsync.inbox.deactivation_warning_cancelled",
            {"reason": "unopened", "owner_user_id": "u", "deactivate_at": "2027-02-01T00:00:00Z"},
        ),
        t,
    )
    assert slot.completed and slot.failure is None and slot.deactivation is None


# ---------------------------------------------------------------- markup


def test_connect_page_never_renders_secrets_and_marks_fields() -> None:
    form = base_form(**{"oauth2.refresh_token": "rt-secret", "smtp.password": "smtp-secret"})
    html = views.connect_page(form, {"imap.password": "wrong <password>"}, all_presets(), "csrf-1")
    for secret in ("pw-123", "rt-secret", "smtp-secret"):
        assert secret not in html
    assert 'name="imap.password" aria-invalid="true" aria-describedby="err-f-imap-password"' in html
    assert "wrong &lt;password&gt;" in html
    assert '<label for="f-imap-host">' in html and 'value="mail.example.org"' in html
    assert 'name="csrf" value="csrf-1"' in html
    assert "</script" not in views.presets_json(all_presets())


def test_table_escapes_and_offers_the_right_actions() -> None:
    view = {"inbox_id": "i<1>", "email": "a@b.c", "display_name": "<b>x</b>", "status": "paused"}
    live = {"status": "paused", "progress": {"completed": True, "done": 3}, "messages": 3, "failure": None}
    html = views.inbox_table([(view, live)], "tok")
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert 'value="resume"' in html and 'value="pause"' not in html and 'data-percent="100"' in html


# ---------------------------------------------------------------- the ASGI gate (auth, CSRF, origin)


async def _call(
    console: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], str]:
    app = dict(console.routes())[path]
    sent: list[dict[str, Any]] = []
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": raw}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    await app(scope, receive, send)
    start = sent[0]
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:]).decode()


def _console(auth: bool, users: dict[str, ConsoleUser]) -> Any:
    ob = SimpleNamespace(db={})  # the paths tested here never reach the database
    return Console(ob, None, users=users, auth=auth, local_tenant="demo", secret=b"k" * 32)  # type: ignore[arg-type]


async def test_gate_refuses_without_users_or_login() -> None:
    status, _, body = await _call(_console(True, {}), "/console")
    assert status == 503 and "MAILSYNC_FETCHER_CONSOLE_USERS" in body
    console = _console(True, USERS)
    status, headers, _ = await _call(console, "/console/connect")
    assert status == 401 and headers["www-authenticate"].startswith("Basic ")
    status, headers, body = await _call(
        console, "/console/connect", headers={"Authorization": basic("ops", TOKEN)}
    )
    assert status == 200 and "tenant <strong>acme</strong>" in body
    assert (
        headers["x-frame-options"] == "DENY"
        and "frame-ancestors 'none'" in headers["content-security-policy"]
    )


async def test_gate_checks_csrf_and_origin_on_posts() -> None:
    console = _console(True, USERS)
    auth = {"Authorization": basic("ops", TOKEN), "Content-Type": "application/x-www-form-urlencoded"}
    good = csrf_token(b"k" * 32, USERS["ops"], time.time())
    form = urlencode({"op": "preset", "provider": "gmail", "csrf": good}).encode()
    status, _, body = await _call(console, "/console/connect", "POST", auth, form)
    assert status == 200 and 'value="imap.gmail.com"' in body
    same = {**auth, "Host": "console.example", "Origin": "http://console.example"}
    assert (await _call(console, "/console/connect", "POST", same, form))[0] == 200
    evil = {**auth, "Host": "console.example", "Origin": "https://evil.example"}
    assert (await _call(console, "/console/connect", "POST", evil, form))[0] == 403
    no_token = urlencode({"op": "preset", "provider": "gmail"}).encode()
    assert (await _call(console, "/console/connect", "POST", auth, no_token))[0] == 403
    bob_token = csrf_token(b"k" * 32, USERS["bob"], time.time())
    stolen = urlencode({"op": "preset", "provider": "gmail", "csrf": bob_token}).encode()
    assert (await _call(console, "/console/connect", "POST", auth, stolen))[0] == 403


async def test_local_demo_without_login() -> None:
    status, _, body = await _call(_console(False, {}), "/console/connect")
    assert status == 200 and "tenant <strong>demo</strong>" in body and "no login (local demo)" in body
