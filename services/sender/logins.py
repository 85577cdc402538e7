"""Credentials for one inbox's SMTP and IMAP sessions, decrypted only when a session opens.

SMTP uses `smtp_auth`, or the IMAP credentials when it has none. OAuth2 access tokens are refreshed
through `mailsync/oauth2.py` (XOAUTH2); a refreshed token is written back to the inbox document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from mailsync.credentials import Keyring
from mailsync.inbox_record import InboxRecord, OAuth2Auth, PasswordAuth
from mailsync.oauth2 import ensure_access_token

Mechanism = Literal["password", "xoauth2"]


@dataclass(frozen=True)
class Login:
    mechanism: Mechanism
    username: str
    secret: str = field(repr=False)  # password or access token
    update: dict[str, Any] = field(default_factory=dict, repr=False)  # `$set` for the inbox document


def _auth_field(record: InboxRecord, protocol: Literal["smtp", "imap"]) -> str:
    return "smtp_auth" if protocol == "smtp" and record.smtp_auth is not None else "imap_auth"


def mechanism_for(record: InboxRecord, protocol: Literal["smtp", "imap"]) -> Mechanism:
    """How `login_for` logs in, without decrypting anything (e.g. to word a refused login's hint)."""
    auth = getattr(record, _auth_field(record, protocol))
    return "xoauth2" if isinstance(auth, OAuth2Auth) else "password"


async def login_for(
    record: InboxRecord,
    keyring: Keyring,
    http: httpx.AsyncClient,
    protocol: Literal["smtp", "imap"],
    *,
    force_refresh: bool = False,
) -> Login:
    field_name = _auth_field(record, protocol)
    auth = getattr(record, field_name)
    if isinstance(auth, PasswordAuth):
        password = keyring.decrypt(auth.password, record.secret_owner(f"{field_name}.password"))
        return Login("password", auth.username, password)
    assert isinstance(auth, OAuth2Auth)
    token = await ensure_access_token(record, keyring, http, field_name=field_name, force=force_refresh)
    return Login("xoauth2", token.username, token.token, token.update)
