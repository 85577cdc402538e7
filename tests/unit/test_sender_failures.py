"""A refused SMTP login's hint names what the user can fix: the password, or the OAuth2 grant."""

from __future__ import annotations

import aiosmtplib

from mailsync.credentials import Keyring, generate_key
from mailsync.inbox_record import Auth, InboxRecord, OAuth2Auth, PasswordAuth, ServerSettings
from services.sender.failures import LOGIN_AUTH_HINT, OAUTH_AUTH_HINT, classify_smtp
from services.sender.logins import mechanism_for

KEYRING = Keyring.from_spec(f"k1:{generate_key()}")
REFUSED = aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Error: authentication failed")


def _password() -> PasswordAuth:
    return PasswordAuth(username="ann@x.test", password=KEYRING.encrypt("pw", "t1:i1:imap_auth.password"))


def _oauth() -> OAuth2Auth:
    return OAuth2Auth(
        username="ann@x.test",
        token_endpoint="https://idp.test/token",
        client_id="c",
        refresh_token=KEYRING.encrypt("rt", "t1:i1:smtp_auth.refresh_token"),
    )


def _record(imap_auth: Auth, smtp_auth: Auth | None) -> InboxRecord:
    return InboxRecord(
        id="t1:i1",
        tenant_id="t1",
        inbox_id="i1",
        owner_user_id="u1",
        email="ann@x.test",
        imap=ServerSettings(host="imap.x.test", port=993, security="tls"),
        smtp=ServerSettings(host="smtp.x.test", port=587, security="starttls"),
        imap_auth=imap_auth,
        smtp_auth=smtp_auth,
    )


def test_a_refused_oauth2_login_asks_for_a_reconnect_not_a_password() -> None:
    failure = classify_smtp(REFUSED, mechanism="xoauth2")
    assert not failure.transient
    assert (failure.error.code, failure.error.field) == ("auth.invalid_credentials", "smtp_auth")
    assert failure.error.hint == OAUTH_AUTH_HINT
    assert "reconnect" in OAUTH_AUTH_HINT and "password" not in OAUTH_AUTH_HINT
    assert failure.error.server_response == "535 5.7.8 Error: authentication failed"


def test_a_refused_password_login_asks_to_check_the_password() -> None:
    assert classify_smtp(REFUSED, mechanism="password").error.hint == LOGIN_AUTH_HINT
    assert classify_smtp(REFUSED).error.hint == LOGIN_AUTH_HINT  # the default: a password login
    assert "password" in LOGIN_AUTH_HINT


def test_a_temporary_auth_failure_has_no_fix_to_suggest_for_either_kind() -> None:
    for mechanism in ("password", "xoauth2"):
        failure = classify_smtp(
            aiosmtplib.SMTPAuthenticationError(454, "4.7.0 try later"), mechanism=mechanism
        )
        assert failure.transient and failure.error.hint is None


def test_the_smtp_mechanism_follows_the_credentials_smtp_uses() -> None:
    assert mechanism_for(_record(_password(), _oauth()), "smtp") == "xoauth2"
    assert mechanism_for(_record(_oauth(), _password()), "smtp") == "password"
    # No SMTP credentials of its own: SMTP logs in with the IMAP ones.
    assert mechanism_for(_record(_oauth(), None), "smtp") == "xoauth2"
    assert mechanism_for(_record(_password(), None), "smtp") == "password"
    assert mechanism_for(_record(_oauth(), _password()), "imap") == "xoauth2"
