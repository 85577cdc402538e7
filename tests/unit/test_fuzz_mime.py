"""Fuzzing the MIME-to-event path: a fetched message → `message received` event, stored documents, body
analysis. Hostile corpus (tests/fuzz_corpus.py) plus hypothesis mutations of it; bounded example counts.

What must hold for any input: no exception, no hang; the event serialises and parses back against its
contract; every document encodes as BSON under the 16 MiB limit; malformed mail carries `parse_errors`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import bson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import parse_event
from services.fetcher.imap.protocol import Value
from services.fetcher.sync.bodies import BodyInfo, BodyStore, analyze
from services.fetcher.sync.messages import (
    FetchedMessage,
    FolderContext,
    message_document,
    message_key,
    received_event,
)
from tests.fuzz_corpus import big_attachment, corpus, duplicate_message_ids

CTX = FolderContext(
    tenant_id="t-fuzz",
    inbox_id="i-fuzz",
    folder="INBOX",
    uidvalidity=7,
    source="/fetcher/test",
    own_addresses=frozenset({"bob@mailsync.test"}),
)
BSON_LIMIT = 16 * 1024 * 1024
CORPUS = corpus("unit")


def fetched(
    raw: bytes, uid: int = 1, internaldate: bytes = b"22-Nov-2026 05:00:00 +0000"
) -> dict[str, Value]:
    """FETCH items the way the sync builds them from `BODY.PEEK[]` (header block cut at CRLFCRLF)."""
    end = raw.find(b"\r\n\r\n")
    return {
        "UID": uid,
        "FLAGS": ["\\Seen"],
        "RFC822.SIZE": len(raw),
        "INTERNALDATE": internaldate,
        "BODY[HEADER]": raw[: end + 4] if end >= 0 else raw,
        "BODY[]": raw,
    }


def pipeline(
    items: dict[str, Value], analysed: list[BodyInfo] | None = None
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Everything the fetcher does with one message; returns the event JSON and both error lists
    (and appends the body analysis to `analysed` when given)."""
    msg = FetchedMessage(items)
    key = message_key(msg)
    event = received_event(CTX, msg, history=False, key=key)
    body = event.model_dump_json()
    parsed = parse_event(body)  # what every consumer does first
    assert parsed.id == event.id
    doc = message_document(CTX, event, msg.modseq)
    assert len(bson.encode(doc)) < BSON_LIMIT
    raw = items.get("BODY[]")
    body_errors: list[str] = []
    if isinstance(raw, bytes):
        info = analyze(raw)
        body_errors = info.parse_errors
        if analysed is not None:
            analysed.append(info)
        meta = {"snippet": info.snippet, "attachments": info.attachments, "parse_errors": info.parse_errors}
        docs = BodyStore.documents(CTX.doc_id(key), raw, meta)
        assert b"".join(bytes(d["data"]) for d in docs) == raw, "raw bytes kept exactly"
        for d in docs:
            assert len(bson.encode(d)) < BSON_LIMIT
    return json.loads(body), event.data.parse_errors, body_errors


# What each hostile message must be flagged with (header flags in the event, MIME flags on the body).
EXPECTED_FLAGS = {
    "no_header_block": "header.MissingHeaderBodySeparatorDefect",
    "duplicated_headers": "header.duplicate.from",
    "nul_bytes": "header.nul_byte",
    "invalid_dates": "date.invalid",
    "far_dates": "date.invalid",
    "eightbit_headers": "header.not_utf8",
}
EXPECTED_BODY_FLAGS = {"broken_boundaries": "CloseBoundaryNotFoundDefect"}


@pytest.mark.parametrize(("name", "raw"), CORPUS, ids=[n for n, _ in CORPUS])
def test_hostile_corpus_becomes_events_and_documents(name: str, raw: bytes) -> None:
    started = time.monotonic()
    event, header_errors, body_errors = pipeline(fetched(raw))
    assert time.monotonic() - started < 5, "no message may take seconds"
    assert event["type"] == "mailsync.message.received" and event["data"]["ref"]["uid"] == 1
    if name in EXPECTED_FLAGS:
        assert EXPECTED_FLAGS[name] in header_errors, header_errors
    if name in EXPECTED_BODY_FLAGS:
        assert EXPECTED_BODY_FLAGS[name] in body_errors, body_errors
    if name == "deep_multipart":
        assert event["data"]["has_attachments"] is True
    if name in ("unknown_charset", "lying_charset", "utf8_charset_with_invalid_bytes"):
        assert analyze(raw).snippet, "a body in a bad charset still yields a readable snippet"


