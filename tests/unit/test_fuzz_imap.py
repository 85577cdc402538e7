"""Fuzzing the IMAP response parser with mutated real server transcripts (Dovecot's words, Gmail's
extensions): whatever the bytes and however they are split, the framer and parser either return
responses or raise ProtocolError; never another exception, never a hang. Bounded example counts."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from services.fetcher.imap.protocol import (
    ProtocolError,
    RawResponse,
    ResponseFramer,
    Untagged,
    fetch_items,
    parse_response,
)
from services.fetcher.sync.messages import FetchedMessage, FolderContext, message_key, received_event

HEADER = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.com>\r\nTo: bob@mailsync.test\r\nSubject: hi\r\n"
    b"Date: Sun, 22 Nov 2026 05:00:00 +0000\r\nMessage-ID: <t1@example.com>\r\n\r\n"
)
BODY = HEADER + b"hello (world) * 3 EXISTS\r\nM9 OK not really\r\n"


def lit(data: bytes) -> bytes:
    return b"{" + str(len(data)).encode() + b"}\r\n" + data


# A sync session as Dovecot (and Gmail) answer it, one transcript per command.
TRANSCRIPTS = [
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN] "
    b"Dovecot (Debian) ready.\r\n",
    b"* CAPABILITY IMAP4rev1 SASL-IR IDLE CONDSTORE QRESYNC UIDPLUS MOVE SPECIAL-USE X-GM-EXT-1\r\n"
    b"M1 OK Pre-login capabilities listed, post-login capabilities have more.\r\n",
    b'* LIST (\\HasNoChildren) "/" INBOX\r\n* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"\r\n'
    b'* LIST (\\HasChildren \\Noselect) "/" "[Gmail]"\r\n'
    b'* LIST (\\All \\HasNoChildren) "/" "[Gmail]/All Mail"\r\n'
    b'* LIST () "/" {11}\r\nodd"name\\\\x\r\nM2 OK List completed (0.001 + 0.000 secs).\r\n',
    b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
    b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n* 172 EXISTS\r\n* 0 RECENT\r\n"
    b"* OK [UIDVALIDITY 1763780000] UIDs valid\r\n* OK [UIDNEXT 4392] Predicted next UID\r\n"
    b"* OK [HIGHESTMODSEQ 715194045007] Highest\r\n"
    b"M3 OK [READ-ONLY] Examine completed (0.001 + 0.000 secs).\r\n",
    b"* SEARCH 1 2 3 5 8 13 21 34 55 89 4391\r\nM4 OK Search completed (0.001 + 0.000 secs).\r\n",
    b'* ESEARCH (TAG "M5") UID ALL 1:3,5,8:13\r\nM5 OK Search completed.\r\n',
    b'* 12 FETCH (UID 34 FLAGS (\\Seen $Forwarded) INTERNALDATE "22-Nov-2026 02:59:55 +0000" '
    b"RFC822.SIZE 820 MODSEQ (715194045007) X-GM-MSGID 1278455344230334865 X-GM-THRID 1266894439832287888 "
    b'X-GM-LABELS (\\Inbox "My \\"label\\"" {5}\r\nl\r\nab) BODY[HEADER] ' + lit(HEADER) + b")\r\n"
    b"* 13 FETCH (UID 35 FLAGS () BODY[] " + lit(BODY) + b" MODSEQ (9))\r\n"
    b"* 14 FETCH (FLAGS (\\Seen) UID 36 BODY[HEADER.FIELDS (FROM TO)]<0> {4}\r\nab\r\n)\r\n"
    b"M6 OK Fetch completed (0.002 + 0.000 + 0.001 secs).\r\n",
    b"+ idling\r\n* 173 EXISTS\r\n* 3 EXPUNGE\r\n* VANISHED (EARLIER) 1:3,5\r\n"
    b"* 7 FETCH (UID 7 MODSEQ (12) FLAGS (\\Seen))\r\nM7 OK Idle completed (0.001 + 2.000 secs).\r\n",
    b"* BYE Server shutting down.\r\nM8 NO [UNAVAILABLE] Temporary failure\r\n"
    b"M9 NO [AUTHENTICATIONFAILED] Authentication failed.\r\nM10 BAD Error in IMAP command: unknown\r\n",
]
WIRE = b"".join(TRANSCRIPTS)
MUTATIONS = [
    b"\r\n",
    b"{",
    b"}",
    b"{999}",
    b"{0}\r\n",
    b"~{3}\r\n",
    b"{4294967296}\r\n",
    b"(",
    b")",
    b"[",
    b"]",
    b'"',
    b"\\",
    b"\x00",
    b" ",
    b"NIL",
    b"* ",
    b"+ ",
    b"<",
    b">",
    b"99999999999999999999999",
    b"\xff",
]
CTX = FolderContext("t", "i", "INBOX", 1, "/test", frozenset())


def consume(chunks: list[bytes]) -> list[str]:
    """Feed chunks; parse every response and look into FETCH items like the sync does."""
    framer = ResponseFramer(max_literal=1 << 20, max_line=1 << 16)
    seen: list[str] = []
    for chunk in chunks:
        for raw in framer.feed(chunk):
            resp = parse_response(raw)
            seen.append(type(resp).__name__)
            if isinstance(resp, Untagged) and resp.kind == "FETCH":
                items = fetch_items(resp)
                if isinstance(items.get("UID"), int):
                    msg = FetchedMessage(items)
                    received_event(CTX, msg, history=False, key=message_key(msg))
    return seen


def outcome(chunks: list[bytes]) -> list[str] | str:
    try:
        return consume(chunks)
    except ProtocolError:
        return "ProtocolError"


def split(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        step = rng.choice((1, 2, 3, 7, 64, 1000))
        out.append(data[pos : pos + step])
        pos += step
    return out


def test_the_unmutated_transcripts_parse() -> None:
    seen = consume([WIRE])
    assert seen.count("Tagged") == 10 and seen.count("Continuation") == 1


@st.composite
def mutated_wire(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([*TRANSCRIPTS, WIRE])))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 3))
        if op == 0:
            data[pos:pos] = draw(st.sampled_from(MUTATIONS))
        elif op == 1:
            del data[pos : pos + draw(st.integers(1, 30))]
        elif op == 2 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=20))
    return bytes(data)


@settings(max_examples=1500, deadline=None)
@given(wire=mutated_wire(), seed=st.integers(0, 10_000))
def test_mutated_transcripts_raise_only_protocol_error_whatever_the_split(wire: bytes, seed: int) -> None:
    whole = outcome([wire])
    pieces = outcome(split(wire, seed))
    # Framing must not depend on how TCP cut the stream.
    assert whole == pieces


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 1 << 22), declared_extra=st.integers(-5, 5))
def test_literal_sizes_are_bounded_and_exact(size: int, declared_extra: int) -> None:
    framer = ResponseFramer(max_literal=1 << 20)
    declared = max(0, size + declared_extra)
    head = b"* 1 FETCH (UID 1 BODY[] {" + str(declared).encode() + b"}\r\n"
    try:
        out = framer.feed(head + b"x" * min(size, 1 << 21) + b")\r\n")
    except ProtocolError:
        assert declared > 1 << 20
        return
    assert declared <= 1 << 20
    for raw in out:
        try:
            resp = parse_response(raw)
            if isinstance(resp, Untagged):
                fetch_items(resp)
        except ProtocolError:
            pass


def test_absurd_numbers_are_refused_not_stored() -> None:
    for item in (
        b"UID 99999999999999999999",
        b"RFC822.SIZE 4294967296",
        b"UID 1 MODSEQ (9223372036854775808)",
    ):
        (raw,) = ResponseFramer().feed(b"* 1 FETCH (" + item + b")\r\n")
        resp = parse_response(raw)
        assert isinstance(resp, Untagged)
        try:
            fetch_items(resp)
        except ProtocolError:
            continue
        raise AssertionError(f"{item!r} accepted")
    ok = parse_response(RawResponse(b"* 1 FETCH (UID 4294967295 MODSEQ (9223372036854775807))"))
    assert isinstance(ok, Untagged) and fetch_items(ok)["UID"] == 4294967295
