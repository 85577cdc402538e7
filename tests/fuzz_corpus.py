"""Hostile messages, built in code (no checked-in blobs): what real mail servers deliver on a bad day.

Each entry is (name, raw RFC 5322 bytes). Used by the MIME fuzz tests (tests/unit/test_fuzz_mime.py)
and, for the worst of them, appended to the real Dovecot and synced by a real fetcher
(tests/integration/test_hostile_servers.py).
"""

from __future__ import annotations

import base64
import os

CRLF = b"\r\n"


def _msg(headers: list[bytes], body: bytes = b"hello\r\n") -> bytes:
    return CRLF.join(headers) + CRLF + CRLF + body


def _std(tag: str, *extra: bytes, subject: bytes | None = None) -> list[bytes]:
    return [
        b"From: Alice <alice@example.com>",
        b"To: bob@mailsync.test",
        b"Subject: " + (subject if subject is not None else f"hostile {tag}".encode()),
        b"Date: Sun, 22 Nov 2026 05:00:00 +0000",
        f"Message-ID: <{tag}@hostile.example>".encode(),
        *extra,
    ]


def rfc2047_edges(tag: str) -> bytes:
    subject = (
        b"=?utf-8?q?unterminated word =?utf-8?b?!!!notbase64?= =?x-unknown?q?abc?= "
        b"=?utf-8?b?w6k=?==?utf-8?b?w6k=?= =?utf-8*en?q?lang=20tag?= =?iso-8859-1?q?caf=E9?= "
        b"=?utf-8?q?=FF=FE=00?= =?utf-8?b?"
        + base64.b64encode("\u202eevil\u0000".encode())
        + b"?= "
        + b" ".join(b"=?utf-8?q?w" + str(i).encode() + b"?=" for i in range(300))
    )
    return _msg(
        _std(tag, b"Cc: =?utf-8?q?Bad=ZZname?= <cc@example.com>, =?bogus?b?@@?= <x@y.z>", subject=subject)
    )


