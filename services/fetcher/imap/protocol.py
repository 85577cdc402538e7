"""IMAP4rev1 response parsing without I/O: bytes in, responses out.

`ResponseFramer.feed(data)` splits the server's byte stream into complete responses, literals included
(`{N}\\r\\n` followed by N raw bytes), scanning each byte once: a partial line resumes where the last scan
stopped. `parse_response` turns one framed response into `Tagged`, `Untagged` or `Continuation`;
`parse_values` reads the value grammar (atoms, numbers, quoted strings, literals, NIL, nested lists).
Section specs such as `BODY[HEADER.FIELDS (FROM TO)]<0>` are one atom, as RFC 3501 writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A value is an atom (str), a number (int), a string (bytes: quoted or literal), NIL (None) or a list.
Value = str | int | bytes | None | list["Value"]

MAX_LITERAL = 256 * 1024 * 1024  # refuse absurd literal sizes instead of allocating them
MAX_LINE = 8 * 1024 * 1024  # a line without CRLF beyond this is a broken or hostile server

_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}$")


class ProtocolError(ValueError):
    """The server sent something that is not IMAP; the connection cannot be trusted any more."""


@dataclass(frozen=True)
class RawResponse:
    """One response: its text with literal markers kept in place, and the literals in order."""

    text: bytes
    literals: tuple[bytes, ...] = ()


class ResponseFramer:
    """Splits a byte stream into responses. Linear in the input size."""

    def __init__(self, max_literal: int = MAX_LITERAL, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed part
        self._scan = 0  # where to resume searching for CRLF
        self._need = -1  # bytes of literal still expected, -1 when reading a line
        self._parts: list[bytes] = []
        self._literals: list[bytes] = []
        self._max_literal = max_literal
        self._max_line = max_line

    def feed(self, data: bytes) -> list[RawResponse]:
        self._buf += data
        out: list[RawResponse] = []
        buf = self._buf
        while True:
            if self._need >= 0:
                if len(buf) - self._pos < self._need:
                    break
                end = self._pos + self._need
                self._literals.append(bytes(buf[self._pos : end]))
                self._pos = self._scan = end
                self._need = -1
                continue
            idx = buf.find(b"\r\n", max(self._scan, self._pos))
            if idx < 0:
                self._scan = max(self._pos, len(buf) - 1)
                if len(buf) - self._pos > self._max_line:
                    raise ProtocolError("response line too long")
                break
            line = bytes(buf[self._pos : idx])
            self._pos = self._scan = idx + 2
            m = _LITERAL_AT_END.search(line[-24:]) if line.endswith(b"}") else None
            if m:
                size = int(m.group(1))
                if size > self._max_literal:
                    raise ProtocolError(f"literal of {size} bytes exceeds the limit")
                self._parts.append(line)
                self._need = size
                continue
            if self._parts:
                self._parts.append(line)
                text = b"".join(self._parts)
                self._parts = []
            else:
                text = line
            out.append(RawResponse(text, tuple(self._literals)))
            self._literals = []
        if self._pos == len(buf):
            # All consumed (the usual case between responses): keep no buffer, so an idle connection
            # holds nothing of what it received before (up to 64 KiB each otherwise).
            self._buf = bytearray()
            self._pos = self._scan = 0
        elif self._pos > 65536 and self._pos > len(buf) // 2:
            del buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered that do not form a complete response yet."""
        return len(self._buf) - self._pos


# ---- the value grammar ---------------------------------------------------------------------------

_SPACE = 0x20
_ATOM = re.compile(rb"[^ ()\"{\[\]\r\n]+")
_QUOTED = re.compile(rb'"((?:[^"\\\r\n]|\\.)*)"')
_LITERAL = re.compile(rb"~?\{(\d+)\+?\}")
_UNESCAPE = re.compile(rb"\\(.)")


class _Cursor:
    __slots__ = ("lit", "pos", "text")

    def __init__(self, raw: RawResponse, pos: int = 0) -> None:
        self.text = raw.text
        self.pos = pos
        self.lit = iter(raw.literals)


