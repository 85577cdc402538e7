"""Autodiscovery of IMAP/SMTP settings for an email domain, each source bounded by a timeout.

Order: a preset for a known domain → provider autoconfig XML (`autoconfig.<domain>/mail/config-v1.1.xml`,
then `<domain>/.well-known/autoconfig/mail/config-v1.1.xml`) → RFC 6186/8314 SRV records
(`_imaps._tcp`, `_imap._tcp`, `_submissions._tcp`, `_submission._tcp`) → the domain's MX matched
against the presets (Google, Microsoft, Yahoo, Zoho, ...) → guesses (`imap.`, `mail.`, `smtp.`) that
resolve and accept a TCP connection. The first source that yields IMAP settings wins and is reported
with every attempt. Parsing (`parse_autoconfig`, `pick_srv`, `guess_candidates`) is pure; DNS and
HTTP go through `HostResolver` and httpx, always to an address the host policy allowed.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from mailsync.inbox_record import ServerSettings

from . import presets
from .hosts import HostError, HostResolver

Source = Literal["preset", "autoconfig", "autoconfig-wellknown", "srv", "mx", "guess"]
MAX_XML = 256 * 1024


@dataclass
class Attempt:
    source: str
    ok: bool
    detail: str
    ms: int


@dataclass
class Discovery:
    domain: str
    source: Source | None = None
    imap: ServerSettings | None = None
    smtp: ServerSettings | None = None
    username: str | None = None  # the login name to use, filled for the address asked about
    preset_id: str | None = None
    auth_methods: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "found": self.imap is not None,
            "source": self.source,
            "imap": self.imap.model_dump() if self.imap else None,
            "smtp": self.smtp.model_dump() if self.smtp else None,
            "username": self.username,
            "preset_id": self.preset_id,
            "auth_methods": self.auth_methods,
            "attempts": [a.__dict__ for a in self.attempts],
        }


# ---------------------------------------------------------------- pure parsing

_SOCKET = {"SSL": "tls", "TLS": "tls", "STARTTLS": "starttls", "PLAIN": "plain"}


def _server(el: ET.Element) -> ServerSettings | None:
    host = (el.findtext("hostname") or "").strip()
    port = (el.findtext("port") or "").strip()
    sock = _SOCKET.get((el.findtext("socketType") or "").strip().upper())
    if not host or not port.isdigit() or sock is None:
        return None
    try:
        return ServerSettings(host=host, port=int(port), security=sock)
    except ValueError:
        return None


def _fill(template: str, email: str) -> str:
    local, _, domain = email.partition("@")
    return (
        template.replace("%EMAILADDRESS%", email)
        .replace("%EMAILLOCALPART%", local)
        .replace("%EMAILDOMAIN%", domain)
    )


def parse_autoconfig(body: bytes, email: str) -> Discovery | None:
    """Thunderbird's config-v1.1 format: the first usable IMAP and SMTP server (encrypted preferred)."""
    if len(body) > MAX_XML or b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        return None
    try:
        root = ET.fromstring(body)  # noqa: S314 - size bounded, no DTD (checked above)
    except ET.ParseError:
        return None
    provider = root.find("emailProvider")
    if provider is None:
        return None
    found = Discovery(domain=email.partition("@")[2])

    def best(kind: str, type_: str) -> tuple[ServerSettings | None, str | None, list[str]]:
        choices: list[tuple[ServerSettings, str | None, list[str]]] = []
        for el in provider.findall(kind):
            if el.get("type") != type_:
                continue
            srv = _server(el)
            if srv is not None:
                user = el.findtext("username")
                auths = [(a.text or "").strip() for a in el.findall("authentication")]
                choices.append((srv, _fill(user.strip(), email) if user else None, auths))
        rank = {"tls": 0, "starttls": 1, "plain": 2}
        choices.sort(key=lambda c: rank[c[0].security])
        return choices[0] if choices else (None, None, [])

    found.imap, found.username, auths = best("incomingServer", "imap")
    found.smtp, _, _ = best("outgoingServer", "smtp")
    found.auth_methods = [a for a in auths if a]
    return found if found.imap else None


