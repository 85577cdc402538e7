"""Every onboarding failure as a stable code, the form field to fix and a hint a person can act on.

Pure: server words in, `ErrorInfo` out. Field names are relative to the inbox form: `imap.host`,
`imap.port`, `imap.security`, `imap.username`, `imap.password` (and the same under `smtp.`),
`oauth2` for OAuth2 credentials, `email` for the address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from contracts.common import ErrorInfo
from mailsync.logs import scrub

PORTS_HINT = "incoming (IMAP) ports are 993 (TLS) or 143 (STARTTLS); outgoing (SMTP) ports are 465, 587 or 25"


@dataclass(frozen=True)
class Entry:
    message: str
    field: str | None  # relative to the protocol (`host`, `port`, ...), or absolute when it has a dot
    hint: str


CATALOG: dict[str, Entry] = {
    "dns.not_found": Entry("the server name does not exist", "host", "check the spelling of the server name"),
    "dns.failed": Entry(
        "the server name could not be looked up", "host", "try again; if it persists check the server name"
    ),
    "host.refused": Entry(
        "the server address is internal (loopback, private or link-local)",
        "host",
        "enter the public name of your mail server",
    ),
    "connect.refused": Entry("the server refused the connection on this port", "port", PORTS_HINT),
    "connect.timeout": Entry("the server did not answer on this port", "port", PORTS_HINT),
    "connect.failed": Entry("the connection to the server failed", "port", PORTS_HINT),
    "tls.plaintext_port": Entry(
        "TLS was tried on a port that speaks plaintext",
        "security",
        "choose STARTTLS for this port (143 or 587), or use the TLS port 993 / 465",
    ),
    "tls.tls_port": Entry(
        "the server expects TLS right away on this port",
        "security",
        "choose TLS (implicit) for this port (993 or 465), or use the STARTTLS port 143 / 587",
    ),
    "tls.certificate_untrusted": Entry(
        "the server's TLS certificate is not trusted (self-signed or unknown issuer)",
        "host",
        "use the server name your provider documents; ask the administrator for a valid certificate",
    ),
    "tls.hostname_mismatch": Entry(
        "the server's TLS certificate is for another name",
        "host",
        "enter the server name exactly as on its certificate (the one your provider documents)",
    ),
    "tls.handshake_failed": Entry(
        "the TLS handshake failed", "security", "check the security setting and the port"
    ),
    "tls.starttls_not_offered": Entry(
        "the server does not offer STARTTLS on this port", "security", "choose TLS and port 993 / 465"
    ),
    "tls.starttls_not_used": Entry(
        "the server offers STARTTLS but plaintext was chosen",
        "security",
        "choose STARTTLS: passwords must not travel unencrypted",
    ),
    "tls.plain_not_allowed": Entry(
        "unencrypted connections are not allowed here",
        "security",
        "choose TLS or STARTTLS (plain SMTP only on port 25 when explicitly allowed)",
    ),
    "protocol.unexpected_greeting": Entry(
        "the server on this port is not an IMAP/SMTP server of the expected kind", "port", PORTS_HINT
    ),
    "protocol.timeout": Entry("the server stopped answering", "port", "try again later; check the port"),
    "protocol.closed": Entry("the server closed the connection", "port", "try again later; check the port"),
    "auth.invalid_credentials": Entry(
        "username or password not accepted",
        "password",
        "check the username and password; if 2-step verification is on, use an app password",
    ),
    "auth.app_password_required": Entry(
        "the provider requires an app password",
        "password",
        "turn on 2-step verification and create an app password for mail",
    ),
    "auth.web_login_required": Entry(
        "the provider wants you to sign in through its web page first",
        "password",
        "sign in once via your web browser (webmail), confirm it was you, then try again",
    ),
    "auth.imap_disabled": Entry(
        "IMAP access is disabled for this account",
        "email",
        "enable IMAP in your mail account's settings (e.g. Gmail: Settings → Forwarding and POP/IMAP)",
    ),
    "auth.oauth_required": Entry(
        "the server accepts only OAuth2 sign-in (no passwords)",
        "oauth2",
        "connect the account with OAuth2 (Sign in with Microsoft/Google)",
    ),
    "auth.mechanism_unsupported": Entry(
        "the server offers no sign-in method mailsync can use",
        "security",
        "choose TLS or STARTTLS and try again",
    ),
    "auth.token_invalid": Entry(
        "the OAuth2 access token was refused", "oauth2", "reconnect the account (sign in again)"
    ),
    "auth.token_refresh_failed": Entry(
        "the OAuth2 refresh token was refused or revoked", "oauth2", "reconnect the account (sign in again)"
    ),
    "auth.token_endpoint_failed": Entry(
        "the OAuth2 token endpoint could not be reached", "oauth2", "try again later"
    ),
    "auth.smtp_auth_unavailable": Entry(
        "the SMTP server offers no AUTH on this port",
        "port",
        "use the submission port 587 (STARTTLS) or 465 (TLS)",
    ),
    "server.unavailable": Entry(
        "the mail server is temporarily unavailable", None, "try again in a few minutes"
    ),
    "server.limit": Entry(
        "the account hit a provider limit (connections or bandwidth)",
        None,
        "close other mail apps or wait; Gmail allows ~15 connections and 2,500 MB download per day",
    ),
    "server.overquota": Entry("the mailbox is over its quota", None, "free space in the mailbox"),
    "imap.list_failed": Entry("listing the folders failed", None, "try again; report it if it persists"),
    "smtp.rejected": Entry("the SMTP server rejected the session", None, "check the settings and try again"),
}


def error(
    code: str, protocol: str, *, server_response: str | None = None, detail: str | None = None
) -> ErrorInfo:
    entry = CATALOG[code]
    field = entry.field
    if field is not None and "." not in field and field not in ("oauth2", "email"):
        field = f"{protocol}.{field}"
    message = f"{protocol.upper()}: {entry.message}" + (f" ({detail})" if detail else "")
    return ErrorInfo(
        code=code,
        message=scrub(message),
        field=field,
        hint=entry.hint,
        server_response=scrub(server_response)[:500] if server_response else None,
    )


_CODE = re.compile(r"\[([A-Z-]+)(?:[ \]])")


def classify_imap_no(text: str, mechanism: str) -> str:
    """IMAP NO/BAD to a LOGIN/AUTHENTICATE: RFC 5530 response codes first, then known provider texts."""
    upper = text.upper()
    m = _CODE.search(text)
    rc = m.group(1) if m else ""
    if "WEB BROWSER" in upper or "WEBLOGIN" in upper.replace(" ", "") or "SIGN IN VIA" in upper:
        return "auth.web_login_required"
    if "IMAP ACCESS IS DISABLED" in upper or "IMAP IS DISABLED" in upper or "NOT ENABLED FOR IMAP" in upper:
        return "auth.imap_disabled"
    if "APPLICATION-SPECIFIC PASSWORD" in upper or "APP PASSWORD" in upper:
        return "auth.app_password_required"
    if rc == "UNAVAILABLE":
        return "server.unavailable"
    if rc == "LIMIT" or "TOO MANY" in upper:
        return "server.limit"
    if rc == "OVERQUOTA":
        return "server.overquota"
    if mechanism == "XOAUTH2":
        return "auth.token_invalid"
    if "BASICAUTHBLOCKED" in upper.replace(" ", "") or "OAUTH" in upper:
        return "auth.oauth_required"
    return "auth.invalid_credentials"


def classify_smtp_auth(code: int, text: str, mechanism: str) -> str:
    """SMTP reply to AUTH (RFC 4954 codes plus provider texts)."""
    upper = text.upper()
    if "5.7.9" in text or "APPLICATION-SPECIFIC PASSWORD" in upper:
        return "auth.app_password_required"
    if "WEB BROWSER" in upper or "5.7.14" in text:
        return "auth.web_login_required"
    if "BASIC AUTHENTICATION IS DISABLED" in upper or "5.7.139" in text:
        return "auth.oauth_required"
    if code in {421, 454} or (code >= 400 and code < 500):
        return "server.unavailable"
    if code == 530 and "STARTTLS" in upper:
        return "tls.starttls_not_used"
    if mechanism == "XOAUTH2":
        return "auth.token_invalid"
    return "auth.invalid_credentials"
