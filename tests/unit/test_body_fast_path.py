"""Body analysis: the fast path for plain single-part mail gives what the stdlib parse gives.

`analyze` answers plain text/plain messages without building a Message tree. These tests generate
messages around the edges the fast path decides on (Content-Type parameters, transfer encodings,
charsets, folding, odd bytes, header lines the parser would flag) and compare its answer with the full
parse whenever it answers; plus the corpus of hostile mail, and a check that it does answer for the
ordinary message, so the comparison is not vacuous.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.fetcher.sync.bodies import _parsed, _plain_text, analyze
from tests.fuzz_corpus import corpus

CRLF = b"\r\n"

CONTENT_TYPES = [
    None,
    b"text/plain",
    b"TEXT/Plain",
    b"text/plain; charset=utf-8",
    b'text/plain; charset="ISO-8859-1"',
    b"text/plain;charset=us-ascii;format=flowed",
    b"text/plain ; charset = utf-8 ; delsp=yes",
    b"text/plain; charset=x-unknown-charset",
    b'text/plain; charset=""',
    b"text/plain; charset=utf-8; charset=latin-1",
    b"text/plain; name=notes.txt",
    b"text/plain; NAME=notes.txt",
    b"text/plain; charset*=utf-8''x",
    b"text/plain; charset=utf-8;",
    b"text/plain   ",
    b"text/html; charset=utf-8",
    b"multipart/mixed; boundary=x",
    b"garbage",
    b"text/plain; charset=utf-8\r\n\tformat=flowed",
]
ENCODINGS = [
    None,
    b"7bit",
    b"8bit",
    b"binary",
    b"quoted-printable",
    b"Quoted-Printable",
    b"base64",
    b"x-weird",
]
ENCODINGS += [b"quoted-printable ", b"  quoted-printable"]
DISPOSITIONS = [None, b"inline", b"attachment; filename=a.txt"]
BODIES = [
    b"hello world\r\n",
    b"",
    b"  spaced   out\r\n\r\nlines\r\n" * 3,
    b"caf=C3=A9 soft=\r\nbreak =E9=\r\n",
    "caf\u00e9 na\u00efve \u65e5\u672c".encode(),
    "caf\u00e9".encode("latin-1"),
    b"\xff\xfe\x00 binary-ish \x80",
    b"word " * 100,
    b"--x\r\nContent-Type: text/plain\r\n\r\ninner\r\n--x--\r\n",
]
ODD_LINES = [
    b"X-Folded: a\r\n b",
    b" leading continuation",
    b"No colon here",
    b": no name",
    b"X-Eight-Bit: caf\xc3\xa9",
    b"X-Bare-LF: a\nb",
    b"X-Bare-CR: a\rb",
    b"From someone@example.com Sun Nov 22 05:00:00 2026",
    b"X-Control: a\x01b",
    b"Content-Type: text/plain",
    b"Content-Transfer-Encoding: quoted-printable",
    b"X-Empty:",
]


def build(
    ctype: bytes | None,
    cte: bytes | None,
    body: bytes,
    *,
    disposition: bytes | None = None,
    odd: tuple[bytes, ...] = (),
    at: int = 0,
) -> bytes:
    headers = [b"From: Alice <alice@example.com>", b"Subject: hi", b"Message-ID: <m@example.com>"]
    if ctype is not None:
        headers.append(b"Content-Type: " + ctype)
    if cte is not None:
        headers.append(b"Content-Transfer-Encoding: " + cte)
    if disposition is not None:
        headers.append(b"Content-Disposition: " + disposition)
    for line in odd:
        headers.insert(min(at, len(headers)), line)
    return CRLF.join(headers) + CRLF + CRLF + body


def same(raw: bytes) -> bool:
    fast = _plain_text(raw)
    if fast is None:
        return False
    slow = _parsed(raw)
    assert (fast.snippet, fast.attachments, fast.parse_errors) == (
        slow.snippet,
        slow.attachments,
        slow.parse_errors,
    ), raw
    return True


MESSAGES = st.builds(
    build,
    st.sampled_from(CONTENT_TYPES),
    st.sampled_from(ENCODINGS),
    st.sampled_from(BODIES),
    disposition=st.sampled_from(DISPOSITIONS),
    odd=st.lists(st.sampled_from(ODD_LINES), max_size=2).map(tuple),
    at=st.integers(min_value=0, max_value=6),
)


@settings(max_examples=600, deadline=None)
@given(MESSAGES)
def test_fast_path_agrees_with_the_full_parse(raw: bytes) -> None:
    same(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.binary(max_size=200))
def test_fast_path_agrees_on_arbitrary_bytes(head: bytes, body: bytes) -> None:
    same(b"From: a@b\r\n" + head + b"\r\n\r\n" + body)
    same(head + b"\r\n\r\n" + body)


def test_fast_path_agrees_on_the_hostile_corpus() -> None:
    for _name, raw in corpus("fast"):
        same(raw)


def test_fast_path_answers_ordinary_plain_mail() -> None:
    ordinary = [
        build(None, None, b"hello world\r\n"),
        build(b"text/plain; charset=utf-8", b"8bit", "caf\u00e9\r\n".encode()),
        build(b"text/plain; charset=iso-8859-1", b"quoted-printable", b"caf=E9\r\n"),
        build(b"text/plain; charset=utf-8; format=flowed", b"7bit", b"x" * 500),
    ]
    assert all(same(raw) for raw in ordinary)
    assert analyze(ordinary[1]).snippet == "caf\u00e9"
    assert analyze(ordinary[2]).snippet == "caf\u00e9"


def test_what_the_fast_path_leaves_to_the_full_parse() -> None:
    attachment = build(b"text/plain; name=a.txt", None, b"data\r\n")
    assert _plain_text(attachment) is None
    assert analyze(attachment).attachments[0]["filename"] == "a.txt"
    continued = build(None, None, b"x\r\n", odd=(b" leading continuation",))
    assert _plain_text(continued) is None
    assert analyze(continued).parse_errors == ["FirstHeaderLineIsContinuationDefect"]
    assert _plain_text(build(b"multipart/mixed; boundary=x", None, BODIES[-1])) is None
    disposed = build(None, None, b"x\r\n", disposition=b"attachment; filename=a.txt")
    assert _plain_text(disposed) is None
