"""Connection test, OAuth2 (XOAUTH2) and autodiscovery against the real Dovecot/Postfix and local
DNS/HTTP servers. In-process: the onboarding modules are driven directly."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from mailsync.credentials import Keyring, generate_key
from mailsync.inbox_record import InboxRecord, OAuth2Auth, ServerSettings
from mailsync.oauth2 import OAuth2Error, ensure_access_token
from services.fetcher.onboarding.autodiscovery import Discoverer, DiscoveryOptions
from services.fetcher.onboarding.hosts import HostResolver
from services.fetcher.onboarding.probe import Credentials, ProbeOptions, probe_imap, probe_smtp
from tests.integration.onboarding_servers import AuthServer, DnsResponder, HttpFiles
from tests.stack import ROOT, SCRIPTS, MailLab

pytestmark = pytest.mark.integration

CA_FILE = str(ROOT / ".stack" / "mail" / "tls" / "cert.pem")
LOOPBACK = [ipaddress.ip_network("127.0.0.1/32")]


def _lab_caps(lab: MailLab) -> str:
    with socket.create_connection((lab.host, lab.imap_port), timeout=5) as s:
        return s.recv(2000).decode()


@pytest.fixture(scope="module")
def oauth_lab(mail_lab: MailLab) -> MailLab:
    """The lab with its oauth2 passdb active (re-read by Dovecot if it started before the change)."""
    if "AUTH=XOAUTH2" not in _lab_caps(mail_lab):
        subprocess.run([str(SCRIPTS / "mail.sh"), "reload"], check=True, capture_output=True, timeout=60)
    assert "AUTH=XOAUTH2" in _lab_caps(mail_lab)
    return mail_lab


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    server = AuthServer(int(os.environ.get("OAUTH2_INTROSPECTION_PORT", "31080")))
    server.start()
    yield server
    server.close()


@pytest.fixture
def dns_server() -> Iterator[DnsResponder]:
    server = DnsResponder()
    yield server
    server.close()


def _opts(resolver: HostResolver | None = None, **kw: object) -> ProbeOptions:
    base: dict[str, object] = {
        "resolver": resolver or HostResolver(LOOPBACK),
        "ca_file": CA_FILE,
        "connect_timeout": 3.0,
        "read_timeout": 5.0,
        "greeting_timeout": 1.5,
    }
    return ProbeOptions(**{**base, **kw})  # type: ignore[arg-type]


def _srv(lab: MailLab, port: int, security: str, host: str | None = None) -> ServerSettings:
    return ServerSettings(host=host or lab.host, port=port, security=security)  # type: ignore[arg-type]


# ---------------------------------------------------------------- passwords


async def test_good_app_password_imap_tls_and_starttls(
    mail_lab: MailLab, mail_user_factory: Callable
) -> None:  # type: ignore[type-arg]
    user = mail_user_factory("ob-good")
    creds = Credentials(user.email, password=user.password)
    for server in (
        _srv(mail_lab, mail_lab.imaps_port, "tls"),
        _srv(mail_lab, mail_lab.imap_port, "starttls"),
    ):
        result = await probe_imap(server, creds, _opts())
        assert result.ok, result.error
        names = [s.name for s in result.steps]
        assert names[:3] == ["resolve", "connect", "greeting"] and names[-2:] == ["auth", "list"]
        assert ("starttls" in names) == (server.security == "starttls")
        assert result.special_folders["\\Sent"] == "Sent" and "IDLE" in result.capabilities
    for server in (
        _srv(mail_lab, mail_lab.submissions_port, "tls"),
        _srv(mail_lab, mail_lab.submission_port, "starttls"),
    ):
        result = await probe_smtp(server, creds, _opts())
        assert result.ok, result.error
        assert "PLAIN" in result.auth_mechanisms


async def test_wrong_password_maps_to_code_field_hint(mail_lab: MailLab, mail_user_factory: Callable) -> None:  # type: ignore[type-arg]
    user = mail_user_factory("ob-wrong")
    creds = Credentials(user.email, password="definitely-wrong-" + user.password)
    imap = await probe_imap(_srv(mail_lab, mail_lab.imaps_port, "tls"), creds, _opts())
    assert not imap.ok and imap.error is not None
    assert imap.error.code == "auth.invalid_credentials"
    assert imap.error.field == "imap.password"
    assert "app password" in (imap.error.hint or "")
    assert imap.steps[-1].name == "auth" and not imap.steps[-1].ok
    smtp = await probe_smtp(_srv(mail_lab, mail_lab.submission_port, "starttls"), creds, _opts())
    assert smtp.error is not None and smtp.error.code == "auth.invalid_credentials"
    assert smtp.error.field == "smtp.password"
    for res in (imap, smtp):
        assert creds.password not in str(res.as_dict())


async def test_wrong_port_and_tls_mismatches(mail_lab: MailLab, mail_user_factory: Callable) -> None:  # type: ignore[type-arg]
    user = mail_user_factory("ob-ports")
    creds = Credentials(user.email, password=user.password)
    closed = _free_port()
    cases = [
        (probe_imap, _srv(mail_lab, closed, "tls"), "connect.refused", "imap.port"),
        (probe_imap, _srv(mail_lab, mail_lab.imap_port, "tls"), "tls.plaintext_port", "imap.security"),
        (probe_imap, _srv(mail_lab, mail_lab.imaps_port, "starttls"), "tls.tls_port", "imap.security"),
        (probe_imap, _srv(mail_lab, mail_lab.imap_port, "plain"), "tls.starttls_not_used", "imap.security"),
        (probe_smtp, _srv(mail_lab, mail_lab.submission_port, "tls"), "tls.plaintext_port", "smtp.security"),
        (probe_smtp, _srv(mail_lab, mail_lab.submissions_port, "starttls"), "tls.tls_port", "smtp.security"),
        (probe_smtp, _srv(mail_lab, mail_lab.smtp_port, "plain"), "tls.plain_not_allowed", "smtp.security"),
        # IMAP server on the SMTP port: not what the form said.
        (
            probe_smtp,
            _srv(mail_lab, mail_lab.imap_port, "starttls"),
            "protocol.unexpected_greeting",
            "smtp.port",
        ),
    ]
    for probe, server, code, field in cases:
        result = await probe(server, creds, _opts())
        assert result.error is not None, (server, result.steps)
        assert (result.error.code, result.error.field) == (code, field), (server, result.error)
        assert result.error.hint
    refused = await probe_imap(_srv(mail_lab, closed, "tls"), creds, _opts())
    assert refused.error is not None and "993" in (refused.error.hint or "")
    # A port that accepts TCP but never speaks (the kernel completes the handshake, nobody answers).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        timed_out = await probe_imap(_srv(mail_lab, port, "tls"), creds, _opts(connect_timeout=1.0))
        assert timed_out.error is not None and timed_out.error.code == "connect.timeout"
        assert timed_out.error.field == "imap.port" and "993" in (timed_out.error.hint or "")


async def test_certificate_untrusted_hostname_mismatch_and_private_hosts(
    mail_lab: MailLab,
    mail_user_factory: Callable,
    dns_server: DnsResponder,  # type: ignore[type-arg]
) -> None:
    user = mail_user_factory("ob-tls")
    creds = Credentials(user.email, password=user.password)
    imaps = _srv(mail_lab, mail_lab.imaps_port, "tls")
    untrusted = await probe_imap(imaps, creds, _opts(ca_file=None))
    assert untrusted.error is not None and untrusted.error.code == "tls.certificate_untrusted"
    # A name that resolves to the lab but is not on its certificate (CN=localhost, SAN 127.0.0.1).
    dns_server.add("imap.wrong-name.test", "A", "127.0.0.1")
    resolver = HostResolver(LOOPBACK, nameservers=["127.0.0.1"], port=dns_server.port, timeout=3)
    mismatch = await probe_imap(
        _srv(mail_lab, mail_lab.imaps_port, "tls", host="imap.wrong-name.test"), creds, _opts(resolver)
    )
    assert mismatch.error is not None and mismatch.error.code == "tls.hostname_mismatch"
    assert mismatch.error.field == "imap.host"
    nxdomain = await probe_imap(
        _srv(mail_lab, 993, "tls", host="nothing.wrong-name.test"), creds, _opts(resolver)
    )
    assert nxdomain.error is not None and nxdomain.error.code == "dns.not_found"
    # Without the allow-list entry, loopback and private targets are refused before any connection.
    strict = HostResolver([], nameservers=["127.0.0.1"], port=dns_server.port, timeout=3)
    dns_server.add("intranet.wrong-name.test", "A", "10.1.2.3")
    for host in ("127.0.0.1", "169.254.169.254", "imap.wrong-name.test", "intranet.wrong-name.test", "::1"):
        res = await probe_imap(_srv(mail_lab, 993, "tls", host=host), creds, _opts(strict))
        assert res.error is not None and res.error.code == "host.refused", host
        assert [s.name for s in res.steps] == ["resolve"]


# ---------------------------------------------------------------- OAuth2 / XOAUTH2


def _oauth_record(email: str, auth_server: AuthServer, keyring: Keyring, refresh: str) -> InboxRecord:
    key = InboxRecord.key("t-oauth", email)
    owner = f"{key}:imap_auth.refresh_token"
    return InboxRecord.model_validate(
        {
            "_id": key,
            "tenant_id": "t-oauth",
            "inbox_id": email,
            "owner_user_id": "u1",
            "email": email,
            "imap": {"host": "127.0.0.1", "port": 1, "security": "tls"},
            "smtp": {"host": "127.0.0.1", "port": 1, "security": "tls"},
            "imap_auth": OAuth2Auth(
                username=email,
                token_endpoint=auth_server.token_endpoint,
                client_id="mailsync-test",
                refresh_token=keyring.encrypt(refresh, owner),
            ),
        }
    )


async def test_xoauth2_valid_expired_refreshed_and_revoked(
    oauth_lab: MailLab,
    auth_server: AuthServer,
    mail_user_factory: Callable,  # type: ignore[type-arg]
) -> None:
    lab = oauth_lab
    user = mail_user_factory("ob-oauth")
    imaps, submission = _srv(lab, lab.imaps_port, "tls"), _srv(lab, lab.submission_port, "starttls")
    # Valid token: IMAP and SMTP accept XOAUTH2 (Dovecot asks our introspection endpoint).
    token = auth_server.issue_access(user.email)
    seen = auth_server.introspections
    imap = await probe_imap(imaps, Credentials(user.email, access_token=token), _opts())
    assert imap.ok, imap.error
    assert auth_server.introspections > seen
    smtp = await probe_smtp(submission, Credentials(user.email, access_token=token), _opts())
    assert smtp.ok, smtp.error
    # Expired token: refused with a token code, then refreshed from the stored refresh token.
    expired = auth_server.issue_access(user.email, ttl=-10)
    refused = await probe_imap(imaps, Credentials(user.email, access_token=expired), _opts())
    assert refused.error is not None and refused.error.code == "auth.token_invalid"
    assert refused.error.field == "oauth2"
    keyring = Keyring.from_spec(f"k1:{generate_key()}")
    refresh = auth_server.issue_refresh(user.email)
    record = _oauth_record(user.email, auth_server, keyring, refresh)
    record = record.model_copy(
        update={
            "imap_auth": record.imap_auth.model_copy(
                update={
                    "access_token": keyring.encrypt(expired, record.secret_owner("imap_auth.access_token")),
                    "access_token_expires_at": datetime.now(UTC) - timedelta(seconds=10),
                }
            )
        }
    )
    async with httpx.AsyncClient(timeout=5) as client:
        got = await ensure_access_token(record, keyring, client)
    assert got.refreshed and got.token != expired
    assert auth_server.token_requests[-1]["refresh_token"] == refresh
    assert "imap_auth.access_token" in got.update and refresh not in str(got.update)
    again = await probe_imap(imaps, Credentials(user.email, access_token=got.token), _opts())
    assert again.ok, again.error
    # Revoked: the refresh fails with a revoked error (→ auth_failed, reconnect), old tokens stop working.
    auth_server.revoke(user.email)
    with pytest.raises(OAuth2Error) as info:
        async with httpx.AsyncClient(timeout=5) as client:
            await ensure_access_token(record, keyring, client, force=True)
    assert info.value.revoked and info.value.code == "oauth.invalid_grant"
    assert refresh not in str(info.value)
    dead = await probe_imap(imaps, Credentials(user.email, access_token=got.token), _opts())
    assert dead.error is not None and dead.error.code == "auth.token_invalid"
    dead_smtp = await probe_smtp(submission, Credentials(user.email, access_token=got.token), _opts())
    assert dead_smtp.error is not None and dead_smtp.error.code == "auth.token_invalid"
    # Passwords still work next to the oauth2 passdb.
    pw = await probe_imap(imaps, Credentials(user.email, password=user.password), _opts())
    assert pw.ok, pw.error


# ---------------------------------------------------------------- autodiscovery

AUTOCONFIG = """<?xml version="1.0"?>
<clientConfig version="1.1">
  <emailProvider id="{domain}">
    <domain>{domain}</domain>
    <incomingServer type="pop3"><hostname>pop.{domain}</hostname><port>995</port>
      <socketType>SSL</socketType></incomingServer>
    <incomingServer type="imap"><hostname>imap.{domain}</hostname><port>143</port>
      <socketType>STARTTLS</socketType><username>%EMAILLOCALPART%</username>
      <authentication>password-cleartext</authentication></incomingServer>
    <incomingServer type="imap"><hostname>imap.{domain}</hostname><port>993</port>
      <socketType>SSL</socketType><username>%EMAILADDRESS%</username>
      <authentication>password-cleartext</authentication></incomingServer>
    <outgoingServer type="smtp"><hostname>smtp.{domain}</hostname><port>587</port>
      <socketType>STARTTLS</socketType><username>%EMAILADDRESS%</username></outgoingServer>
  </emailProvider>
