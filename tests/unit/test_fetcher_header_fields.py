"""`plain_fields` against the stdlib's compat32 header parser: same fields, or None (stdlib decides)."""

from __future__ import annotations

import random
from email.parser import BytesHeaderParser
from email.policy import compat32

import pytest

from services.fetcher.sync.header_fields import plain_fields
from services.fetcher.sync.messages import FetchedMessage, header_problems

_STDLIB = BytesHeaderParser(policy=compat32)
NAMES = ["From", "To", "Cc", "Subject", "Message-ID", "X-Odd_Name.1", "received", "DKIM-Signature", "a"]
WORDS = ["hello", "=?utf-8?q?caf=C3=A9?=", "<a@b.c>", "Ann Lee <ann@x.org>,", '"Q, R" <q@r>', "", ";", "x:y"]


def stdlib_fields(raw: bytes) -> list[tuple[str, str]]:
    return [(name, str(value)) for name, value in _STDLIB.parsebytes(raw).items()]


def random_block(rng: random.Random) -> bytes:
    lines: list[str] = []
    for _ in range(rng.randint(1, 12)):
        value = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 5)))
        gap, tail = rng.choice(["", " ", "  ", "\t"]), rng.choice(["", " "])
        lines.append(f"{rng.choice(NAMES)}:{gap}{value}{tail}")
        for _ in range(rng.choice([0, 0, 0, 1, 2])):  # folded continuation lines
            lines.append(rng.choice([" ", "\t", "   "]) + " ".join(rng.choice(WORDS) for _ in range(2)))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_plain_blocks_give_the_stdlib_fields() -> None:
    rng = random.Random(20261206)
    for _ in range(3000):
        raw = random_block(rng)
        assert plain_fields(raw) == stdlib_fields(raw), raw


@pytest.mark.parametrize(
    "raw",
    [
        b" folded first\r\nSubject: x\r\n\r\n",  # continuation before any field
        b"From sender@x Mon Jan 1 00:00:00 2026\r\nSubject: x\r\n\r\n",  # mbox envelope line
        b"Subject: caf\xc3\xa9\r\n\r\n",  # 8-bit header
        b"Subject: x\nTo: y\n\n",  # bare LF line ends
        b"Subject: a\rb\r\n\r\n",  # bare CR
        b"no colon here\r\nSubject: x\r\n\r\n",
        b": empty name\r\n\r\n",
        b"Subject: nul\x00\r\n\r\n",
    ],
)
def test_anything_not_plain_is_left_to_the_stdlib(raw: bytes) -> None:
    assert plain_fields(raw) is None


def test_values_and_defects_through_the_message_view() -> None:
    plain = FetchedMessage({"UID": 1, "BODY[HEADER]": b"Subject: a\r\n b\r\nFrom: x@y\r\n\r\n"})
    assert plain.header("subject") == "a\r\n b"
    assert plain.header_defects == []
    broken = FetchedMessage({"UID": 2, "BODY[HEADER]": b" lead\r\nSubject: s\r\n\r\n"})
    assert broken.header_defects == ["FirstHeaderLineIsContinuationDefect"]
    assert "header.FirstHeaderLineIsContinuationDefect" in header_problems(broken)


def test_headers_ending_without_a_blank_line() -> None:
    raw = b"Subject: x\r\nTo: y@z"
    assert plain_fields(raw) == stdlib_fields(raw)