def pick_srv(records: list[str]) -> tuple[str, int] | None:
    """`priority weight port target` → the lowest priority, then highest weight; `.` means no service."""
    parsed: list[tuple[int, int, int, str]] = []
    for rec in records:
        parts = rec.split()
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
            continue
        prio, weight, port, target = int(parts[0]), int(parts[1]), int(parts[2]), parts[3].rstrip(".")
        if target and port:
            parsed.append((prio, -weight, port, target))
    if not parsed:
        return None
    prio, _, port, target = min(parsed)
    return target, port


def guess_candidates(domain: str) -> tuple[list[ServerSettings], list[ServerSettings]]:
    imap = [
        ServerSettings(host=f"{p}.{domain}", port=port, security=sec)
        for p in ("imap", "mail")
        for port, sec in ((993, "tls"), (143, "starttls"))
    ]
    smtp = [
        ServerSettings(host=f"{p}.{domain}", port=port, security=sec)
        for p in ("smtp", "mail")
        for port, sec in ((465, "tls"), (587, "starttls"))
    ]
    return imap, smtp


# ---------------------------------------------------------------- I/O


@dataclass
class DiscoveryOptions:
    resolver: HostResolver
    step_timeout: float = 5.0
    autoconfig_schemes: tuple[str, ...] = ("https", "http")
    autoconfig_port: int | None = None  # tests serve the XML on a high port
    ca_file: str | None = None
    # Ports probed for guesses are the standard ones; tests may remap them (standard → lab port).
    port_map: dict[int, int] = field(default_factory=dict)


