"""A delivery report's `message received` carries the parsed report (services/fetcher/sync/messages.py)."""

from __future__ import annotations

from services.fetcher.sync.messages import FetchedMessage, FolderContext, is_report, received_event
from tests.unit.test_linker_dsn import POSTFIX_BOUNCE

CTX = FolderContext(
    tenant_id="t1", inbox_id="i1", folder="INBOX", uidvalidity=7, source="/t", own_addresses=frozenset()
)


def items(raw: bytes, *, whole: bool) -> FetchedMessage:
    raw = raw.replace(b"\n", b"\r\n")
    head = raw[: raw.index(b"\r\n\r\n") + 4]
    got: dict[str, object] = {"UID": 3, "FLAGS": [], "RFC822.SIZE": len(raw), "BODY[HEADER]": head}
    if whole:
        got["BODY[]"] = raw
    return FetchedMessage(got)  # type: ignore[arg-type]


def test_report_fetched_whole_has_its_delivery_report() -> None:
    msg = items(POSTFIX_BOUNCE, whole=True)
    assert is_report(msg)
    report = received_event(CTX, msg, history=False).data.delivery_report
    assert report is not None
    assert report.original_message_id == "mailsync.0123456789abcdef0123456789abcdef@mailsync.test"
    assert [(r.final_recipient, r.status) for r in report.recipients] == [("nobody@mailsync.test", "5.1.1")]


def test_headers_only_or_ordinary_mail_has_none() -> None:
    assert received_event(CTX, items(POSTFIX_BOUNCE, whole=False), history=False).data.delivery_report is None
    plain = items(b"From: a@example.com\nSubject: hi\n\nbody\n", whole=True)
    assert not is_report(plain)
    assert received_event(CTX, plain, history=False).data.delivery_report is None