def unknown_charset(tag: str) -> bytes:
    return _msg(
        [*_std(tag), b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=x-klingon-9"],
        b"qapla\xff\xfe batlh\r\n",
    )


def lying_charset(tag: str) -> bytes:
    return _msg(
        [*_std(tag), b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=us-ascii"],
        "Grüße aus Köln — naïve café 日本語\r\n".encode() + b"latin1 \xe9\xe8 and broken utf-8 \xc3\x28\r\n",
    )


def utf8_charset_with_invalid_bytes(tag: str) -> bytes:
    return _msg(
        [
            *_std(tag),
            b"MIME-Version: 1.0",
            b'Content-Type: text/plain; charset="utf-8"',
            b"Content-Transfer-Encoding: quoted-printable",
        ],
        b"=C3=28 =ZZ =\r\n=F0=9F =ED=A0=80 surrogate\r\n",
    )


def missing_headers(tag: str) -> bytes:
    # No From, To, Date, Message-ID or Subject at all.
    return _msg([b"X-Hostile: " + tag.encode()], b"who sent this?\r\n")


def headers_only(tag: str) -> bytes:
    return CRLF.join(_std(tag)) + CRLF  # no blank line, no body


def no_header_block(tag: str) -> bytes:
    return b"this is not a header line at all " + tag.encode() + b"\r\nnor this\r\n"


def duplicated_headers(tag: str) -> bytes:
    return _msg(
        [
            *_std(tag),
            b"From: Mallory <mallory@evil.example>",
            b"Subject: second subject",
            b"Date: Mon, 23 Nov 2026 05:00:00 +0000",
            f"Message-ID: <{tag}-second@hostile.example>".encode(),
            b"Content-Type: text/plain",
            b"Content-Type: text/html; charset=utf-8",
        ]
    )


def deep_multipart(tag: str, depth: int = 120) -> bytes:
    body = b"innermost text\r\n"
    ctype = b"text/plain"
    for level in range(depth):
        boundary = f"b{level}x".encode()
        body = (
            b"--" + boundary + CRLF + b"Content-Type: " + ctype + CRLF + CRLF + body + CRLF
            + b"--" + boundary + b"--" + CRLF
        )  # fmt: skip
        ctype = b'multipart/mixed; boundary="' + boundary + b'"'
    return _msg([*_std(tag), b"MIME-Version: 1.0", b"Content-Type: " + ctype], body)


def nul_bytes(tag: str) -> bytes:
    return _msg(
        [*_std(tag, subject=b"nul\x00in\x00subject"), b"X-Nul: a\x00b", b"Content-Type: text/plain"],
        b"body with \x00 NUL \x00\x00 bytes\r\n",
    )


def overlong_lines(tag: str, size: int = 2 * 1024 * 1024) -> bytes:
    return _msg(
        [*_std(tag, subject=b"long " + b"s" * 20_000), b"X-Long: " + b"h" * 200_000],
        b"x" * size + CRLF,
    )


def invalid_dates(tag: str) -> bytes:
    return _msg(
        [
            b"From: alice@example.com",
            b"Subject: bad dates " + tag.encode(),
            b"Date: Sun, 99 Foo 99999 25:61:61 +9999",
            b"Date: 31 Feb 2026 00:00:00 -2500",
            b"Resent-Date: yesterday",
            f"Message-ID: <{tag}@hostile.example>".encode(),
        ]
    )


def far_dates(tag: str) -> bytes:
    return _msg(
        [
            b"From: alice@example.com",
            b"Date: Fri, 31 Dec 9999 23:59:59 -1200",
            f"Message-ID: <{tag}@hostile.example>".encode(),
        ]
    )


def eightbit_headers(tag: str) -> bytes:
    return _msg(
        [
            b"From: \xc4\xe9r\xf6me M\xfcller <jerome@example.com>",  # latin-1 raw bytes
            b"To: \x93\xfa\x96\x7b <nihon@example.jp>",  # shift_jis raw bytes
            b"Subject: r\xe9sum\xe9 \xff\xfe " + tag.encode(),
            b"Date: Sun, 22 Nov 2026 05:00:00 +0000",
            f"Message-ID: <{tag}\xe9@hostile.example>".encode("latin-1"),
        ]
    )


def broken_boundaries(tag: str) -> bytes:
    return _msg(
        [*_std(tag), b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="never-closed"'],
        b"preamble\r\n--never-closed\r\nContent-Type: text/plain\r\n\r\npart one\r\n--never-closed\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="=?utf-8?b?!!?="\r\n\r\n@@@not base64@@@\r\n',
    )


def bad_address_lists(tag: str) -> bytes:
    return _msg(
        [
            b'From: "unterminated <a@b.c>, @@@, <>, "x" <y>, ' + b"a" * 400 + b"@" + b"b" * 400 + b".com",
            b"To: undisclosed-recipients:;",
            b"Cc: <<<>>>, ,,,,",
            b"Reply-To: group: a@b.c, d@e.f;",
            b"Subject: addresses " + tag.encode(),
            f"Message-ID: <{tag}@hostile.example>".encode(),
        ]
    )


def big_attachment(tag: str, mb: int = 50) -> bytes:
    """A multipart message carrying an `mb` MiB binary attachment (base64, 76-column lines)."""
    blob = base64.encodebytes(os.urandom(mb * 1024 * 1024)).replace(b"\n", b"\r\n")
    return _msg(
        [*_std(tag), b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="BIG"'],
        b"--BIG\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--BIG\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="big.bin"\r\n\r\n' + blob + b"--BIG--\r\n",
    )


def duplicate_message_ids(tag: str) -> list[bytes]:
    """Two different mails reusing one Message-ID (broken mailers do this): both must be kept."""
    same = f"Message-ID: <dup-{tag}@hostile.example>".encode()
    return [
        _msg([b"From: a@example.com", b"Subject: first " + tag.encode(), same], b"one\r\n"),
        _msg([b"From: b@example.com", b"Subject: second " + tag.encode(), same], b"two\r\n"),
    ]


BUILDERS = {
    "rfc2047_edges": rfc2047_edges,
    "unknown_charset": unknown_charset,
    "lying_charset": lying_charset,
    "utf8_charset_with_invalid_bytes": utf8_charset_with_invalid_bytes,
    "missing_headers": missing_headers,
    "headers_only": headers_only,
    "no_header_block": no_header_block,
    "duplicated_headers": duplicated_headers,
    "deep_multipart": deep_multipart,
    "nul_bytes": nul_bytes,
    "overlong_lines": overlong_lines,
    "invalid_dates": invalid_dates,
    "far_dates": far_dates,
    "eightbit_headers": eightbit_headers,
    "broken_boundaries": broken_boundaries,
    "bad_address_lists": bad_address_lists,
}


def corpus(tag: str) -> list[tuple[str, bytes]]:
    """Every hostile message except the 50 MB one (tests build that one on its own, timed)."""
    out = [(name, build(tag + "-" + name)) for name, build in BUILDERS.items()]
    out += [(f"duplicate_message_id_{i}", raw) for i, raw in enumerate(duplicate_message_ids(tag))]
    return out
