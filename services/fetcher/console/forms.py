"""The connect form: posted fields → onboarding requests, and errors → the form fields to highlight.

Pure: no I/O. Form field names follow the onboarding error fields (`imap.host`, `imap.password`,
`smtp.port`, ...), so an `ErrorInfo.field` from a connection test points straight at an input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from services.fetcher.onboarding import presets
from services.fetcher.onboarding.models import InboxInput, SettingsInput

Form = dict[str, str]

SECRET_FIELDS = frozenset(
    {"imap.password", "smtp.password", "oauth2.client_secret", "oauth2.refresh_token", "csrf"}
)
SECURITY = ("tls", "starttls", "plain")


class FormError(Exception):
    """The form cannot become a request: field name → message (messages never echo a value)."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


def _text(form: Form, name: str) -> str:
    return form.get(name, "").strip()


def _checked(form: Form, name: str) -> bool:
    return form.get(name, "") in ("on", "true", "1", "yes")


def _list(value: str) -> list[str]:
    return [v for v in (p.strip() for p in re.split(r"[,\s;]+", value)) if v]


def _server(form: Form, proto: str, problems: dict[str, str]) -> dict[str, Any] | None:
    host, port, security = (
        _text(form, f"{proto}.host"),
        _text(form, f"{proto}.port"),
        _text(form, f"{proto}.security"),
    )
    if not host:
        return None  # from the preset or autodiscovery
    out: dict[str, Any] = {"host": host, "security": security or "tls"}
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        problems[f"{proto}.port"] = "enter a port number (1 to 65535)"
    else:
        out["port"] = int(port)
    if out["security"] not in SECURITY:
        problems[f"{proto}.security"] = "choose TLS, STARTTLS or plain"
    return out


def settings_fields(form: Form) -> tuple[dict[str, Any], dict[str, str]]:
    """The `SettingsInput` fields of the form, and the problems found on the way."""
    problems: dict[str, str] = {}
    provider = _text(form, "provider") or None
    if provider and presets.get(provider) is None:
        problems["provider"] = "unknown provider"
    data: dict[str, Any] = {
        "email": _text(form, "email"),
        "provider": provider,
        "imap": _server(form, "imap", problems),
        "smtp": _server(form, "smtp", problems),
        "username": _text(form, "imap.username") or None,
        "smtp_same_credentials": _checked(form, "smtp_same_credentials"),
    }
    if form.get("auth", "password") == "oauth2":
        data["oauth2"] = {
            "token_endpoint": _text(form, "oauth2.token_endpoint"),
            "client_id": _text(form, "oauth2.client_id"),
            "client_secret": form.get("oauth2.client_secret") or None,
            "refresh_token": form.get("oauth2.refresh_token") or "",
            "scope": _text(form, "oauth2.scope") or None,
        }
        if not data["oauth2"]["refresh_token"]:
            problems["oauth2.refresh_token"] = "enter the refresh token"  # noqa: S105 - a message
    else:
        data["password"] = form.get("imap.password") or None
    if not data["smtp_same_credentials"]:
        data["smtp_username"] = _text(form, "smtp.username") or None
        data["smtp_password"] = form.get("smtp.password") or None
    return data, problems


def to_settings(form: Form) -> SettingsInput:
    data, problems = settings_fields(form)
    return _validate(SettingsInput, data, problems)


def to_inbox(form: Form, tenant: str, user: str) -> InboxInput:
    """An `InboxInput` for `Onboarding.add`: always the console user's tenant, never one from the form."""
    data, problems = settings_fields(form)
    backfill = _text(form, "backfill_days")
    if backfill and not backfill.isdigit():
        problems["backfill_days"] = "enter a number of days, or leave empty for everything"
    data.update(
        {
            "tenant_id": tenant,
            "inbox_id": _text(form, "inbox_id") or None,
            "owner_user_id": _text(form, "owner_user_id") or user,
            "display_name": _text(form, "display_name") or None,
            "additional_from": _list(form.get("additional_from", "")),
            "sharing": _text(form, "sharing") or "private",
            "shared_with": _list(form.get("shared_with", "")),
            "sent_copy": _text(form, "sent_copy") or "auto",
            "sync": {"backfill_days": int(backfill) if backfill.isdigit() else None},
            "force": _checked(form, "force"),
        }
    )
    return _validate(InboxInput, data, problems)  # type: ignore[return-value]


