"""What a failed SMTP or IMAP attempt means: retry (transient) or give up (permanent), and when.

Pure decisions: the delivery loop hands in the exception or reply code and gets a `Failure`.
"""

from __future__ import annotations

import random
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiosmtplib

from contracts.common import ErrorInfo
from mailsync.logs import scrub

if TYPE_CHECKING:
    from .logins import Mechanism

# A refused login: what the user can do about it depends on what was presented. An OAuth2 inbox has no
# password to fix; its grant must be given again.
LOGIN_AUTH_HINT = "check the SMTP username and password (or use an app password)"
OAUTH_AUTH_HINT = "reconnect the inbox: sign in with the provider again to grant access (OAuth2)"


@dataclass(frozen=True)
class Failure:
    transient: bool
    error: ErrorInfo


def _text(message: str) -> str:
    return scrub(" ".join(message.split()))[:500]


def smtp_code_failure(code: int, message: str, *, what: str = "the SMTP server") -> Failure:
    """4xx: try again later; 5xx: permanent (RFC 5321 §4.2.1)."""
    words = _text(message)
    server = f"{code} {words}".strip()
    if 400 <= code < 500:
        return Failure(
            True, ErrorInfo(code=f"smtp.{code}", message=f"{what} deferred: {server}", server_response=server)
        )
    return Failure(
        False, ErrorInfo(code=f"smtp.{code}", message=f"{what} refused: {server}", server_response=server)
    )


def _auth_hint(mechanism: Mechanism) -> str:
    return OAUTH_AUTH_HINT if mechanism == "xoauth2" else LOGIN_AUTH_HINT


def classify_smtp(exc: BaseException, *, mechanism: Mechanism = "password") -> Failure:
    """`mechanism`: how the session logged in (`xoauth2` for an OAuth2 inbox), for the auth hint."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        words = _text(exc.message)
        server = f"{exc.code} {words}"
        transient = 400 <= exc.code < 500  # 454 temporary authentication failure
        return Failure(
            transient,
            ErrorInfo(
                code="auth.invalid_credentials" if not transient else "auth.temporary_failure",
                message=f"SMTP authentication failed: {server}",
                field="smtp_auth",
                hint=None if transient else _auth_hint(mechanism),
                server_response=server,
            ),
        )
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {_text(r.message)}" for r in exc.recipients)
        transient = any(400 <= c < 500 for c in codes)
        first = next((c for c in codes if 400 <= c < 500), codes[0] if codes else 550)
        return Failure(
            transient,
            ErrorInfo(
                code=f"smtp.{first}",
                message=f"every recipient was refused: {detail}"[:1000],
                field="to",
                server_response=detail[:1000],
            ),
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        what = "the SMTP server"
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):
            what = "the sender address"
        elif isinstance(exc, aiosmtplib.SMTPDataError):
            what = "the message"
        return smtp_code_failure(exc.code, exc.message, what=what)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return Failure(
            False,
            ErrorInfo(
                code="smtp.not_supported",
                message=f"the SMTP server lacks a needed feature: {_text(str(exc))}",
            ),
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure(
            False,
            ErrorInfo(
                code="tls.certificate_invalid",
                message="the server's TLS certificate did not verify: "
                f"{_text(exc.verify_message or str(exc))}",
                field="smtp.host",
                hint="check the host name; certificate verification stays on",
            ),
        )
    if isinstance(exc, (aiosmtplib.SMTPTimeoutError, TimeoutError)):
        return Failure(True, ErrorInfo(code="net.timeout", message="the SMTP server did not answer in time"))
    if isinstance(exc, (aiosmtplib.SMTPException, OSError, ConnectionError)):
        return Failure(
            True,
            ErrorInfo(
                code="net.connect_failed", message=f"cannot talk to the SMTP server: {_text(str(exc))}"
            ),
        )
    return Failure(True, ErrorInfo(code="send.internal", message=f"{type(exc).__name__}: {_text(str(exc))}"))


def backoff_seconds(attempt: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [base·2^(n-1)/2, base·2^(n-1)], capped."""
    r: random.Random = rand or random.Random()
    ceiling = float(min(cap, base * (2.0 ** max(0, attempt - 1))))
    return ceiling / 2 + r.random() * ceiling / 2


def retry_decision(failure: Failure, attempts: int, max_attempts: int) -> str:
    """`retry`, `fail` (permanent) or `exhausted` (transient but out of attempts → dead letter)."""
    if not failure.transient:
        return "fail"
    return "retry" if attempts < max_attempts else "exhausted"


def unconfirmed_decision(policy: str, attempts: int, max_attempts: int) -> str:
    """A send interrupted after SMTP started, our Message-ID not in the Sent folder: `resend`, `fail`
    (the `fail` policy: `send.outcome_unknown`) or `exhausted` (`attempts` SMTP attempts were started
    already; another would pass `sender_max_attempts` → dead letter). Bounded like `retry_decision`,
    so a send whose outcome is lost every time (a crash, a journal write that keeps failing) is not
    resent without end."""
    if policy == "fail":
        return "fail"
    return "resend" if attempts < max_attempts else "exhausted"


def write_retry_delay(
    attempt: int, max_attempts: int, base: float, cap: float, rand: random.Random | None = None
) -> float | None:
    """After failed database write number `attempt`: seconds to wait before the next one (jittered
    backoff), or None when `max_attempts` writes were made."""
    if attempt >= max_attempts:
        return None
    return backoff_seconds(attempt, base, cap, rand)
