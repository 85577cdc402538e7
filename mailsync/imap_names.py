"""IMAP mailbox names in modified UTF-7 (RFC 3501 5.1.3): the fetcher and the sender both list folders."""

from __future__ import annotations

import base64


def encode_mailbox(name: str) -> str:
    """Modified UTF-7 (RFC 3501 5.1.3) for a mailbox name; ASCII names pass through."""
    out: list[str] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            b64 = base64.b64encode("".join(buf).encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            buf.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf.append(ch)
    flush()
    return "".join(out)


def decode_mailbox(name: str) -> str:
    """Modified UTF-7 → str; malformed shifts are kept as they are."""
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i)
        if end < 0:
            out.append(name[i:])
            break
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            try:
                b64 = chunk.replace(",", "/")
                out.append(base64.b64decode(b64 + "=" * (-len(b64) % 4)).decode("utf-16-be"))
            except ValueError:
                out.append(name[i : end + 1])
        i = end + 1
    return "".join(out)
