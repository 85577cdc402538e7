"""Onboarding decisions without I/O: presets, autoconfig/SRV parsing, host policy, error mapping,
XOAUTH2 and token responses, and that views and reprs never carry secrets."""

from __future__ import annotations

import base64
import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from mailsync.credentials import Keyring, generate_key
from mailsync.inbox_record import InboxRecord, PasswordAuth
from mailsync.oauth2 import OAuth2Error, needs_refresh, parse_token_response, xoauth2_initial_response
from services.fetcher.onboarding import presets
from services.fetcher.onboarding.autodiscovery import guess_candidates, parse_autoconfig, pick_srv
from services.fetcher.onboarding.errors import CATALOG, classify_imap_no, classify_smtp_auth, error
from services.fetcher.onboarding.hosts import address_refusal, parse_allow_list
from services.fetcher.onboarding.inboxes import check_documents, view
from services.fetcher.onboarding.models import InboxInput
from services.fetcher.onboarding.probe import Credentials, parse_list


def test_presets_cover_the_providers_with_facts() -> None:
    all_ = presets.all_presets()
    for pid in ("gmail", "yahoo", "outlook", "office365", "zoho", "icloud", "aol", "gmx", "fastmail"):
        assert pid in all_, pid
    gmail = all_["gmail"]
    assert (gmail.imap.host, gmail.imap.port, gmail.imap.security) == ("imap.gmail.com", 993, "tls")
    assert gmail.files_sent_copy and gmail.limits["download_mb_per_day"] == 2500
    assert gmail.limits["upload_mb_per_day"] == 500 and gmail.limits["min_poll_interval_seconds"] == 600
    assert all_["office365"].auth_methods == ["oauth2"] and all_["office365"].files_sent_copy
    assert {p for p in all_ if p.startswith("zoho-")} >= {"zoho-eu", "zoho-in", "zoho-au", "zoho-jp"}
    assert all_["zoho-eu"].imap.host == "imap.zoho.eu"
    assert presets.by_email_domain("GMAIL.com") == gmail
    assert presets.by_mx(["alt2.aspmx.l.google.com."]) == gmail
    assert presets.by_mx(["contoso-com.mail.protection.outlook.com"]) == all_["office365"]
    assert presets.by_mx(["mx2.zoho.com.au"]) == all_["zoho-au"]  # longest suffix wins
    assert presets.by_mx(["mx.example.net"]) is None


def test_autoconfig_parsing_prefers_tls_and_fills_username() -> None:
    xml = b"""<clientConfig version="1.1"><emailProvider id="x">
      <incomingServer type="imap"><hostname>imap.x.test</hostname><port>143</port>
        <socketType>STARTTLS</socketType><username>%EMAILLOCALPART%</username></incomingServer>
      <incomingServer type="imap"><hostname>imap.x.test</hostname><port>993</port>
        <socketType>SSL</socketType><username>%EMAILADDRESS%</username></incomingServer>
      <outgoingServer type="smtp"><hostname>smtp.x.test</hostname><port>465</port>
        <socketType>SSL</socketType></outgoingServer></emailProvider></clientConfig>"""
    found = parse_autoconfig(xml, "ann@x.test")
    assert found is not None and found.imap is not None and found.smtp is not None
    assert (found.imap.port, found.imap.security, found.username) == (993, "tls", "ann@x.test")
    assert found.smtp.port == 465
    assert parse_autoconfig(b"<!DOCTYPE x [<!ENTITY a 'b'>]><clientConfig/>", "a@b.c") is None
    assert parse_autoconfig(b"not xml", "a@b.c") is None
    assert parse_autoconfig(b"<clientConfig><emailProvider/></clientConfig>", "a@b.c") is None


def test_srv_and_guesses() -> None:
    assert pick_srv(["10 5 993 b.test.", "0 1 993 a.test.", "0 9 993 c.test."]) == ("c.test", 993)
    assert pick_srv(["0 0 0 ."]) is None and pick_srv(["garbage"]) is None
    imap, smtp = guess_candidates("d.test")
    assert imap[0].host == "imap.d.test" and imap[0].port == 993 and smtp[0].host == "smtp.d.test"


