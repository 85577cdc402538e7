"""Is an inbound message a person's reply, an automatic reply or a bounce? Pure decisions, no I/O.

Signals, strongest first:
- bounce: a DSN (`multipart/report; report-type=delivery-status`, RFC 3464), a mailer-daemon or
  postmaster sender with a delivery-failure subject, or an `X-Failed-Recipients` header (Exim);
- auto-reply: `Auto-Submitted` other than `no` (RFC 3834), `X-Autoreply`, `X-Autorespond`,
  `Precedence: bulk | auto_reply | junk`, or a common out-of-office subject.
Neither counts as a reply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from contracts.messages import DeliveryReport

from .addresses import InvalidAddress, normalize

Kind = Literal["human", "auto_reply", "bounce"]

_DAEMON_LOCALS = re.compile(r"^(mailer[-_.]?daemon|postmaster|mail[-_.]?delivery[-_.]?(system|subsystem))$")
_BOUNCE_SUBJECT = re.compile(
    r"(undeliver(ed|able)|returned mail|delivery (status notification|has failed|failure|failed)"
    r"|mail delivery (failed|failure|system)|failure notice|non[- ]?delivery|could not be delivered"
    r"|unzustellbar|non remis|no se puede entregar)",
    re.IGNORECASE,
)
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[- ]?(reply|response|antwort)|out of (the )?office|ooo\b|away from (the )?office"
    r"|on vacation|vacation (reply|notice)|abwesenheitsnotiz|automatische antwort|r[ée]ponse automatique"
    r"|absent\b|absence\b|respuesta autom[áa]tica|fuera de la oficina|risposta automatica)",
    re.IGNORECASE,
)
_BULK_PRECEDENCE = {"bulk", "auto_reply", "junk"}


@dataclass(frozen=True)
class Classification:
    kind: Kind
    signal: str = ""
    bounced_recipients: list[str] = field(default_factory=list)
    status: str | None = None
    permanent: bool = False
    diagnostic: str | None = None
    original_message_id: str | None = None


def _content_type(value: str | None) -> tuple[str, dict[str, str]]:
    if not value:
        return "", {}
    main, *params = value.split(";")
    parsed: dict[str, str] = {}
    for p in params:
        k, sep, v = p.partition("=")
        if sep:
            parsed[k.strip().lower()] = v.strip().strip('"').lower()
    return main.strip().lower(), parsed


def _is_daemon(emails: Sequence[str]) -> bool:
    for raw in emails:
        try:
            local = normalize(raw).rpartition("@")[0]
        except InvalidAddress:
            continue
        if _DAEMON_LOCALS.match(local):
            return True
    return False


def _strip_type(recipient: str) -> str:
    # Final-Recipient: rfc822; ann@example.com
    _, sep, addr = recipient.partition(";")
    return (addr if sep else recipient).strip()


def _bounce(report: DeliveryReport | None, headers: Mapping[str, str], signal: str) -> Classification:
    recipients: list[str] = []
    status: str | None = None
    diagnostic: str | None = None
    permanent = True
    original = report.original_message_id if report else None
    if report and report.recipients:
        failed = [
            r for r in report.recipients if r.action.lower() in ("failed", "delayed")
        ] or report.recipients
        recipients = [_strip_type(r.final_recipient) for r in failed]
        status = next((r.status for r in failed if r.status), None)
        diagnostic = next((r.diagnostic for r in failed if r.diagnostic), None)
        permanent = any(r.action.lower() == "failed" for r in failed) and not (status or "").startswith("4")
    elif headers.get("x-failed-recipients"):
        recipients = [a.strip() for a in headers["x-failed-recipients"].split(",") if a.strip()]
    return Classification(
        "bounce",
        signal,
        bounced_recipients=recipients,
        status=status,
        permanent=permanent,
        diagnostic=diagnostic[:500] if diagnostic else None,
        original_message_id=original,
    )


def classify(
    *,
    from_emails: Sequence[str],
    subject: str | None,
    auto_submitted: str | None,
    headers: Mapping[str, str],
    content_type: str | None,
    delivery_report: DeliveryReport | None,
) -> Classification:
    """Decide what kind of inbound message this is, and say which signal decided it."""
    headers = {k.lower(): v for k, v in headers.items()}
    ctype, params = _content_type(content_type)
    if ctype == "multipart/report" and params.get("report-type") == "delivery-status":
        return _bounce(
            delivery_report, headers, "Content-Type: multipart/report; report-type=delivery-status"
        )
    if delivery_report is not None and delivery_report.recipients:
        return _bounce(delivery_report, headers, "message/delivery-status part")
    if "x-failed-recipients" in headers:
        return _bounce(delivery_report, headers, "X-Failed-Recipients")
    if _is_daemon(from_emails) and (not subject or _BOUNCE_SUBJECT.search(subject)):
        return _bounce(delivery_report, headers, "From: mailer-daemon")

    auto = (auto_submitted or "").split(";", 1)[0].strip().lower()
    if auto and auto != "no":
        return Classification("auto_reply", f"Auto-Submitted: {auto}")
    for name in ("x-autoreply", "x-autorespond"):
        value = headers.get(name)
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            return Classification("auto_reply", f"{name.title()}: {value.strip()[:50]}")
    precedence = headers.get("precedence", "").strip().lower()
    if precedence in _BULK_PRECEDENCE:
        return Classification("auto_reply", f"Precedence: {precedence}")
    if subject and _AUTO_SUBJECT.search(subject):
        return Classification("auto_reply", "out-of-office subject")
    return Classification("human")


def referenced_ids(in_reply_to: Sequence[str], references: Sequence[str]) -> list[str]:
    """Message-IDs a message answers, nearest first: In-Reply-To, then References from the end."""
    out: list[str] = []
    for raw in [*in_reply_to, *reversed(references)]:
        mid = raw.strip().strip("<>").strip()
        if mid and mid not in out:
            out.append(mid)
    return out