def _skip_spaces(c: _Cursor) -> None:
    text, n = c.text, len(c.text)
    while c.pos < n and text[c.pos] == _SPACE:
        c.pos += 1


def _bracketed(c: _Cursor, start: int) -> int:
    """End (exclusive) of a `[...]` group at `start`, nested brackets and quotes respected."""
    text, depth, i, n = c.text, 0, start, len(c.text)
    while i < n:
        ch = text[i]
        if ch == 0x5B:  # [
            depth += 1
        elif ch == 0x5D:  # ]
            depth -= 1
            if depth == 0:
                return i + 1
        elif ch == 0x22:  # "
            m = _QUOTED.match(text, i)
            if not m:
                raise ProtocolError("unterminated quoted string inside brackets")
            i = m.end()
            continue
        i += 1
    raise ProtocolError("unbalanced '[' in response")


def _value(c: _Cursor) -> Value:  # noqa: PLR0912 - one branch per grammar production
    text = c.text
    if c.pos >= len(text):
        raise ProtocolError("expected a value, found end of response")
    ch = text[c.pos]
    if ch == 0x28:  # (
        c.pos += 1
        items: list[Value] = []
        while True:
            _skip_spaces(c)
            if c.pos >= len(text):
                raise ProtocolError("unterminated list")
            if text[c.pos] == 0x29:  # )
                c.pos += 1
                return items
            items.append(_value(c))
    if ch == 0x22:  # "
        m = _QUOTED.match(text, c.pos)
        if not m:
            raise ProtocolError("unterminated quoted string")
        c.pos = m.end()
        body = m.group(1)
        return _UNESCAPE.sub(rb"\1", body) if b"\\" in body else body
    if ch in (0x7B, 0x7E):  # { or ~ (literal8)
        m = _LITERAL.match(text, c.pos)
        if not m:
            raise ProtocolError("malformed literal marker")
        c.pos = m.end()
        try:
            data = next(c.lit)
        except StopIteration:
            raise ProtocolError("literal marker without literal data") from None
        if len(data) != int(m.group(1)):
            raise ProtocolError("literal size mismatch")
        return data
    m = _ATOM.match(text, c.pos)
    start = c.pos
    end = m.end() if m else c.pos
    # An atom may carry a section `[...]` and a partial `<n>` (BODY[HEADER.FIELDS (A B)]<0>).
    if end < len(text) and text[end] == 0x5B:
        end = _bracketed(c, end)
        if end < len(text) and text[end] == 0x3C:  # <
            close = text.find(b">", end)
            if close < 0:
                raise ProtocolError("unterminated partial '<'")
            end = close + 1
    if end == start:
        raise ProtocolError(f"unexpected byte {chr(ch)!r} at {start}")
    c.pos = end
    token = text[start:end]
    if token.isdigit():
        return int(token)
    if token in (b"NIL", b"nil"):
        return None
    return token.decode("utf-8", "replace")


# One token per match, its kind told by `lastindex`: ( ) "quoted" {literal} atom (a section without
# nested brackets or quotes included, e.g. `BODY[HEADER.FIELDS (FROM TO)]<0>`).
_TOKEN = re.compile(
    rb" *(?:(\()|(\))"
    rb'|"((?:[^"\\\r\n]|\\.)*)"'
    rb"|~?\{(\d+)\+?\}"
    rb'|([^ ()"{\[\]\r\n]+(?:\[[^\[\]"]*\](?:<\d+>)?)?))'
)


