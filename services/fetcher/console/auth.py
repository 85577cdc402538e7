"""Who may use the console, and CSRF tokens for its forms. Pure: headers and secrets in, decisions out.

Users come from a secret: `name:tenant:token` entries separated by commas or newlines. A request
authenticates with HTTP Basic (user `name`, password `token`) or `Authorization: Bearer <token>`.
Each user sees one tenant. CSRF tokens are `<unix time>.<HMAC-SHA256(secret, user, tenant, time)>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass, field

CSRF_MAX_AGE_SECONDS = 8 * 3600
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,100}$")


class UsersError(ValueError):
    """The users secret is malformed (the message names the entry, never a token)."""


@dataclass(frozen=True)
class ConsoleUser:
    name: str
    tenant: str
    token: str = field(default="", repr=False)


def parse_users(text: str) -> dict[str, ConsoleUser]:
    """`name:tenant:token` entries, comma or newline separated; `#` starts a comment line."""
    users: dict[str, ConsoleUser] = {}
    for n, raw in enumerate(re.split(r"[,\n]", text), 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise UsersError(f"console user entry {n} is not name:tenant:token")
        name, tenant, token = parts
        if not _NAME.match(name) or not _NAME.match(tenant):
            raise UsersError(f"console user entry {n}: name and tenant allow A-Z a-z 0-9 . _ @ -")
        if len(token) < 16:
            raise UsersError(f"console user {name!r}: the token must be at least 16 characters")
        if name in users:
            raise UsersError(f"console user {name!r} is listed twice")
        users[name] = ConsoleUser(name, tenant, token)
    return users


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def authenticate(authorization: str | None, users: dict[str, ConsoleUser]) -> ConsoleUser | None:
    """The user an `Authorization` header proves, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        found: ConsoleUser | None = None
        for user in users.values():  # compare with every token: no early exit on a match
            if _same(user.token, value):
                found = user
        return found
    if scheme.lower() == "basic" and value:
        try:
            name, sep, token = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        known = users.get(name)
        if not sep or known is None:
            _same(token, token)  # same work for unknown names
            return None
        return known if _same(known.token, token) else None
    return None


def _mac(secret: bytes, user: ConsoleUser, issued: int) -> str:
    msg = f"{user.name}\n{user.tenant}\n{issued}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def csrf_token(secret: bytes, user: ConsoleUser, now: float) -> str:
    issued = int(now)
    return f"{issued}.{_mac(secret, user, issued)}"


def csrf_valid(
    secret: bytes, user: ConsoleUser, token: str | None, now: float, max_age: int = CSRF_MAX_AGE_SECONDS
) -> bool:
    """True when `token` was issued to this user (and tenant) within `max_age` seconds."""
    if not token:
        return False
    issued_s, _, mac = token.partition(".")
    if not issued_s.isdigit() or not mac:
        return False
    issued = int(issued_s)
    if not (now - max_age <= issued <= now + 60):
        return False
    return hmac.compare_digest(mac.encode(), _mac(secret, user, issued).encode())
