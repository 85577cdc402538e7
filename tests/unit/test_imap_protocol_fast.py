"""The one-pass value parser against the careful recursive one: same values, or it steps aside."""

from __future__ import annotations

import random

import pytest

from services.fetcher.imap.protocol import (
    ProtocolError,
    RawResponse,
    Value,
    _careful_values,
    _fast_values,
    parse_values,
)

ATOMS = [
    "UID",
    "FLAGS",
    "\\Seen",
    "$Label",
    "BODY[]",
    "BODY[HEADER]",
    "BODY[HEADER.FIELDS (FROM TO)]<0>",
    "X-GM-LABELS",
    "123",
    "0",
    "NIL",
    "nil",
    "a.b",
    "*",
    "%",
]


def render(value: Value, literals: list[bytes]) -> bytes:
    if isinstance(value, list):
        return b"(" + b" ".join(render(v, literals) for v in value) + b")"
    if value is None:
        return b"NIL"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, str):
        return value.encode()
    if b"\r" in value or b"\n" in value or len(value) > 20:
        literals.append(value)
        return b"{%d}" % len(value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def random_value(rng: random.Random, depth: int = 0) -> Value:
    kind = rng.random()
    if kind < 0.2 and depth < 4:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if kind < 0.5:
        return rng.choice(ATOMS)
    if kind < 0.6:
        return rng.randint(0, 2**32)
    if kind < 0.65:
        return None
    return bytes(rng.choice(b'ab "\\\r\n\t(){}[]') for _ in range(rng.randint(0, 40)))


def test_same_values_as_the_careful_parser() -> None:
    rng = random.Random(6122026)
    fast_taken = 0
    for _ in range(5000):
        literals: list[bytes] = []
        values = [random_value(rng) for _ in range(rng.randint(1, 6))]
        text = b" ".join(render(v, literals) for v in values) + b" " * rng.randint(0, 2)
        raw = RawResponse(text, tuple(literals))
        careful = _careful_values(raw, 0)
        fast = _fast_values(raw, 0)
        assert fast is None or fast == careful, text
        assert parse_values(raw) == careful
        fast_taken += fast is not None
    assert fast_taken > 4500  # well-formed input: the fast path decides nearly always


def test_a_typical_fetch_response_takes_the_fast_path() -> None:
    header = b"From: a@b\r\nSubject: s\r\n\r\n"
    raw = RawResponse(
        b'(UID 7 FLAGS (\\Seen $X) INTERNALDATE "22-Nov-2026 02:59:55 +0000" RFC822.SIZE 820 '
        b"MODSEQ (12) BODY[HEADER] {%d})" % len(header),
        (header,),
    )
    assert _fast_values(raw, 0) == [
        [
            "UID",
            7,
            "FLAGS",
            ["\\Seen", "$X"],
            "INTERNALDATE",
            b"22-Nov-2026 02:59:55 +0000",
            "RFC822.SIZE",
            820,
            "MODSEQ",
            [12],
            "BODY[HEADER]",
            header,
        ]
    ]


@pytest.mark.parametrize(
    "text",
    [b"(UID 1", b"UID 1)", b'"open', b"{5}", b"~foo", b"BODY[a[b]]", b"BODY[x]<0.10>", b"[x]", b"]"],
)
def test_broken_or_unusual_input_is_left_to_the_careful_parser(text: bytes) -> None:
    raw = RawResponse(text)
    assert _fast_values(raw, 0) is None
    try:
        expected: list[Value] | type[ProtocolError] = _careful_values(raw, 0)
    except ProtocolError:
        expected = ProtocolError
    if expected is ProtocolError:
        with pytest.raises(ProtocolError):
            parse_values(raw)
    else:
        assert parse_values(raw) == expected
