# ruff: noqa: E501 - HTML markup reads better on one line than split at 110 columns
"""HTML for the console: plain functions returning strings. Every value goes through `esc`; secret
fields (passwords, tokens) are never given a value. A little JavaScript enhances the pages (live
progress, preset filling, testing without a reload); every action also works without it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from services.fetcher.onboarding.presets import Preset

from .forms import SECRET_FIELDS, Check, Form

HERE = Path(__file__).parent
STYLE = (HERE / "console.css").read_text()
SCRIPT = (HERE / "console.js").read_text()


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def fid(name: str) -> str:
    return "f-" + name.replace(".", "-").replace("_", "-")


def when(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return esc(value)
    if not isinstance(value, datetime):
        return "—"
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    iso = value.astimezone(UTC).isoformat(timespec="seconds")
    return (
        f'<time datetime="{esc(iso)}">{esc(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))} UTC</time>'
    )


def page(title: str, body: str, *, user: str, tenant: str, auth: bool) -> str:
    who = f"{esc(user)} · tenant <strong>{esc(tenant)}</strong>" + (
        "" if auth else " · <em>no login (local demo)</em>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · mailsync console</title><style>{STYLE}</style></head>
<body><a class="sr-only" href="#main">Skip to content</a>
<header><strong>mailsync console</strong><nav aria-label="Main"><a href="/console">Inboxes</a>
<a href="/console/connect">Connect an inbox</a></nav><span class="who">{who}</span></header>
<main id="main" tabindex="-1"><h1>{esc(title)}</h1>
{body}
</main><script>{SCRIPT}</script></body></html>"""


def notice(text: str | None, problem: bool = False) -> str:
    if not text:
        return ""
    return f'<div class="{"problem" if problem else "notice"}" role="{"alert" if problem else "status"}">{esc(text)}</div>'


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'


# ---------------------------------------------------------------- inbox table


def badge(status: Any) -> str:
    return f'<span class="badge s-{esc(status)}">{esc(str(status).replace("_", " "))}</span>'


def status_cell(live: dict[str, Any]) -> str:
    out = badge(live.get("status"))
    registry = live.get("registry_status")
    if registry and registry != live.get("status"):
        out += f'<div class="muted">registry: {esc(registry)}</div>'
    if live.get("status_reason"):
        out += f'<div class="muted">{esc(live["status_reason"])}</div>'
    return out


def progress_cell(live: dict[str, Any]) -> str:
    p = live.get("progress") or {}
    pct = p.get("percent")
    if p.get("completed"):
        return f'<progress max="100" value="100" aria-label="Initial sync">100%</progress> <span data-percent="100">100%</span> <span class="muted">{esc(p.get("done"))} messages</span>'
    if pct is None:
        done = p.get("done") or 0
        return f'<span class="muted" data-percent="">{"waiting" if not done else f"{esc(done)} done"}</span>'
    return (
        f'<progress max="100" value="{esc(pct)}" aria-label="Initial sync">{esc(pct)}%</progress> '
        f'<span data-percent="{esc(pct)}">{esc(pct)}%</span> <span class="muted">{esc(p.get("done"))}/{esc(p.get("total"))}</span>'
    )


def error_block(err: dict[str, Any] | None, extra: str = "") -> str:
    if not err:
        return ""
    out = f'<div class="err"><code>{esc(err.get("code"))}</code> {esc(err.get("message"))}</div>'
    if err.get("hint"):
        out += f'<div class="hint">Hint: {esc(err["hint"])}</div>'
    if err.get("server_response"):
        out += f'<div class="muted">Server said: {esc(err["server_response"])}</div>'
    return out + extra


def problems_cell(live: dict[str, Any]) -> str:
    parts = []
    failure = live.get("failure")
    if failure:
        retry = (
            f'<div class="muted">retry at {when(failure["retry_at"])}</div>'
            if failure.get("retry_at")
            else ""
        )
        parts.append(error_block(failure.get("error"), retry))
    if live.get("throttled_until"):
        parts.append(
            f"<div>Throttled ({esc(live.get('throttled_limit'))}): resumes at {when(live['throttled_until'])}</div>"
        )
    dea = live.get("deactivation")
    if dea:
        parts.append(
            f'<div class="err">Deactivation warning ({esc(dea.get("reason"))}): deactivates at {when(dea.get("deactivate_at"))}</div>'
        )
    return "".join(parts) or '<span class="muted">none</span>'


