"""Email address normalisation for matching: pure functions, no I/O.

Matching must not depend on how a CRM user or a mail client wrote an address: case, surrounding
spaces, a display name, Unicode domains. The local part is case-folded too: RFC 5321 makes it
case-sensitive in theory, but no provider mailsync serves treats it so, and CRMs do not.
"""

from __future__ import annotations

import re
from email.utils import parseaddr


class InvalidAddress(ValueError):
    pass


# A bare ASCII address (what header parsers hand over almost always): no display name, comment,
# quoting or Unicode, so lower-casing is the whole normalisation. Anything else takes the full path.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9-]{1,63}"
_PLAIN = re.compile(rf"\s*({_ATOM}(?:\.{_ATOM})*)@({_LABEL}(?:\.{_LABEL})*)\.?\s*")


# Normalised forms of recently seen addresses (mail keeps naming the same people), per strip_plus flag.
# Bounded: cleared when full, so a flood of one-off addresses cannot grow it without limit.
CACHE_SIZE = 100_000
_cache: tuple[dict[str, str], dict[str, str]] = ({}, {})


def normalize(raw: str, *, strip_plus: bool = False) -> str:
    """`' "Ann" <Ann+crm@Bücher.example> '` → `ann+crm@xn--bcher-kva.example` (`ann@…` with strip_plus)."""
    cache = _cache[strip_plus]
    hit = cache.get(raw)
    if hit is not None:
        return hit
    email = _normalize(raw, strip_plus)  # InvalidAddress propagates, and is not cached
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[raw] = email
    return email


def normalized_cache(*, strip_plus: bool = False) -> dict[str, str]:
    """The cache itself (raw → normalised), for loops that look up many addresses; read-only for callers."""
    return _cache[strip_plus]


def _normalize(raw: str, strip_plus: bool) -> str:
    m = _PLAIN.fullmatch(raw)
    if m is not None:
        if m.start(1) == 0 and m.end(2) == len(raw) and not (strip_plus and "+" in raw):
            return raw.lower()  # exactly local@domain: lower-casing is all there is to do
        local = m.group(1).lower()
        if strip_plus and "+" in local:
            local = local.split("+", 1)[0]
        if local:
            return f"{local}@{m.group(2).lower()}"
    return normalize_full(raw, strip_plus=strip_plus)


def normalize_full(raw: str, *, strip_plus: bool = False) -> str:
    """The general path: display names, comments, quoting, Unicode local parts and IDN domains."""
    _, addr = parseaddr(raw.strip())
    addr = addr.strip().strip("<>").strip()
    local, sep, domain = addr.rpartition("@")
    if not sep or not local or not domain or any(c.isspace() for c in addr):
        raise InvalidAddress(f"not an email address: {raw[:100]!r}")
    local = local.casefold()
    if strip_plus and "+" in local:
        local = local.split("+", 1)[0]
    try:
        domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidAddress(f"invalid domain in {raw[:100]!r}") from exc
    return f"{local}@{domain}"


def normalize_all(raws: list[str | None], *, strip_plus: bool = False) -> tuple[set[str], list[str]]:
    """Normalised addresses and the inputs that were not addresses (reported, not dropped silently)."""
    good: set[str] = set()
    bad: list[str] = []
    for raw in raws:
        if raw is None or not raw.strip():
            continue
        try:
            good.add(normalize(raw, strip_plus=strip_plus))
        except InvalidAddress:
            bad.append(raw)
    return good, bad