</clientConfig>
"""


async def test_autodiscovery_through_each_source(dns_server: DnsResponder, mail_lab: MailLab) -> None:
    http = HttpFiles()
    try:
        resolver = HostResolver(LOOPBACK, nameservers=["127.0.0.1"], port=dns_server.port, timeout=2)
        disc = Discoverer(
            DiscoveryOptions(
                resolver=resolver,
                step_timeout=2,
                autoconfig_schemes=("http",),
                autoconfig_port=http.port,
                port_map={993: mail_lab.imaps_port, 465: mail_lab.submissions_port},
            )
        )
        # 1. autoconfig.<domain>
        dns_server.add("autoconfig.one.test", "A", "127.0.0.1")
        http.files[("autoconfig.one.test", "/mail/config-v1.1.xml")] = AUTOCONFIG.format(
            domain="one.test"
        ).encode()
        found = await disc.discover("ann@one.test")
        assert (found.source, found.imap, found.username) == (
            "autoconfig",
            ServerSettings(host="imap.one.test", port=993, security="tls"),
            "ann@one.test",
        )
        assert found.smtp == ServerSettings(host="smtp.one.test", port=587, security="starttls")
        assert [a.source for a in found.attempts] == ["preset", "autoconfig"]
        # 2. <domain>/.well-known/autoconfig/...
        dns_server.add("two.test", "A", "127.0.0.1")
        http.files[("two.test", "/.well-known/autoconfig/mail/config-v1.1.xml")] = AUTOCONFIG.format(
            domain="two.test"
        ).encode()
        found = await disc.discover("bob@two.test")
        assert found.source == "autoconfig-wellknown" and found.imap is not None
        assert found.imap.host == "imap.two.test"
        assert not found.attempts[1].ok and found.attempts[2].ok
        # 3. SRV (RFC 6186/8314)
        dns_server.add("_imaps._tcp.three.test", "SRV", "0 1 993 mail.three.test.")
        dns_server.add("_submission._tcp.three.test", "SRV", "0 1 587 mail.three.test.")
        dns_server.add("_submissions._tcp.three.test", "SRV", "0 0 0 .")
        found = await disc.discover("cy@three.test")
        assert found.source == "srv"
        assert found.imap == ServerSettings(host="mail.three.test", port=993, security="tls")
        assert found.smtp == ServerSettings(host="mail.three.test", port=587, security="starttls")
        # 4. MX matched against presets (Google Workspace, Microsoft 365, Zoho EU)
        dns_server.add("four.test", "MX", "1 aspmx.l.google.com.", "5 alt1.aspmx.l.google.com.")
        dns_server.add("five.test", "MX", "0 five-test.mail.protection.outlook.com.")
        dns_server.add("six.test", "MX", "10 mx.zoho.eu.")
        for email, preset, host in (
            ("di@four.test", "gmail", "imap.gmail.com"),
            ("ed@five.test", "office365", "outlook.office365.com"),
            ("fa@six.test", "zoho-eu", "imap.zoho.eu"),
        ):
            found = await disc.discover(email)
            assert (found.source, found.preset_id) == ("mx", preset), found.attempts
            assert found.imap is not None and found.imap.host == host
        # 5. guesses: imap.<domain> answering on the (remapped) IMAPS port
        dns_server.add("imap.seven.test", "A", "127.0.0.1")
        dns_server.add("smtp.seven.test", "A", "127.0.0.1")
        dns_server.add("seven.test", "TXT", '"v=spf1 -all"')
        found = await disc.discover("gu@seven.test")
        assert found.source == "guess"
        assert found.imap == ServerSettings(host="imap.seven.test", port=mail_lab.imaps_port, security="tls")
        assert found.smtp is not None and found.smtp.host == "smtp.seven.test"
        # Known provider domain: the preset at once; nothing found: every attempt reported.
        found = await disc.discover("someone@gmail.com")
        assert found.source == "preset" and found.preset_id == "gmail"
        found = await disc.discover("nobody@nothing-here.test")
        assert found.imap is None and [a.source for a in found.attempts] == [
            "preset",
            "autoconfig",
            "autoconfig-wellknown",
            "srv",
            "mx",
            "guess",
        ]
        # Internal addresses from DNS are not fetched without the allow-list.
        strict = Discoverer(
            DiscoveryOptions(
                resolver=HostResolver([], nameservers=["127.0.0.1"], port=dns_server.port, timeout=2),
                autoconfig_schemes=("http",),
                autoconfig_port=http.port,
            )
        )
        before = len(http.requests)
        found = await strict.discover("ann@one.test")
        assert found.source != "autoconfig" and len(http.requests) == before
        assert "loopback" in found.attempts[1].detail
    finally:
        http.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