@pytest.mark.parametrize(
    ("ip", "refused"),
    [
        ("127.0.0.1", True),
        ("10.0.0.5", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("::1", True),
        ("fe80::1", True),
        ("::ffff:10.0.0.1", True),
        ("0.0.0.0", True),
        ("8.8.8.8", False),
        ("2a00:1450:4001::1", False),
    ],
)
def test_host_policy(ip: str, refused: bool) -> None:
    assert (address_refusal(ipaddress.ip_address(ip), []) is not None) is refused


def test_allow_list_permits_only_what_it_names() -> None:
    allow = parse_allow_list(["127.0.0.1", "10.1.0.0/16"])
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert address_refusal(ipaddress.ip_address("10.1.2.3"), allow) is None
    assert address_refusal(ipaddress.ip_address("127.0.0.2"), allow) is not None
    assert address_refusal(ipaddress.ip_address("10.2.0.1"), allow) is not None


@pytest.mark.parametrize(
    ("text", "mech", "code"),
    [
        ("[AUTHENTICATIONFAILED] Invalid credentials (Failure)", "PASSWORD", "auth.invalid_credentials"),
        (
            "[ALERT] Please log in via your web browser: https://support.google.com/mail/accounts/answer/78754",
            "PASSWORD",
            "auth.web_login_required",
        ),
        ("[ALERT] Your account is not enabled for IMAP use.", "PASSWORD", "auth.imap_disabled"),
        ("[ALERT] IMAP access is disabled for your domain.", "PASSWORD", "auth.imap_disabled"),
        ("[ALERT] Application-specific password required", "PASSWORD", "auth.app_password_required"),
        ("[UNAVAILABLE] Temporary authentication failure", "PASSWORD", "server.unavailable"),
        ("[LIMIT] Too many simultaneous connections", "PASSWORD", "server.limit"),
        ("[AUTHENTICATIONFAILED] Authentication failed.", "XOAUTH2", "auth.token_invalid"),
        ("AUTHENTICATE failed. BasicAuthBlocked", "PASSWORD", "auth.oauth_required"),
    ],
)
def test_imap_refusals_map_to_codes(text: str, mech: str, code: str) -> None:
    assert classify_imap_no(text, mech) == code


def test_smtp_refusals_and_catalog() -> None:
    assert (
        classify_smtp_auth(535, "5.7.8 Error: authentication failed", "PASSWORD")
        == "auth.invalid_credentials"
    )
    assert classify_smtp_auth(534, "5.7.9 Application-specific password required", "PASSWORD") == (
        "auth.app_password_required"
    )
    assert (
        classify_smtp_auth(
            535, "5.7.139 Authentication unsuccessful, basic authentication is disabled", "PASSWORD"
        )
        == "auth.oauth_required"
    )
    assert (
        classify_smtp_auth(454, "4.7.0 Temporary authentication failure", "PASSWORD") == "server.unavailable"
    )
    assert classify_smtp_auth(535, "5.7.8", "XOAUTH2") == "auth.token_invalid"
    for code, entry in CATALOG.items():
        assert entry.hint and entry.message, code
    info = error("connect.timeout", "smtp", server_response="AUTH PLAIN c2VjcmV0")
    assert info.field == "smtp.port" and "465, 587 or 25" in (info.hint or "")
    assert "c2VjcmV0" not in (info.server_response or "")


def test_xoauth2_and_token_responses() -> None:
    raw = base64.b64decode(xoauth2_initial_response("ann@x.test", "tok123"))
    assert raw == b"user=ann@x.test\x01auth=Bearer tok123\x01\x01"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert needs_refresh(None, now) and needs_refresh(now + timedelta(seconds=60), now)
    assert not needs_refresh(now + timedelta(hours=1), now)
    ok = parse_token_response(200, b'{"access_token": "AT", "expires_in": 3600, "refresh_token": "RT2"}', now)
    assert ok.expires_at == now + timedelta(hours=1) and ok.refresh_token == "RT2"
    assert "AT" not in repr(ok)
    with pytest.raises(OAuth2Error) as info:
        parse_token_response(
            400, b'{"error": "invalid_grant", "error_description": "bad RT-secret"}', now, ("RT-secret",)
        )
    assert (
        info.value.revoked and info.value.code == "oauth.invalid_grant" and "RT-secret" not in str(info.value)
    )
    with pytest.raises(OAuth2Error) as info:
        parse_token_response(503, b"<html>", now)
    assert not info.value.revoked


def test_list_parsing_finds_special_use() -> None:
    folders, special = parse_list(
        [
            '* LIST (\\HasNoChildren) "/" INBOX',
            '* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"',
            '* LIST (\\All \\HasNoChildren) "/" "[Gmail]/All Mail"',
        ]
    )
    assert folders == ["INBOX", "Sent Items", "[Gmail]/All Mail"]
    assert special == {"\\Sent": "Sent Items", "\\All": "[Gmail]/All Mail"}


def test_views_reprs_and_inputs_never_show_secrets() -> None:
    ring = Keyring.from_spec(f"k:{generate_key()}")
    record = InboxRecord.model_validate(
        {
            "_id": "t:i",
            "tenant_id": "t",
            "inbox_id": "i",
            "owner_user_id": "u",
            "email": "a@b.test",
            "imap": {"host": "imap.b.test", "port": 993, "security": "tls"},
            "smtp": {"host": "smtp.b.test", "port": 465, "security": "tls"},
            "imap_auth": PasswordAuth(
                username="a@b.test", password=ring.encrypt("hunter2", "t:i:imap_auth.password")
            ),
        }
    )
    shown = view(record)
    assert shown["imap_auth"] == {"kind": "password", "username": "a@b.test", "password": "stored"}
    assert "ciphertext" not in str(shown)
    check_documents([record.model_dump(by_alias=True)], ring)
    inp = InboxInput.model_validate({"owner_user_id": "u", "email": "a@b.test", "password": "hunter2"})
    assert "hunter2" not in repr(inp) and "hunter2" not in str(inp.model_dump())
    assert "hunter2" not in repr(Credentials("a", password="hunter2"))