class Discoverer:
    def __init__(self, opts: DiscoveryOptions) -> None:
        self.opts = opts

    async def discover(self, email: str) -> Discovery:
        domain = email.partition("@")[2].strip().lower().rstrip(".")
        result = Discovery(domain=domain)
        if not domain:
            result.attempts.append(Attempt("input", False, "not an email address", 0))
            return result
        steps = (
            ("preset", self._preset),
            ("autoconfig", self._autoconfig_sub),
            ("autoconfig-wellknown", self._autoconfig_wellknown),
            ("srv", self._srv),
            ("mx", self._mx),
            ("guess", self._guess),
        )
        for name, step in steps:
            t = time.monotonic()
            try:
                found, detail = await asyncio.wait_for(step(email, domain), self.opts.step_timeout * 3)
            except TimeoutError:
                found, detail = None, "timed out"
            ms = int((time.monotonic() - t) * 1000)
            result.attempts.append(Attempt(name, found is not None, detail, ms))
            if found is not None:
                found.attempts = result.attempts
                found.domain = domain
                found.source = name  # type: ignore[assignment]
                if found.username is None:
                    found.username = email
                return found
        return result

    async def _preset(self, email: str, domain: str) -> tuple[Discovery | None, str]:
        preset = presets.by_email_domain(domain)
        if preset is None:
            return None, "no preset for this domain"
        return _from_preset(preset, email, domain), f"preset {preset.id}"

    async def _fetch(self, host: str, path: str, email: str) -> tuple[bytes | None, str]:
        try:
            resolved = await self.opts.resolver.resolve(host)
        except HostError as exc:
            return None, str(exc)
        details: list[str] = []
        for scheme in self.opts.autoconfig_schemes:
            port = self.opts.autoconfig_port
            netloc = resolved.ip if ":" not in resolved.ip else f"[{resolved.ip}]"
            url = f"{scheme}://{netloc}{f':{port}' if port else ''}{path}"
            try:
                async with httpx.AsyncClient(
                    timeout=self.opts.step_timeout,
                    follow_redirects=False,
                    verify=self.opts.ca_file or True,
                ) as client:
                    resp = await client.get(
                        url,
                        params={"emailaddress": email},
                        headers={"host": host, "accept": "application/xml, text/xml"},
                        extensions={"sni_hostname": host},
                    )
            except httpx.HTTPError as exc:
                details.append(f"{scheme}: {type(exc).__name__}")
                continue
            if resp.status_code == 200 and len(resp.content) <= MAX_XML:
                return resp.content, f"{scheme}://{host}{path}"
            details.append(f"{scheme}: HTTP {resp.status_code}")
        return None, "; ".join(details)

    async def _autoconfig(self, host: str, path: str, email: str) -> tuple[Discovery | None, str]:
        body, detail = await self._fetch(host, path, email)
        if body is None:
            return None, detail
        parsed = parse_autoconfig(body, email)
        return parsed, detail if parsed else f"{detail}: no usable IMAP server in the XML"

    async def _autoconfig_sub(self, email: str, domain: str) -> tuple[Discovery | None, str]:
        return await self._autoconfig(f"autoconfig.{domain}", "/mail/config-v1.1.xml", email)

    async def _autoconfig_wellknown(self, email: str, domain: str) -> tuple[Discovery | None, str]:
        return await self._autoconfig(domain, "/.well-known/autoconfig/mail/config-v1.1.xml", email)

    async def _srv(self, email: str, domain: str) -> tuple[Discovery | None, str]:
        resolver = self.opts.resolver
        imap = smtp = None
        for name, sec in (("_imaps._tcp", "tls"), ("_imap._tcp", "starttls")):
            picked = pick_srv(await resolver.query(f"{name}.{domain}", "SRV"))
            if picked:
                imap = ServerSettings(host=picked[0], port=picked[1], security=sec)
                break
        for name, sec in (("_submissions._tcp", "tls"), ("_submission._tcp", "starttls")):
            picked = pick_srv(await resolver.query(f"{name}.{domain}", "SRV"))
            if picked:
                smtp = ServerSettings(host=picked[0], port=picked[1], security=sec)
                break
        if imap is None:
            return None, "no _imaps/_imap SRV records"
        return Discovery(domain=domain, imap=imap, smtp=smtp), f"SRV {imap.host}:{imap.port}"

    async def _mx(self, email: str, domain: str) -> tuple[Discovery | None, str]:
        records = await self.opts.resolver.query(domain, "MX")
        hosts = [r.split()[-1].rstrip(".") for r in records if r.split()]
        preset = presets.by_mx(hosts)
        if preset is None:
            return None, f"MX {', '.join(hosts) or 'none'} matches no preset"
        return _from_preset(preset, email, domain), f"MX {hosts[0]} → preset {preset.id}"

    async def _guess(self, email: str, domain: str) -> tuple[Discovery | None, str]:
        imaps, smtps = guess_candidates(domain)
        imap = await self._first_open(imaps)
        if imap is None:
            return None, "no imap./mail. host answers on 993 or 143"
        smtp = await self._first_open(smtps)
        return Discovery(domain=domain, imap=imap, smtp=smtp), f"{imap.host}:{imap.port} answers"

    async def _first_open(self, candidates: list[ServerSettings]) -> ServerSettings | None:
        for cand in candidates:
            try:
                resolved = await self.opts.resolver.resolve(cand.host)
            except HostError:
                continue
            port = self.opts.port_map.get(cand.port, cand.port)
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(resolved.ip, port), min(self.opts.step_timeout, 3.0)
                )
            except (OSError, TimeoutError):
                continue
            writer.close()
            return cand.model_copy(update={"port": port})
        return None


def _from_preset(preset: presets.Preset, email: str, domain: str) -> Discovery:
    username = email if preset.username == "email" else email.partition("@")[0]
    return Discovery(
        domain=domain,
        imap=ServerSettings(**preset.imap.model_dump()),
        smtp=ServerSettings(**preset.smtp.model_dump()),
        username=username,
        preset_id=preset.id,
        auth_methods=list(preset.auth_methods),
    )