def live_cells(live: dict[str, Any]) -> dict[str, str]:
    return {
        "status": status_cell(live),
        "progress": progress_cell(live),
        "messages": esc(live["messages"]) if live.get("messages") is not None else "—",
        "last_sync": when(live.get("last_sync")),
        "problems": problems_cell(live),
        "actions": "",
    }


def action_forms(inbox_id: str, status: str, csrf: str, *, detail: bool = False) -> str:
    def button(op: str, label: str, cls: str = "", confirm: str | None = None) -> str:
        onsubmit = f' onsubmit="return confirm({esc(json.dumps(confirm))})"' if confirm else ""
        return (
            f'<form class="inline" method="post" action="/console/action"{onsubmit}>{hidden("csrf", csrf)}'
            f"{hidden('inbox_id', inbox_id)}{hidden('back', 'detail' if detail else 'list')}"
            f'<button type="submit" name="op" value="{op}" class="{cls}" aria-label="{esc(label)} {esc(inbox_id)}">{esc(label)}</button></form>'
        )

    if status == "removed":
        return '<span class="muted">removed</span>'
    parts = []
    if status in ("paused", "deactivated"):
        parts.append(button("resume", "Resume"))
    else:
        parts.append(button("pause", "Pause"))
    parts.append(button("retest", "Retest"))
    parts.append(button("remove", "Remove", "danger", f"Remove inbox {inbox_id}? Syncing stops for good."))
    return '<div class="actions">' + "".join(parts) + "</div>"


def inbox_table(rows: list[tuple[dict[str, Any], dict[str, Any]]], csrf: str) -> str:
    if not rows:
        return '<p>No inboxes yet. <a href="/console/connect">Connect one</a>.</p>'
    body = []
    for view, live in rows:
        cells = live_cells(live)
        iid = str(view["inbox_id"])
        name = view.get("display_name") or view.get("email")
        body.append(
            f'<tr data-inbox="{esc(iid)}"><td><a href="/console/inbox?id={esc(iid)}">{esc(name)}</a>'
            f'<div class="muted">{esc(view.get("email"))} · {esc(iid)}</div></td>'
            + "".join(
                f'<td data-cell="{k}">{cells[k]}</td>'
                for k in ("status", "last_sync", "messages", "progress", "problems")
            )
            + f'<td data-cell="controls">{action_forms(iid, str(view.get("status")), csrf)}</td></tr>'
        )
    return (
        '<table data-poll="/console/api/inboxes"><caption class="sr-only">Inboxes of this tenant; '
        "status and progress refresh every few seconds</caption><thead><tr>"
        '<th scope="col">Inbox</th><th scope="col">Status</th><th scope="col">Last sync</th>'
        '<th scope="col">Messages synced</th><th scope="col">Initial sync</th><th scope="col">Errors and warnings</th>'
        '<th scope="col">Actions</th></tr></thead><tbody>' + "".join(body) + "</tbody></table>"
    )


# ---------------------------------------------------------------- connect form


def _attrs(name: str, problems: dict[str, str]) -> str:
    out = f'id="{fid(name)}" name="{esc(name)}"'
    if name in problems:
        out += f' aria-invalid="true" aria-describedby="err-{fid(name)}"'
    return out


def _err(name: str, problems: dict[str, str]) -> str:
    return f'<p class="err" id="err-{fid(name)}">{esc(problems.get(name, ""))}</p>'


def text_field(
    name: str,
    label: str,
    form: Form,
    problems: dict[str, str],
    *,
    kind: str = "text",
    help_text: str = "",
    extra: str = "",
) -> str:
    value = "" if name in SECRET_FIELDS or kind == "password" else form.get(name, "")
    helper = f'<span class="muted" id="help-{fid(name)}">{esc(help_text)}</span>' if help_text else ""
    auto = ' autocomplete="new-password"' if kind == "password" else ""
    return (
        f'<div class="field"><label for="{fid(name)}">{esc(label)}</label>'
        f'<input type="{kind}" {_attrs(name, problems)} value="{esc(value)}"{auto} {extra}>{helper}{_err(name, problems)}</div>'
    )