def _fast_values(raw: RawResponse, pos: int) -> list[Value] | None:  # noqa: PLR0912 - a branch per token kind
    """`parse_values` for well-formed input in one regex pass, no recursion (FETCH responses are most
    of the initial sync's parsing); None for anything unusual or broken, left to the careful parser,
    which gives the same values or the precise error (`tests/unit/test_imap_protocol_fast.py`)."""
    text, n, literals = raw.text, len(raw.text), raw.literals
    used = 0
    stack: list[list[Value]] = []
    cur: list[Value] = []
    match = _TOKEN.match
    while True:
        m = match(text, pos)
        if m is None:
            if text[pos:].strip(b" "):
                return None
            break
        pos = m.end()
        kind = m.lastindex
        if kind == 5:  # the atom group
            if pos < n and text[pos] in (0x5B, 0x3C):  # nested section or odd partial: careful parser
                return None
            token = m.group(5)
            if token[0] == 0x7E:  # `~` starts only a literal8 marker; anything else is an error
                return None
            if token.isdigit():
                cur.append(int(token))
            elif token in (b"NIL", b"nil"):
                cur.append(None)
            else:
                cur.append(token.decode("utf-8", "replace"))
        elif kind == 1:
            stack.append(cur)
            cur = []
        elif kind == 2:
            if not stack:
                return None
            parent = stack.pop()
            parent.append(cur)
            cur = parent
        elif kind == 3:
            body = m.group(3)
            cur.append(_UNESCAPE.sub(rb"\1", body) if b"\\" in body else body)
        else:  # a literal marker: its data, in order
            if used >= len(literals) or len(literals[used]) != int(m.group(4)):
                return None
            cur.append(literals[used])
            used += 1
    return None if stack else cur


def parse_values(raw: RawResponse, pos: int = 0) -> list[Value]:
    """All values from `pos` to the end of the response."""
    fast = _fast_values(raw, pos)
    return fast if fast is not None else _careful_values(raw, pos)


def _careful_values(raw: RawResponse, pos: int) -> list[Value]:
    c = _Cursor(raw, pos)
    out: list[Value] = []
    n = len(raw.text)
    while True:
        _skip_spaces(c)
        if c.pos >= n:
            return out
        out.append(_value(c))


# ---- responses -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseCode:
    """`[NAME args]` at the start of a status response's text, e.g. `[UIDVALIDITY 3857529045]`."""

    name: str
    args: list[Value] = field(default_factory=list)

    def number(self) -> int | None:
        if self.args and isinstance(self.args[0], int):
            return self.args[0]
        return None


@dataclass(frozen=True)
class Tagged:
    tag: str
    status: str  # OK, NO, BAD
    code: ResponseCode | None
    text: str


@dataclass(frozen=True)
class Untagged:
    """`* ...`: `kind` is the keyword (`OK`, `CAPABILITY`, `FETCH`, `EXISTS`, `SEARCH`, ...).

    For `* N EXISTS|EXPUNGE|RECENT|FETCH` the number is in `number`. Status responses (`OK`, `NO`, `BAD`,
    `BYE`, `PREAUTH`) carry `code` and `text`; the others carry `values`.
    """

    kind: str
    number: int | None = None
    values: list[Value] = field(default_factory=list)
    code: ResponseCode | None = None
    text: str = ""


@dataclass(frozen=True)
class Continuation:
    text: str


Response = Tagged | Untagged | Continuation

_STATUS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
_WORD = re.compile(rb"([^ ]*) ?")


def _status_text(raw: RawResponse, pos: int) -> tuple[ResponseCode | None, str]:
    text = raw.text
    if pos < len(text) and text[pos] == 0x5B:  # [
        c = _Cursor(raw, pos)
        end = _bracketed(c, pos)
        inner = RawResponse(text[pos + 1 : end - 1])
        words = parse_values(inner) if inner.text else []
        name = words[0] if words and isinstance(words[0], str) else ""
        code = ResponseCode(name.upper(), words[1:])
        rest = text[end:].lstrip(b" ")
        return code, rest.decode("utf-8", "replace")
    return None, text[pos:].decode("utf-8", "replace")


