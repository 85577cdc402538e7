"""The sans-I/O IMAP response parser, sequence sets, backoff and message building (no server needed)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsync.imap_names import decode_mailbox, encode_mailbox
from services.fetcher.imap.backoff import Backoff
from services.fetcher.imap.protocol import (
    Continuation,
    ProtocolError,
    RawResponse,
    ResponseFramer,
    Tagged,
    Untagged,
    Value,
    fetch_items,
    parse_response,
    parse_values,
    quote,
)
from services.fetcher.imap.seqset import chunks_desc, compress, expand
from services.fetcher.sync.messages import FetchedMessage, FolderContext, message_key, received_event


def parse_all(data: bytes) -> list[Tagged | Untagged | Continuation]:
    return [parse_response(r) for r in ResponseFramer().feed(data)]


def test_fetch_with_literal_quoted_nil_and_nested_lists() -> None:
    header = b"Subject: hi\r\nFrom: a@b.c\r\n\r\n"
    data = (
        b'* 12 FETCH (UID 34 FLAGS (\\Seen $Forwarded) INTERNALDATE "22-Nov-2026 02:59:55 +0000" '
        b'RFC822.SIZE 820 MODSEQ (5) X-GM-LABELS (\\Inbox "My \\"label\\"") '
        b'ENVELOPE (NIL "s" ((NIL NIL "a" "b.c")) NIL) '
        b"BODY[HEADER] {" + str(len(header)).encode() + b"}\r\n" + header + b")\r\n"
    )
    (resp,) = parse_all(data)
    assert isinstance(resp, Untagged) and resp.kind == "FETCH" and resp.number == 12
    items = fetch_items(resp)
    assert items["UID"] == 34
    assert items["FLAGS"] == ["\\Seen", "$Forwarded"]
    assert items["INTERNALDATE"] == b"22-Nov-2026 02:59:55 +0000"
    assert items["MODSEQ"] == [5]
    assert items["X-GM-LABELS"] == ["\\Inbox", b'My "label"']
    assert items["ENVELOPE"] == [None, b"s", [[None, None, b"a", b"b.c"]], None]
    assert items["BODY[HEADER]"] == header


def test_section_spec_with_field_list_and_partial_is_one_item_name() -> None:
    data = b"* 1 FETCH (UID 9 BODY[HEADER.FIELDS (FROM TO)] {4}\r\nab\r\n BODY[]<0> {2}\r\nxy)\r\n"
    items = fetch_items(parse_all(data)[0])  # type: ignore[arg-type]
    assert items == {"UID": 9, "BODY[HEADER.FIELDS (FROM TO)]": b"ab\r\n", "BODY[]": b"xy"}


def test_literal_may_contain_anything_including_crlf_and_parentheses() -> None:
    body = b") * 2 EXISTS\r\nM1 OK fake\r\n{5}\r\n"
    data = b"* 3 FETCH (UID 3 BODY[] {" + str(len(body)).encode() + b"}\r\n" + body + b")\r\nM7 OK done\r\n"
    resp = parse_all(data)
    assert fetch_items(resp[0])["BODY[]"] == body  # type: ignore[arg-type]
    assert resp[1] == Tagged("M7", "OK", None, "done")


def test_status_responses_and_codes() -> None:
    out = parse_all(
        b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
        b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"
        b"* 172 EXISTS\r\n"
        b"* SEARCH 2 84 882\r\n"
        b"* SEARCH\r\n"
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"\r\n'
        b"* VANISHED (EARLIER) 1:3,5\r\n"
        b"+ idling\r\n"
        b"M2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        b"M3 OK [READ-ONLY] Examine completed (0.001 + 0.000 secs).\r\n"
    )
    assert isinstance(out[0], Untagged) and out[0].code is not None
    assert (out[0].code.name, out[0].code.number(), out[0].text) == ("UIDVALIDITY", 3857529045, "UIDs valid")
    assert out[1].code is not None and out[1].code.args == [["\\Deleted", "\\Seen", "\\*"]]  # type: ignore[union-attr]
    assert out[2] == Untagged("EXISTS", number=172)
    assert out[3] == Untagged("SEARCH", values=[2, 84, 882])
    assert out[4] == Untagged("SEARCH", values=[])
    assert out[5] == Untagged("LIST", values=[["\\HasNoChildren", "\\Sent"], b"/", b"Sent Items"])
    assert out[6] == Untagged("VANISHED", values=[["EARLIER"], "1:3,5"])
    assert out[7] == Continuation("idling")
    assert isinstance(out[8], Tagged) and out[8].status == "NO"
    assert out[8].code is not None and out[8].code.name == "AUTHENTICATIONFAILED"
    assert isinstance(out[9], Tagged) and out[9].code is not None and out[9].code.name == "READ-ONLY"


@pytest.mark.parametrize(
    "line",
    [
        b"* 1 FETCH (UID 1",
        b'* 1 FETCH (UID "unterminated)',
        b"* 1 FETCH (BODY[HEADER {3})",
        b"M1 MAYBE what",
        b"* 1",
        b"* 1 FETCH (UID 1 FLAGS)",
    ],
)
def test_malformed_responses_raise_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        resp = parse_all(line + b"\r\n")[0]
        if isinstance(resp, Untagged) and resp.kind == "FETCH":
            fetch_items(resp)


def test_huge_literal_and_endless_line_are_refused() -> None:
    with pytest.raises(ProtocolError):
        ResponseFramer(max_literal=100).feed(b"* 1 FETCH (BODY[] {101}\r\n")
    framer = ResponseFramer(max_line=1000)
    with pytest.raises(ProtocolError):
        for _ in range(20):
            framer.feed(b"x" * 100)


def test_framer_is_linear_on_a_response_split_into_tiny_reads() -> None:
    payload = b"* 1 FETCH (UID 1 BODY[] {200000}\r\n" + b"a" * 200000 + b")\r\n"
    framer = ResponseFramer()
    out = []
    for i in range(0, len(payload), 7):
        out += framer.feed(payload[i : i + 7])
    assert len(out) == 1 and out[0].literals == (b"a" * 200000,)


# ---- property tests: whatever the split, the parse is the same; garbage never crashes ------------

atoms = st.from_regex(r"\A[A-Za-z\\$][A-Za-z0-9.\-]{0,8}\Z").filter(lambda a: a.upper() != "NIL")
strings = st.binary(max_size=40)
values: st.SearchStrategy[Value] = st.recursive(
    st.one_of(st.none(), st.integers(0, 2**63), atoms, strings),
    lambda children: st.lists(children, max_size=5),
    max_leaves=25,
)


def encode(v: Value, literals: bool) -> bytes:
    if v is None:
        return b"NIL"
    if isinstance(v, int):
        return str(v).encode()
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, bytes):
        quotable = all(b not in v for b in (b"\r", b"\n", b"\x00")) and not literals
        if quotable:
            return b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return b"{" + str(len(v)).encode() + b"}\r\n" + v
    return b"(" + b" ".join(encode(x, literals) for x in v) + b")"


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.tuples(atoms, values), max_size=6), literals=st.booleans(), seed=st.integers(0, 999))
def test_fetch_roundtrip_under_any_split(items: list[tuple[str, Value]], literals: bool, seed: int) -> None:
    body = b" ".join(name.encode() + b" " + encode(v, literals) for name, v in items)
    wire = b"* 7 FETCH (" + body + b")\r\nM1 OK done\r\n"
    rng = random.Random(seed)
    framer = ResponseFramer()
    raws: list[RawResponse] = []
    pos = 0
    while pos < len(wire):
        step = rng.randint(1, 64)
        raws += framer.feed(wire[pos : pos + step])
        pos += step
    assert len(raws) == 2
    got = fetch_items(parse_response(raws[0]))  # type: ignore[arg-type]
    expected: dict[str, Value] = {}
    for name, v in items:
        expected[name.upper()] = v
    assert got == expected
    assert parse_response(raws[1]) == Tagged("M1", "OK", None, "done")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_only_protocol_error(data: bytes) -> None:
    try:
        for raw in ResponseFramer(max_literal=1000).feed(data + b"\r\n"):
            resp = parse_response(raw)
            if isinstance(resp, Untagged) and resp.kind == "FETCH":
                fetch_items(resp)
    except ProtocolError:
        pass


@given(st.sets(st.integers(1, 5000), max_size=200))
def test_sequence_sets_roundtrip(uids: set[int]) -> None:
    spec = compress(uids)
    assert expand(spec) == sorted(uids)
    assert len(spec) <= len(",".join(map(str, sorted(uids))))


def test_chunks_are_newest_first_and_bounded() -> None:
    chunks = list(chunks_desc(list(range(1, 12)), 4))
    assert chunks == [[8, 9, 10, 11], [4, 5, 6, 7], [1, 2, 3]]
    assert expand("5:*", star=7) == [5, 6, 7]


def test_backoff_grows_with_jitter_and_caps_at_ten_minutes() -> None:
    b = Backoff(base=1.0, cap=600.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(40)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(300.0 <= d <= 600.0 for d in delays[12:])
    b.reset()
    assert b.next_delay() <= 1.0


def test_arguments_are_quoted_and_mailbox_names_encoded() -> None:
    assert quote("INBOX") == b"INBOX"
    assert quote('pa ss"\\') == b'"pa ss\\"\\\\"'
    assert quote("NIL") == b'"NIL"'
    with pytest.raises(ValueError, match="CR"):
        quote("a\r\nM2 DELETE INBOX")
    name = "Entwürfe & Sent/日本"
    assert decode_mailbox(encode_mailbox(name)) == name
    assert encode_mailbox("Entwürfe") == "Entw&APw-rfe"
    assert parse_values(RawResponse(b'"a\\"b" NIL 7')) == [b'a"b', None, 7]


# ---- what a fetched message becomes --------------------------------------------------------------

CTX = FolderContext(
    tenant_id="t1",
    inbox_id="i1",
    folder="INBOX",
    uidvalidity=5,
    source="/mailsync/fetcher",
    own_addresses=frozenset({"me@mailsync.test"}),
)


def fetched(headers: bytes, **extra: Value) -> FetchedMessage:
    items: dict[str, Value] = {
        "UID": 10,
        "FLAGS": ["\\Seen", "\\Recent"],
        "RFC822.SIZE": 123,
        "INTERNALDATE": b" 2-Nov-2026 10:00:00 +0100",
        "BODY[HEADER]": headers,
    }
    items.update(extra)
    return FetchedMessage(items)


def test_received_event_fields() -> None:
    msg = fetched(
        b'From: =?utf-8?q?J=C3=B6rg?= <Me@MailSync.test>\r\nTo: a@x.test, "B, C" <b@x.test>\r\n'
        b"Subject: =?utf-8?b?SMOkbGxv?= world\r\nMessage-ID: <abc@x>\r\nIn-Reply-To: <p@x>\r\n"
        b"References: <o@x> <p@x>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0100\r\n"
        b"Auto-Submitted: auto-replied\r\nPrecedence: bulk\r\n"
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
    )
    ev = received_event(CTX, msg, history=True)
    d = ev.data
    assert d.subject == "Hällo world" and d.from_[0].name == "Jörg"
    assert d.direction == "outbound", "From is the inbox's own address"
    assert [a.email for a in d.to] == ["a@x.test", "b@x.test"]
    assert d.message_id == "abc@x" and d.in_reply_to == ["p@x"] and d.references == ["o@x", "p@x"]
    assert d.flags == ["\\Seen"], "\\Recent describes the session, not the message"
    assert d.internal_date is not None and d.internal_date.hour == 9
    assert d.auto_submitted == "auto-replied" and d.headers == {"precedence": "bulk"}
    assert d.has_attachments and d.history and ev.id == ev.expected_id()
    # Same fact, same id (replays dedupe); metadata sharing hides the subject.
    assert received_event(CTX, msg, history=True).id == ev.id
    meta = FolderContext(**{**CTX.__dict__, "sharing": "metadata"})
    assert received_event(meta, msg, history=True).data.subject is None


def test_message_keys_gmail_message_id_or_content_hash() -> None:
    with_mid = fetched(b"Message-ID: <k@x>\r\nSubject: s\r\n\r\n")
    no_mid = fetched(b"Subject: s\r\n\r\n")
    assert message_key(fetched(b"Message-ID: <k@x>\r\n\r\n", **{"X-GM-MSGID": 1278455344230334865})) == (
        "gm:1278455344230334865"
    )
    assert message_key(with_mid).startswith("m:") and message_key(no_mid).startswith("h:")
    # The key does not depend on the UID or folder: a UIDVALIDITY rebuild finds the same message.
    moved = fetched(b"Message-ID: <k@x>\r\nSubject: s\r\n\r\n", UID=999)
    assert message_key(moved) == message_key(with_mid)
    assert message_key(fetched(b"Message-ID: <k@x>\r\nSubject: other\r\n\r\n")) != message_key(with_mid)


def test_broken_headers_do_not_raise() -> None:
    msg = fetched(b"From: <<<\r\nDate: not a date\r\nSubject: =?bogus?q?x?=\r\n\r\n", UID=3)
    d = received_event(CTX, msg, history=False).data
    assert d.date is None and d.subject is not None


def test_body_analysis_snippet_attachments_and_defects() -> None:
    from services.fetcher.sync.bodies import analyze

    raw = (
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
        b"Hello   there,\r\nsee attached.\r\n--XX\r\nContent-Type: application/pdf; name=a.pdf\r\n"
        b"Content-Disposition: attachment; filename=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"JVBERi0=\r\n--XX--\r\n"
    )
    info = analyze(raw)
    assert info.snippet == "Hello there, see attached."
    assert info.attachments == [
        {"filename": "a.pdf", "content_type": "application/pdf", "size": 5, "content_id": None}
    ]
    assert info.parse_errors == []
    broken = analyze(b"Content-Type: multipart/mixed; boundary=XX\r\n\r\nno boundary ever\r\n")
    assert broken.parse_errors, "malformed MIME is flagged, not dropped"


def test_download_budget_pauses_until_the_next_utc_day() -> None:
    from datetime import UTC, datetime

    from services.fetcher.sync.budget import GMAIL_DAILY_BYTES, DownloadBudget, daily_limit

    assert daily_limit("gmail", False, None) == GMAIL_DAILY_BYTES
    assert daily_limit(None, False, None) is None
    assert daily_limit(None, True, 10) == 10_000_000
    b = DownloadBudget(limit=1000)
    t = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
    b.add(999, t)
    assert b.resume_at(t) is None
    b.add(1, t)
    assert b.resume_at(t) == datetime(2026, 11, 23, tzinfo=UTC)
    nxt = datetime(2026, 11, 23, 0, 0, 1, tzinfo=UTC)
    assert b.resume_at(nxt) is None, "a new day, a new budget"
    b.add(10, nxt)
    assert b.used == 10


def test_cli_progress_bar_per_inbox() -> None:
    from mailsync.cli import progress_lines

    lines = progress_lines(
        {"i1": {"INBOX": (50, 100), "Sent": (0, 100)}, "i2": {"INBOX": (3, 3)}}, {"i2"}, 10
    )
    assert lines[0].startswith("i1") and "[##--------]" in lines[0] and "50/200" in lines[0]
    assert "[##########]" in lines[1] and "initial sync completed" in lines[1]