def select_field(
    name: str, label: str, options: Iterable[tuple[str, str]], form: Form, problems: dict[str, str]
) -> str:
    current = form.get(name, "")
    opts = "".join(
        f'<option value="{esc(v)}"{" selected" if v == current else ""}>{esc(t)}</option>' for v, t in options
    )
    return (
        f'<div class="field"><label for="{fid(name)}">{esc(label)}</label>'
        f"<select {_attrs(name, problems)}>{opts}</select>{_err(name, problems)}</div>"
    )


def checkbox(name: str, label: str, form: Form, *, default: bool = False) -> str:
    on = form.get(name, "on" if default and not form.get("_posted") else "") in ("on", "true", "1")
    return (
        f'<div class="check"><input type="checkbox" id="{fid(name)}" name="{esc(name)}"{" checked" if on else ""}>'
        f'<label for="{fid(name)}">{esc(label)}</label></div>'
    )


def radios(name: str, legend: str, options: Iterable[tuple[str, str]], form: Form, default: str) -> str:
    current = form.get(name) or default
    items = "".join(
        f'<div class="check"><input type="radio" id="{fid(name)}-{esc(v)}" name="{esc(name)}" value="{esc(v)}"'
        f'{" checked" if v == current else ""}><label for="{fid(name)}-{esc(v)}">{esc(t)}</label></div>'
        for v, t in options
    )
    return f"<fieldset><legend>{esc(legend)}</legend>{items}</fieldset>"


SECURITY_OPTIONS = (("tls", "TLS (implicit)"), ("starttls", "STARTTLS"), ("plain", "none (plain)"))


def server_fields(proto: str, form: Form, problems: dict[str, str]) -> str:
    title = "Incoming (IMAP)" if proto == "imap" else "Outgoing (SMTP)"
    return (
        f'<div><h3 class="muted">{title}</h3>'
        + text_field(f"{proto}.host", f"{proto.upper()} server", form, problems)
        + text_field(
            f"{proto}.port",
            f"{proto.upper()} port",
            form,
            problems,
            kind="number",
            extra='min="1" max="65535"',
        )
        + select_field(f"{proto}.security", f"{proto.upper()} security", SECURITY_OPTIONS, form, problems)
        + "</div>"
    )


def additional_from_field(form: Form, problems: dict[str, str]) -> str:
    invalid = (
        ' aria-invalid="true" aria-describedby="err-f-additional-from"'
        if "additional_from" in problems
        else ""
    )
    return (
        '<div class="field"><label for="f-additional-from">Additional From addresses</label>'
        f'<textarea id="f-additional-from" name="additional_from" rows="2"{invalid}>'
        f"{esc(form.get('additional_from', ''))}</textarea>"
        '<span class="muted">One per line: aliases this inbox may send as.</span>'
        f"{_err('additional_from', problems)}</div>"
    )


def presets_json(all_presets: dict[str, Preset]) -> str:
    data = {
        k: p.model_dump(include={"name", "imap", "smtp", "auth_methods", "oauth2", "notes"})
        for k, p in all_presets.items()
    }
    return json.dumps(data).replace("</", "<\\/")


def checklist_html(checks: list[Check], test: dict[str, Any]) -> str:
    items = []
    for c in checks:
        mark = {"ok": "✓ ok", "failed": "✗ failed", "skipped": "- not run"}[c.state]
        detail = f' <span class="muted">{esc(c.detail)}</span>' if c.detail and c.state == "ok" else ""
        items.append(
            f'<li class="st-{c.state}" data-step="{c.key}" data-state="{c.state}"><span class="mark">{esc(mark)}</span>'
            f"<strong>{esc(c.label)}</strong>{detail}{error_block(c.error)}</li>"
        )
    verdict = (
        '<p class="ok" role="status"><strong>Connection test passed.</strong></p>'
        if test.get("ok")
        else '<p class="err" role="alert"><strong>Connection test failed.</strong> Fix the highlighted field and test again.</p>'
    )
    raw = []
    for proto in ("imap", "smtp"):
        res = test.get(proto) or {}
        for s in res.get("steps") or []:
            raw.append(
                f"<li>{esc(proto)} {esc(s.get('name'))}: {'ok' if s.get('ok') else 'failed'} {esc(s.get('detail'))} ({esc(s.get('ms'))} ms)</li>"
            )
    details = (
        f"<details><summary>All protocol steps</summary><ul>{''.join(raw)}</ul></details>" if raw else ""
    )
    return verdict + f'<ol class="steps">{"".join(items)}</ol>' + details


