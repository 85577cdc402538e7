"""Email address normalisation for matching: pure functions, no I/O.

Matching must not depend on how a CRM user or a mail client wrote an address: case, surrounding
spaces, a display name, Unicode domains. The local part is case-folded too: RFC 5321 makes it
case-sensitive in theory, but no provider mailsync serves treats it so, and CRMs do not.
"""

from __future__ import annotations

from email.utils import parseaddr


class InvalidAddress(ValueError):
    pass


def normalize(raw: str, *, strip_plus: bool = False) -> str:
    """`' "Ann" <Ann+crm@Bücher.example> '` → `ann+crm@xn--bcher-kva.example` (`ann@…` with strip_plus)."""
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