def test_clean_mail_has_no_parse_errors() -> None:
    raw = (
        b"From: A <a@example.com>\r\nTo: b@mailsync.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"Date: Sun, 22 Nov 2026 05:00:00 +0000\r\nMessage-ID: <ok@x>\r\n\r\nhello\r\n"
    )
    event, header_errors, body_errors = pipeline(fetched(raw))
    assert header_errors == [] and body_errors == []
    assert event["data"]["subject"] == "café"


def test_deep_nesting_beyond_the_recursion_limit_is_flagged_not_raised() -> None:
    from tests.fuzz_corpus import deep_multipart

    _, _, body_errors = pipeline(fetched(deep_multipart("deep", 3000)))
    assert body_errors == ["unparseable MIME: RecursionError"]


def test_duplicate_message_ids_stay_two_messages() -> None:
    first, second = duplicate_message_ids("unit")
    keys = {message_key(FetchedMessage(fetched(raw, uid))) for uid, raw in ((1, first), (2, second))}
    assert len(keys) == 2, "two different mails sharing a Message-ID must not collapse into one"


def test_event_survives_any_header_failure_with_a_flag() -> None:
    # INTERNALDATE past year 9999 in UTC and a Date header that overflows: no exception, no date.
    items = fetched(
        b"From: a@b.c\r\nDate: Fri, 31 Dec 9999 23:59:59 -1200\r\n\r\nx",
        internaldate=b"31-Dec-9999 23:59:59 -1200",
    )
    event, header_errors, _ = pipeline(items)
    assert event["data"]["date"] is None and event["data"]["internal_date"] is None
    assert header_errors == ["date.invalid"]


def test_fifty_megabyte_attachment_is_analysed_in_bounded_time() -> None:
    raw = big_attachment("unit", mb=50)
    started = time.monotonic()
    analysed: list[BodyInfo] = []
    event, _, body_errors = pipeline(fetched(raw), analysed)
    elapsed = time.monotonic() - started
    (info,) = analysed
    print(f"\n50 MB attachment: message of {len(raw) / 1e6:.1f} MB through the whole path in {elapsed:.2f}s")
    # ~2 s on an idle 2-core machine; the bound only has to tell "slow under load" from "hangs".
    assert elapsed < 60, f"50 MB message took {elapsed:.1f}s"
    assert body_errors == [] and event["data"]["has_attachments"] is True
    assert info.attachments[0]["size"] == 50 * 1024 * 1024 and info.snippet == "see attachment"


# ---- hypothesis: mutations of the corpus ----------------------------------------------------------

HOSTILE_TOKENS = [
    b"\x00",
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b"=?",
    b"?=",
    b"=?utf-8?b?",
    b"=?x-unknown?q?",
    b"--",
    b"boundary=",
    b'"',
    b"<",
    b">",
    b"@",
    b",",
    b";",
    b"\xff",
    b"\xc3",
    b"\x80",
    b"Content-Type: multipart/mixed; boundary=z\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"charset=",
    b"Date: ",
    b"From: ",
    b"Message-ID: ",
    b"\t",
    b" " * 100,
    b"=",
    b"=\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(CORPUS))[1])
    if len(base) > 300_000:  # keep examples fast: mutate the start of the very long ones
        base = base[:300_000]
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(base)))
        op = draw(st.integers(0, 4))
        if op == 0:
            base[pos:pos] = draw(st.sampled_from(HOSTILE_TOKENS))
        elif op == 1:
            base[pos:pos] = draw(st.binary(min_size=1, max_size=40))
        elif op == 2:
            del base[pos : pos + draw(st.integers(1, 200))]
        elif op == 3 and pos < len(base):
            base[pos] = draw(st.integers(0, 255))
        else:
            base = base[:pos]
    return bytes(base)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=mutated(), uid=st.integers(1, (1 << 32) - 1))
def test_mutated_hostile_mail_never_breaks_the_pipeline(raw: bytes, uid: int) -> None:
    pipeline(fetched(raw, uid))


header_name = st.sampled_from(
    [
        *("From", "To", "Cc", "Bcc", "Reply-To", "Sender", "Subject", "Date", "Message-ID", "In-Reply-To"),
        *("References", "Content-Type", "Auto-Submitted", "X-Mailsync-Send-Id", "List-Id", "Precedence"),
    ]
) | st.text(min_size=1, max_size=20)
header_value = (
    st.binary(max_size=200) | st.sampled_from(HOSTILE_TOKENS) | st.text(max_size=120).map(str.encode)
)


@settings(max_examples=400, deadline=None)
@given(
    headers=st.lists(st.tuples(header_name, header_value), max_size=12),
    body=st.binary(max_size=200),
    internaldate=st.binary(max_size=40),
)
def test_random_header_blocks_never_break_the_pipeline(
    headers: list[tuple[str, bytes]], body: bytes, internaldate: bytes
) -> None:
    raw = b"".join(n.encode("utf-8", "replace") + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body
    pipeline(fetched(raw, internaldate=internaldate))