def connect_page(
    form: Form,
    problems: dict[str, str],
    all_presets: dict[str, Preset],
    csrf: str,
    *,
    test_html: str = "",
    message: str | None = None,
    message_problem: bool = False,
) -> str:
    provider_opts = [("", "Custom server / autodiscover")] + [(k, p.name) for k, p in all_presets.items()]
    preset = all_presets.get(form.get("provider", ""))
    note = esc(preset.notes) if preset and preset.notes else ""
    sections = [
        notice(message, message_problem),
        f'<form id="connect-form" method="post" action="/console/connect" novalidate>{hidden("csrf", csrf)}',
        # Enter in any field runs the connection test (the first submit button is the default one).
        '<button type="submit" name="op" value="test" class="sr-only" tabindex="-1" aria-hidden="true">Test</button>',
        '<div class="cols"><div>',
        "<fieldset><legend>Mailbox</legend><div class=grid>",
        text_field(
            "email", "Email address", form, problems, kind="email", extra='autocomplete="email" required'
        ),
        text_field("display_name", "Display name", form, problems),
        "</div>",
        select_field("provider", "Provider", provider_opts, form, problems),
        f'<p class="muted" id="preset-note" aria-live="polite">{note}</p>',
        '<div class="actions"><button type="submit" name="op" value="preset">Fill from provider</button>'
        '<button type="submit" name="op" value="discover">Autodiscover from the address</button></div>',
        "</fieldset>",
        '<fieldset><legend>Server details</legend><div class="grid">',
        server_fields("imap", form, problems),
        server_fields("smtp", form, problems),
        "</div></fieldset>",
        radios(
            "auth",
            "Sign-in method",
            (("password", "Password or app password"), ("oauth2", "OAuth2 (XOAUTH2)")),
            form,
            "password",
        ),
        '<fieldset id="password-fields"><legend>Credentials</legend><div class="grid">',
        text_field("imap.username", "Username", form, problems, help_text="Usually the email address."),
        text_field("imap.password", "Password or app password", form, problems, kind="password"),
        "</div></fieldset>",
        '<fieldset id="oauth2-fields"><legend>OAuth2</legend><div class="grid">',
        text_field("oauth2.token_endpoint", "Token endpoint", form, problems, kind="url"),
        text_field("oauth2.client_id", "Client id", form, problems),
        text_field("oauth2.client_secret", "Client secret (if any)", form, problems, kind="password"),
        text_field("oauth2.refresh_token", "Refresh token", form, problems, kind="password"),
        text_field("oauth2.scope", "Scope", form, problems),
        "</div></fieldset>",
        "<fieldset><legend>Outgoing server sign-in</legend>",
        checkbox(
            "smtp_same_credentials", "Use the same credentials for the outgoing server", form, default=True
        ),
        '<div id="smtp-credentials" class="grid">',
        text_field("smtp.username", "SMTP username", form, problems),
        text_field("smtp.password", "SMTP password", form, problems, kind="password"),
        "</div></fieldset>",
        "</div><div>",
        "<fieldset><legend>Inbox</legend>",
        text_field(
            "inbox_id",
            "Inbox id (optional)",
            form,
            problems,
            help_text="Letters, digits, dot, underscore, hyphen; generated when empty.",
        ),
        text_field("owner_user_id", "Owner user id", form, problems),
        additional_from_field(form, problems),
        select_field(
            "sharing",
            "Sharing level",
            (
                ("private", "private: only the owner"),
                ("metadata", "metadata: who and when"),
                ("subject", "subject: metadata and subject"),
                ("full", "full: whole messages"),
            ),
            form,
            problems,
        ),
        text_field("shared_with", "Shared with (user ids)", form, problems, help_text="Comma separated."),
        text_field(
            "backfill_days",
            "Backfill window (days)",
            form,
            problems,
            kind="number",
            help_text="Empty: all mail.",
            extra='min="0"',
        ),
        "</fieldset>",
        radios(
            "sent_copy",
            "Sent-copy policy",
            (
                ("auto", "auto: store a copy in Sent unless the provider files one itself"),
                ("always", "always store a copy in Sent"),
                ("never", "never store a copy"),
            ),
            form,
            "auto",
        ),
        "<fieldset><legend>Test and save</legend>",
        '<div class="actions"><button type="submit" name="op" value="test">Test connection</button>'
        '<button type="submit" name="op" value="save" class="primary">Save inbox</button></div>',
        checkbox("force", "Save even if the connection test fails (force)", form),
        '<p class="muted">Saving runs the connection test first and refuses a failing inbox unless forced.</p>',
        "</fieldset>",
        f'<section id="test-result" tabindex="-1" aria-live="polite" aria-label="Connection test">{test_html}</section>',
        "</div></div></form>",
        f'<script type="application/json" id="presets-data">{presets_json(all_presets)}</script>',
    ]
    return "\n".join(sections)