def _validate(model: type[SettingsInput], data: dict[str, Any], problems: dict[str, str]) -> SettingsInput:
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            problems.setdefault(form_field(e["loc"]), e["msg"])
        raise FormError(problems) from None
    if problems:
        raise FormError(problems)
    return parsed


_LOC = {
    "password": "imap.password",
    "username": "imap.username",
    "smtp_password": "smtp.password",
    "smtp_username": "smtp.username",
    "sync": "backfill_days",
}


def form_field(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic error location → the form field's name."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if not parts:
        return "email"
    if parts[0] in ("imap", "smtp", "oauth2") and len(parts) > 1:
        return f"{parts[0]}.{parts[1]}"
    if parts[0] == "oauth2":
        return "oauth2.refresh_token"
    return _LOC.get(parts[0], parts[0])


def error_field(field_name: str | None, form: Form) -> str | None:
    """An onboarding `ErrorInfo.field` → the input to highlight in this form."""
    if not field_name:
        return None
    if field_name in ("oauth2", "imap.oauth", "smtp.oauth", "oauth"):
        return "oauth2.refresh_token"
    # With shared credentials there is no SMTP login field: the IMAP one is what to fix.
    shared = _checked(form, "smtp_same_credentials")
    if shared and field_name.startswith("smtp.") and field_name[5:] in ("username", "password"):
        return "imap." + field_name[5:]
    return field_name


# ---------------------------------------------------------------- connection test → checklist

CHECKS = (
    ("connect", "Connect"),
    ("tls", "TLS"),
    ("login", "Login"),
    ("folders", "Folders"),
    ("smtp", "SMTP"),
)


@dataclass
class Check:
    key: str
    label: str
    state: str = "skipped"  # ok | failed | skipped
    detail: str = ""
    error: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)


def checklist(test: dict[str, Any]) -> list[Check]:
    """The five steps an operator reads (connect, TLS, login, folders, SMTP) from a test result."""
    checks = {k: Check(k, label) for k, label in CHECKS}
    imap = test.get("imap") or {}
    smtp = test.get("smtp")
    imap_steps: list[dict[str, Any]] = list(imap.get("steps") or [])
    group = {
        "resolve": "connect",
        "connect": "connect",
        "greeting": "connect",
        "capability": "connect",
        "tls": "tls",
        "starttls": "tls",
        "auth": "login",
        "list": "folders",
    }
    for step in imap_steps:
        key = group.get(str(step.get("name")), "connect")
        check = checks[key]
        check.steps.append(step)
        if not step.get("ok"):
            check.state = "failed"
        elif check.state != "failed":
            check.state = "ok"
        if step.get("detail"):
            check.detail = str(step["detail"])
    # Implicit TLS happens inside the connect step ("… (TLS)").
    connect_tls = any(
        s.get("name") == "connect" and s.get("ok") and "(TLS)" in str(s.get("detail")) for s in imap_steps
    )
    if connect_tls and checks["tls"].state == "skipped":
        checks["tls"].state, checks["tls"].detail = "ok", "implicit TLS"
    if imap.get("error"):
        failed = next((c for c in checks.values() if c.state == "failed"), None)
        if failed is None:
            failed = next(c for c in checks.values() if c.key != "smtp" and c.state == "skipped")
            failed.state = "failed"
        failed.error = imap["error"]
    oauth_error = test.get("oauth_error")
    if oauth_error:
        checks["login"].state, checks["login"].error = "failed", oauth_error
    if smtp is not None:
        s = checks["smtp"]
        s.steps = list(smtp.get("steps") or [])
        s.state = "ok" if smtp.get("ok") else "failed"
        s.error = smtp.get("error")
        done = [str(x.get("name")) for x in s.steps if x.get("ok")]
        s.detail = ", ".join(done) if s.state == "ok" else (s.error or {}).get("message", "")
    return list(checks.values())