def parse_response(raw: RawResponse) -> Response:
    text = raw.text
    if text.startswith(b"+"):
        return Continuation(text[1:].lstrip(b" ").decode("utf-8", "replace"))
    m = _WORD.match(text)
    assert m is not None  # the pattern matches the empty string
    tag = m.group(1)
    if not tag:
        raise ProtocolError("empty response")
    m2 = _WORD.match(text, m.end())
    assert m2 is not None
    word = m2.group(1).decode("ascii", "replace").upper()
    if tag != b"*":
        if word not in ("OK", "NO", "BAD"):
            raise ProtocolError(f"tagged response with status {word!r}")
        code, rest = _status_text(raw, m2.end())
        return Tagged(tag.decode("ascii", "replace"), word, code, rest)
    if word in _STATUS:
        code, rest = _status_text(raw, m2.end())
        return Untagged(word, code=code, text=rest)
    if word.isdigit():
        m3 = _WORD.match(text, m2.end())
        assert m3 is not None
        kind = m3.group(1).decode("ascii", "replace").upper()
        if not kind:
            raise ProtocolError("number without a keyword")
        return Untagged(kind, number=int(word), values=parse_values(raw, m3.end()))
    if not word:
        raise ProtocolError("untagged response without a keyword")
    return Untagged(word, values=parse_values(raw, m2.end()))


# ---- FETCH ---------------------------------------------------------------------------------------


def fetch_items(response: Untagged) -> dict[str, Value]:
    """`* N FETCH (UID 5 FLAGS (\\Seen) BODY[HEADER] {..})` → {"UID": 5, "FLAGS": [..], ...}.

    Item names are upper-cased; a partial `<0>` is dropped from section names so callers look up
    `BODY[]` whatever the origin octet.
    """
    if response.kind != "FETCH" or len(response.values) != 1 or not isinstance(response.values[0], list):
        raise ProtocolError("FETCH response without a parenthesized item list")
    items = response.values[0]
    if len(items) % 2:
        raise ProtocolError("FETCH item list has an odd number of elements")
    out: dict[str, Value] = {}
    for i in range(0, len(items), 2):
        name = items[i]
        if not isinstance(name, str):
            raise ProtocolError("FETCH item name is not an atom")
        name = name.upper()
        if name.endswith(">"):
            name = name[: name.rfind("<")]
        out[name] = items[i + 1]
    _check_ranges(out)
    return out


_MAX_32 = (1 << 32) - 1  # UIDs and sizes are 32-bit (RFC 3501 nz-number, number)
_MAX_63 = (1 << 63) - 1  # MODSEQ (RFC 7162 mod-sequence-value); also the largest BSON integer


def _check_ranges(items: dict[str, Value]) -> None:
    """Numbers beyond what IMAP allows are a hostile or broken server (and would not fit a database
    integer further down); refuse them here instead of failing later on a stored document."""
    for name in ("UID", "RFC822.SIZE"):
        v = items.get(name)
        if isinstance(v, int) and v > _MAX_32:
            raise ProtocolError(f"FETCH {name} {v} out of range")
    m = items.get("MODSEQ")
    if isinstance(m, list) and any(isinstance(x, int) and x > _MAX_63 for x in m):
        raise ProtocolError("FETCH MODSEQ out of range")


def in_range(value: int | None, *, bits: int) -> bool:
    """True when `value` (None counts) fits an unsigned IMAP number of `bits` bits (32 or 63)."""
    return value is None or 0 <= value <= (_MAX_32 if bits == 32 else _MAX_63)


# ---- commands ------------------------------------------------------------------------------------

_SAFE_ATOM = re.compile(rb"^[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|}~]+$")


def quote(value: str) -> bytes:
    """An astring argument: atom when safe, quoted string otherwise; literals are not needed here.

    Refuses CR/LF, which no quoted string can carry (a mailbox name with them would be a literal).
    """
    data = value.encode("utf-8")
    if b"\r" in data or b"\n" in data or b"\x00" in data:
        raise ValueError("argument contains CR, LF or NUL")
    if data and _SAFE_ATOM.match(data) and data.upper() != b"NIL":
        return data
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