# ---------------------------------------------------------------- inbox detail


def folder_row(c: dict[str, Any]) -> str:
    modseq = c.get("highestmodseq")
    initial = "done" if c.get("initial_done") else f"below UID {esc(c.get('initial_below'))}"
    bodies = "done" if c.get("bodies_done") else f"below UID {esc(c.get('bodies_below'))}"
    return (
        f"<tr><td>{esc(c.get('folder'))}</td><td>{esc(c.get('uidvalidity'))}</td><td>{esc(c.get('uidnext'))}</td>"
        f"<td>{esc(modseq if modseq is not None else '-')}</td><td>{esc(c.get('exists'))}</td>"
        f"<td>{initial} ({esc(c.get('initial_done_count'))} messages)</td><td>{bodies}</td>"
        f"<td>{when(c.get('last_reconciled_at'))}</td></tr>"
    )


def detail_page(  # noqa: PLR0917 - the parts of one page
    view: dict[str, Any],
    live: dict[str, Any],
    cursors: list[dict[str, Any]],
    events: list[dict[str, Any]],
    messages: tuple[datetime | None, dict[str, int]] | None,
    links: tuple[int, list[dict[str, Any]]] | None,
    sent: list[dict[str, Any]] | None,
    csrf: str,
    *,
    events_note: str | None = None,
    test_html: str = "",
    message: str | None = None,
) -> str:
    iid = str(view["inbox_id"])
    cells = live_cells(live)
    imap, smtp = view.get("imap") or {}, view.get("smtp") or {}
    auth = view.get("imap_auth") or {}
    facts = [
        ("Email", esc(view.get("email"))),
        ("Owner", esc(view.get("owner_user_id"))),
        ("Provider", esc(view.get("provider") or "custom")),
        ("IMAP", f"{esc(imap.get('host'))}:{esc(imap.get('port'))} ({esc(imap.get('security'))})"),
        ("SMTP", f"{esc(smtp.get('host'))}:{esc(smtp.get('port'))} ({esc(smtp.get('security'))})"),
        (
            "Sign-in",
            f"{esc(auth.get('kind'))} as {esc(auth.get('username'))}; secret stored encrypted, not shown",
        ),
        ("Outgoing sign-in", "same as incoming" if view.get("smtp_same_credentials") else "own credentials"),
        ("Additional From", esc(", ".join(view.get("additional_from") or [])) or "none"),
        (
            "Sharing",
            esc(view.get("sharing"))
            + (f" with {esc(', '.join(view.get('shared_with') or []))}" if view.get("shared_with") else ""),
        ),
        (
            "Sent copy",
            esc(view.get("sent_copy"))
            + (" (provider files its own)" if view.get("provider_files_sent_copy") else ""),
        ),
        (
            "Backfill",
            f"{esc((view.get('sync') or {}).get('backfill_days'))} days"
            if (view.get("sync") or {}).get("backfill_days") is not None
            else "all mail",
        ),
    ]
    fact_rows = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in facts)
    live_rows = "".join(
        f'<tr><th scope="row">{label}</th><td data-cell="{k}">{cells[k]}</td></tr>'
        for k, label in (
            ("status", "Status"),
            ("last_sync", "Last sync"),
            ("messages", "Messages synced"),
            ("progress", "Initial sync"),
            ("problems", "Errors and warnings"),
        )
    )
    folder_rows = "".join(folder_row(c) for c in cursors) or (
        '<tr><td colspan="8" class="muted">No folder synced yet.</td></tr>'
    )
    event_rows = (
        "".join(
            f"<tr><td>{when(e['time'])}</td><td><code>{esc(e['type'])}</code></td><td>{esc(e.get('summary'))}</td></tr>"
            for e in events
        )
        or '<tr><td colspan="3" class="muted">No events seen since the console started following the topics.</td></tr>'
    )
    if messages:
        last_at, by_type = messages
        counted = "".join(f"<li><code>{esc(k)}</code>: {esc(v)}</li>" for k, v in sorted(by_type.items()))
        msg_html = f"<p>Last message event at {when(last_at)}.</p><ul>{counted}</ul>"
    else:
        msg_html = '<p class="muted">No message event seen in the recent history of mailsync.messages.v1.</p>'

    if links is None:
        links_html = '<p class="muted">Not available: link events are not reachable from this fetcher.</p>'
    else:
        count, recent = links
        items = "".join(
            f"<li>{when(link['time'])} message <code>{esc(link.get('message_key'))}</code> → {esc(', '.join(link.get('records') or []))}</li>"
            for link in recent
        )
        links_html = f"<p>{esc(count)} message(s) linked to CRM records (mailsync.links.v1, recent history).</p><ul>{items}</ul>"
    if sent is None:
        sent_html = '<p class="muted">Not available.</p>'
    else:
        sent_html = (
            "<ul>"
            + "".join(
                f'<li class="{"ok" if s["ok"] else "err"}">{when(s["time"])} {esc(s["summary"])}</li>'
                for s in sent
            )
            + "</ul>"
            if sent
            else '<p class="muted">No Sent-copy outcome in the recent history of mailsync.send.events.v1.</p>'
        )
    return f"""{notice(message)}
<div class="cols"><div>
<table data-poll="/console/api/inboxes?id={esc(iid)}"><caption class="sr-only">Live state</caption>
<tbody data-inbox="{esc(iid)}">{live_rows}</tbody></table>
<div class="panel" style="margin-top:1rem">{action_forms(iid, str(view.get("status")), csrf, detail=True)}</div>
<section id="test-result" aria-live="polite" aria-label="Connection test">{test_html}</section>
</div><div><table><caption class="sr-only">Settings</caption><tbody>{fact_rows}</tbody></table></div></div>
<h2 id="folders">Folders and cursors</h2>
<table aria-labelledby="folders"><thead><tr><th scope="col">Folder</th><th scope="col">UIDVALIDITY</th><th scope="col">UIDNEXT</th>
<th scope="col">HIGHESTMODSEQ</th><th scope="col">Messages (EXISTS)</th><th scope="col">Initial sync</th><th scope="col">Bodies</th>
<th scope="col">Last reconciled</th></tr></thead><tbody>{folder_rows}</tbody></table>
<h2 id="events">Last events</h2>{notice(events_note, True) if events_note else ""}
<table aria-labelledby="events"><thead><tr><th scope="col">Time</th><th scope="col">Type</th><th scope="col">Summary</th></tr></thead>
<tbody>{event_rows}</tbody></table>
<h2>Message events</h2><p class="muted">Counted from the recent history of mailsync.messages.v1.</p>{msg_html}
<h2>Links found</h2>{links_html}
<h2>Sent-copy outcomes</h2>{sent_html}
"""


def error_page(text: str) -> str:
    return f'<div class="problem" role="alert">{esc(text)}</div><p><a href="/console">Back to the inboxes</a></p>'
