"""OAuth2 for mail: the XOAUTH2 SASL string and access-token refresh at a token endpoint.

Used by the fetcher (IMAP) and the sender (SMTP). Decisions are pure (`xoauth2_initial_response`,
`needs_refresh`, `parse_token_response`); the only I/O is one POST to the token endpoint through an
`httpx.AsyncClient` the caller owns (bounded by its timeout). No token, secret or refresh token ever
appears in an exception message, a repr or a log line.

`ensure_access_token(record, keyring, client)` is the one call a service needs: it returns a usable
access token for an `InboxRecord` with OAuth2 credentials and, when it had to refresh, the `$set`
fields to store (new access token and expiry encrypted; a rotated refresh token too).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .credentials import Keyring
from .inbox_record import InboxRecord, OAuth2Auth

# Refresh this long before the expiry the endpoint announced: a token must outlive the login using it.
REFRESH_SKEW = timedelta(seconds=120)


class OAuth2Error(RuntimeError):
    """A token endpoint refused or failed. `code` is stable; `revoked` means the user must reconnect."""

    def __init__(self, code: str, message: str, *, revoked: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.revoked = revoked
        self.status = status


def xoauth2_initial_response(username: str, access_token: str) -> str:
    """base64 of `user=<user>^Aauth=Bearer <token>^A^A` (Google's and Microsoft's XOAUTH2 format)."""
    raw = f"user={username}\x01auth=Bearer {access_token}\x01\x01"
    return base64.b64encode(raw.encode()).decode()


def needs_refresh(expires_at: datetime | None, now: datetime, skew: timedelta = REFRESH_SKEW) -> bool:
    """An unknown expiry counts as expired: refreshing once costs less than a failed login."""
    return expires_at is None or expires_at - skew <= now


@dataclass(frozen=True)
class TokenSet:
    access_token: str = field(repr=False)
    expires_at: datetime | None
    refresh_token: str | None = field(default=None, repr=False)  # set when the endpoint rotated it
    scope: str | None = None


def _short(value: Any, limit: int = 200) -> str:
    return str(value)[:limit] if value is not None else ""


def parse_token_response(status: int, body: bytes, now: datetime, secrets: tuple[str, ...] = ()) -> TokenSet:
    """RFC 6749 §5.1/§5.2: a token set, or an `OAuth2Error` whose text carries no secret."""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise OAuth2Error(
            "oauth.bad_response",
            f"token endpoint answered HTTP {status} without a JSON object",
            status=status,
        )
    if status != 200 or "access_token" not in doc:
        error = _short(doc.get("error") or f"http_{status}", 60)
        desc = _short(doc.get("error_description"))
        for s in secrets:
            if s:
                desc = desc.replace(s, "***")
        # invalid_grant: the refresh token is expired or revoked (RFC 6749 §5.2) → the user reconnects.
        revoked = error in ("invalid_grant", "unauthorized_client", "invalid_client")
        text = f"token endpoint refused the refresh: {error}" + (f" ({desc})" if desc else "")
        code = f"oauth.{error}" if revoked else "oauth.refresh_failed"
        raise OAuth2Error(code, text, revoked=revoked, status=status)
    token = doc["access_token"]
    if not isinstance(token, str) or not token:
        raise OAuth2Error(
            "oauth.bad_response", "token endpoint returned an empty access_token", status=status
        )
    try:
        expires_at: datetime | None = now + timedelta(seconds=int(doc["expires_in"]))
    except (KeyError, TypeError, ValueError):
        expires_at = None
    refresh = doc.get("refresh_token")
    return TokenSet(
        access_token=token,
        expires_at=expires_at,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        scope=doc.get("scope") if isinstance(doc.get("scope"), str) else None,
    )


async def refresh_access_token(
    client: httpx.AsyncClient,
    token_endpoint: str,
    *,
    client_id: str,
    refresh_token: str,
    client_secret: str | None = None,
    scope: str | None = None,
    now: datetime | None = None,
) -> TokenSet:
    """POST grant_type=refresh_token to the token endpoint (RFC 6749 §6)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    if client_secret:
        form["client_secret"] = client_secret
    if scope:
        form["scope"] = scope
    try:
        resp = await client.post(token_endpoint, data=form, headers={"accept": "application/json"})
    except httpx.TimeoutException:
        raise OAuth2Error("oauth.timeout", "token endpoint did not answer in time") from None
    except httpx.HTTPError as exc:
        # httpx messages name the URL, never the form body; keep only the exception type.
        raise OAuth2Error("oauth.unreachable", f"token endpoint unreachable ({type(exc).__name__})") from None
    return parse_token_response(
        resp.status_code, resp.content, now or datetime.now(UTC), (refresh_token, client_secret or "")
    )


@dataclass(frozen=True)
class AccessToken:
    token: str = field(repr=False)
    username: str
    refreshed: bool
    update: dict[str, Any] = field(default_factory=dict, repr=False)  # `$set` for the inbox document


async def ensure_access_token(
    record: InboxRecord,
    keyring: Keyring,
    client: httpx.AsyncClient,
    *,
    field_name: str = "imap_auth",
    now: datetime | None = None,
    force: bool = False,
) -> AccessToken:
    """A valid access token for the record's OAuth2 credentials, refreshing it when close to expiry.

    Owners of the ciphertexts follow the agreed form `<_id>:<field>.<secret>`, e.g.
    `t1:i1:imap_auth.refresh_token`.
    """
    auth = getattr(record, field_name)
    if not isinstance(auth, OAuth2Auth):
        raise TypeError(f"{field_name} of {record.id} is not OAuth2")
    now = now or datetime.now(UTC)

    def owner(secret: str) -> str:
        return record.secret_owner(f"{field_name}.{secret}")

    if not force and auth.access_token is not None and not needs_refresh(auth.access_token_expires_at, now):
        return AccessToken(keyring.decrypt(auth.access_token, owner("access_token")), auth.username, False)
    refresh = keyring.decrypt(auth.refresh_token, owner("refresh_token"))
    secret = keyring.decrypt(auth.client_secret, owner("client_secret")) if auth.client_secret else None
    tokens = await refresh_access_token(
        client,
        auth.token_endpoint,
        client_id=auth.client_id,
        refresh_token=refresh,
        client_secret=secret,
        scope=auth.scope,
        now=now,
    )
    update: dict[str, Any] = {
        f"{field_name}.access_token": keyring.encrypt(
            tokens.access_token, owner("access_token")
        ).model_dump(),
        f"{field_name}.access_token_expires_at": tokens.expires_at,
    }
    if tokens.refresh_token and tokens.refresh_token != refresh:
        update[f"{field_name}.refresh_token"] = keyring.encrypt(
            tokens.refresh_token, owner("refresh_token")
        ).model_dump()
    return AccessToken(tokens.access_token, auth.username, True, update)
