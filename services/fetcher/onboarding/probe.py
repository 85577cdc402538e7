"""Connection test for IMAP and SMTP: a result per step, and one `ErrorInfo` when a step fails.

IMAP: resolve → connect (+TLS) → greeting → CAPABILITY → STARTTLS → LOGIN / AUTHENTICATE PLAIN /
XOAUTH2 → LIST (special-use folders) → LOGOUT. SMTP: resolve → connect (+TLS) → greeting → EHLO →
STARTTLS → EHLO → AUTH → QUIT. A deliberately small line client of ours (asyncio streams) is used
instead of a full IMAP/SMTP library so every failure can be told apart (refused, timeout, TLS to a
plaintext port, certificate, STARTTLS offered but not used, ...). Every read and connect is bounded.
Secrets are never part of a step detail, an error or an exception message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Literal

from contracts.common import ErrorInfo
from mailsync.inbox_record import ServerSettings
from mailsync.oauth2 import xoauth2_initial_response

from .errors import classify_imap_no, classify_smtp_auth, error
from .hosts import HostError, HostResolver

MAX_LINE = 64 * 1024
MAX_RESPONSE = 2 * 1024 * 1024


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)

    @property
    def mechanism(self) -> Literal["XOAUTH2", "PASSWORD"]:
        return "XOAUTH2" if self.access_token else "PASSWORD"

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.access_token) if s)


@dataclass(frozen=True)
class ProbeOptions:
    resolver: HostResolver
    connect_timeout: float = 10.0
    read_timeout: float = 15.0
    greeting_timeout: float = 8.0
    ca_file: str | None = None
    smtp_allow_plain: bool = False
    ehlo_name: str = "mailsync.invalid"

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


@dataclass
class Step:
    name: str
    ok: bool
    detail: str = ""
    ms: int = 0


@dataclass
class ProbeResult:
    protocol: Literal["imap", "smtp"]
    ok: bool = False
    steps: list[Step] = field(default_factory=list)
    error: ErrorInfo | None = None
    capabilities: list[str] = field(default_factory=list)
    auth_mechanisms: list[str] = field(default_factory=list)
    special_folders: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "protocol": self.protocol,
            "ok": self.ok,
            "steps": [s.__dict__ for s in self.steps],
            "error": self.error.model_dump() if self.error else None,
            "capabilities": self.capabilities,
            "auth_mechanisms": self.auth_mechanisms,
            "special_folders": self.special_folders,
        }


class ProbeFailed(Exception):
    def __init__(self, code: str, detail: str = "", server_response: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.server_response = server_response


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
            text = text.replace(base64.b64encode(s.encode()).decode(), "***")
    return text


class LineConn:
    """CRLF lines over asyncio streams with a deadline on every read; STARTTLS upgrades in place."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout

    async def readline(self, timeout: float | None = None) -> str:  # noqa: ASYNC109
        try:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\n"), timeout or self.timeout)
        except TimeoutError:
            raise ProbeFailed("protocol.timeout", f"no answer within {timeout or self.timeout:g}s") from None
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                return exc.partial.decode("utf-8", "replace").rstrip("\r\n")
            raise ProbeFailed("protocol.closed", "the server closed the connection") from None
        except asyncio.LimitOverrunError:
            raise ProbeFailed("protocol.unexpected_greeting", "line too long") from None
        except (ConnectionError, ssl.SSLError) as exc:
            raise ProbeFailed("protocol.closed", f"connection lost ({type(exc).__name__})") from None
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    async def read_exactly(self, n: int) -> str:
        try:
            raw = await asyncio.wait_for(self.reader.readexactly(n), self.timeout)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            raise ProbeFailed("protocol.closed", "connection lost inside a literal") from None
        return raw.decode("utf-8", "replace")

    async def send(self, line: str) -> None:
        try:
            self.writer.write(line.encode() + b"\r\n")
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except (TimeoutError, ConnectionError, ssl.SSLError) as exc:
            raise ProbeFailed("protocol.closed", f"sending failed ({type(exc).__name__})") from None

    async def starttls(self, ctx: ssl.SSLContext, host: str) -> None:
        try:
            await asyncio.wait_for(self.writer.start_tls(ctx, server_hostname=host), self.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise _cert_error(exc) from None
        except ssl.SSLError as exc:
            raise ProbeFailed("tls.handshake_failed", exc.reason or type(exc).__name__) from None
        except TimeoutError:
            raise ProbeFailed("tls.handshake_failed", "TLS handshake timed out") from None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError, OSError):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


def _cert_error(exc: ssl.SSLCertVerificationError) -> ProbeFailed:
    text = str(exc.verify_message or exc.reason or exc)
    if exc.verify_code == 62 or "hostname mismatch" in text.lower() or "match" in text.lower():
        return ProbeFailed("tls.hostname_mismatch", text)
    return ProbeFailed("tls.certificate_untrusted", text)


async def _connect(server: ServerSettings, opts: ProbeOptions, steps: list[Step]) -> tuple[LineConn, str]:
    t = time.monotonic()
    try:
        resolved = await opts.resolver.resolve(server.host)
    except HostError as exc:
        steps.append(Step("resolve", False, str(exc), _ms(t)))
        raise ProbeFailed(exc.code, str(exc)) from None
    steps.append(Step("resolve", True, f"{server.host} → {resolved.ip}", _ms(t)))
    t = time.monotonic()
    implicit = server.security == "tls"
    ctx = opts.tls_context() if implicit else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                resolved.ip,
                server.port,
                ssl=ctx,
                server_hostname=server.host if implicit else None,
                ssl_handshake_timeout=opts.connect_timeout if implicit else None,
                limit=MAX_LINE,
            ),
            opts.connect_timeout,
        )
    except ConnectionRefusedError:
        raise _step_fail(steps, "connect", t, "connect.refused", f"port {server.port} refused") from None
    except TimeoutError:
        raise _step_fail(
            steps, "connect", t, "connect.timeout", f"no answer within {opts.connect_timeout:g}s"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        failed = _cert_error(exc)
        raise _step_fail(steps, "tls", t, failed.code, failed.detail) from None
    except ssl.SSLError as exc:
        reason = (exc.reason or "").upper()
        plaintext = any(
            k in reason for k in ("WRONG_VERSION", "RECORD_LAYER", "PACKET_LENGTH", "UNKNOWN_PROTOCOL")
        )
        code = "tls.plaintext_port" if plaintext else "tls.handshake_failed"
        raise _step_fail(steps, "tls", t, code, exc.reason or "TLS error") from None
    except OSError as exc:
        raise _step_fail(steps, "connect", t, "connect.failed", exc.strerror or type(exc).__name__) from None
    steps.append(
        Step("connect", True, f"{resolved.ip}:{server.port}" + (" (TLS)" if implicit else ""), _ms(t))
    )
    return LineConn(reader, writer, opts.read_timeout), resolved.ip


def _ms(t: float) -> int:
    return int((time.monotonic() - t) * 1000)


def _step_fail(  # noqa: PLR0917
    steps: list[Step], name: str, t: float, code: str, detail: str, server: str | None = None
) -> ProbeFailed:
    steps.append(Step(name, False, detail, _ms(t)))
    return ProbeFailed(code, detail, server)


async def _greeting(conn: LineConn, server: ServerSettings, opts: ProbeOptions, steps: list[Step]) -> str:
    t = time.monotonic()
    try:
        return await conn.readline(opts.greeting_timeout)
    except ProbeFailed as exc:
        if exc.code == "protocol.timeout" and server.security != "tls":
            # A plaintext server greets at once; silence means it waits for a TLS ClientHello.
            raise _step_fail(steps, "greeting", t, "tls.tls_port", exc.detail) from None
        raise _step_fail(steps, "greeting", t, exc.code, exc.detail) from None


# ---------------------------------------------------------------- IMAP

_LITERAL = re.compile(r"\{(\d+)\+?\}$")
_CAPS_IN_TEXT = re.compile(r"\[CAPABILITY ([^\]]*)\]", re.I)


@dataclass
class ImapReply:
    status: str
    text: str
    untagged: list[str]


class ImapClient:
    def __init__(self, conn: LineConn) -> None:
        self.conn = conn
        self.n = 0

    async def _line_with_literals(self) -> str:
        line = await self.conn.readline()
        total = len(line)
        while (m := _LITERAL.search(line)) is not None:
            size = int(m.group(1))
            total += size
            if total > MAX_RESPONSE:
                raise ProbeFailed("protocol.unexpected_greeting", "response too large")
            line = line[: m.start()] + '"' + (await self.conn.read_exactly(size)).replace('"', "") + '"'
            line += await self.conn.readline()
        return line

    async def command(self, cmd: str, continuation: list[str] | None = None) -> ImapReply:
        """Send a command; answer `+` continuations from `continuation` (empty line when exhausted)."""
        self.n += 1
        tag = f"m{self.n}"
        await self.conn.send(f"{tag} {cmd}")
        untagged: list[str] = []
        pending = list(continuation or [])
        size = 0
        while True:
            line = await self._line_with_literals()
            size += len(line)
            if size > MAX_RESPONSE:
                raise ProbeFailed("protocol.unexpected_greeting", "response too large")
            if line.startswith(tag + " "):
                status, _, text = line[len(tag) + 1 :].partition(" ")
                return ImapReply(status.upper(), text, untagged)
            if line.startswith("+"):
                await self.conn.send(pending.pop(0) if pending else "")
            else:
                untagged.append(line)


def _caps(untagged: list[str], text: str = "") -> list[str]:
    for line in untagged:
        if line.upper().startswith("* CAPABILITY "):
            return line[len("* CAPABILITY ") :].split()
    m = _CAPS_IN_TEXT.search(text)
    return m.group(1).split() if m else []


_LIST = re.compile(r'^\* LIST \(([^)]*)\) (?:"[^"]*"|NIL) (.+)$', re.I)
SPECIAL_USE = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")


def parse_list(untagged: list[str]) -> tuple[list[str], dict[str, str]]:
    folders: list[str] = []
    special: dict[str, str] = {}
    for line in untagged:
        m = _LIST.match(line)
        if not m:
            continue
        name = m.group(2).strip()
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        folders.append(name)
        for flag in m.group(1).split():
            canon = next((s for s in SPECIAL_USE if s.lower() == flag.lower()), None)
            if canon and canon not in special:
                special[canon] = name
    return folders, special


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def probe_imap(  # noqa: PLR0915 - one branch per protocol step
    server: ServerSettings, creds: Credentials, opts: ProbeOptions
) -> ProbeResult:
    result = ProbeResult("imap")
    secrets = creds.secrets()
    conn: LineConn | None = None
    try:
        conn, _ = await _connect(server, opts, result.steps)
        greeting = await _greeting(conn, server, opts, result.steps)
        t = time.monotonic()
        if greeting.upper().startswith("* BYE"):
            raise _step_fail(result.steps, "greeting", t, "server.unavailable", "server said BYE", greeting)
        if not (greeting.upper().startswith("* OK") or greeting.upper().startswith("* PREAUTH")):
            raise _step_fail(
                result.steps,
                "greeting",
                t,
                "protocol.unexpected_greeting",
                "not an IMAP greeting",
                greeting[:200],
            )
        result.steps.append(Step("greeting", True, greeting[:200], _ms(t)))
        client = ImapClient(conn)
        t = time.monotonic()
        caps = _caps([], greeting) or _caps((await client.command("CAPABILITY")).untagged)
        result.steps.append(Step("capability", True, " ".join(caps)[:300], _ms(t)))
        upper = {c.upper() for c in caps}
        if server.security == "starttls":
            t = time.monotonic()
            if "STARTTLS" not in upper:
                raise _step_fail(
                    result.steps, "starttls", t, "tls.starttls_not_offered", "no STARTTLS capability"
                )
            reply = await client.command("STARTTLS")
            if reply.status != "OK":
                raise _step_fail(
                    result.steps, "starttls", t, "tls.handshake_failed", "STARTTLS refused", reply.text
                )
            await conn.starttls(opts.tls_context(), server.host)
            caps = _caps((await client.command("CAPABILITY")).untagged)
            upper = {c.upper() for c in caps}
            result.steps.append(Step("starttls", True, "TLS established", _ms(t)))
        elif server.security == "plain" and "STARTTLS" in upper:
            raise _step_fail(
                result.steps, "starttls", time.monotonic(), "tls.starttls_not_used", "server offers STARTTLS"
            )
        result.auth_mechanisms = [c[5:] for c in caps if c.upper().startswith("AUTH=")]
        t = time.monotonic()
        reply = await _imap_auth(client, creds, upper)
        if reply.status != "OK":
            code = classify_imap_no(reply.text, creds.mechanism)
            raise _step_fail(
                result.steps, "auth", t, code, f"{creds.mechanism} refused", _redact(reply.text, secrets)
            )
        result.steps.append(Step("auth", True, f"{creds.mechanism} accepted", _ms(t)))
        t = time.monotonic()
        caps = _caps(reply.untagged, reply.text) or _caps((await client.command("CAPABILITY")).untagged)
        result.capabilities = caps
        extended = "LIST-EXTENDED" in {c.upper() for c in caps}
        listing = await client.command('LIST "" "*" RETURN (SPECIAL-USE)' if extended else 'LIST "" "*"')
        if listing.status != "OK":
            raise _step_fail(result.steps, "list", t, "imap.list_failed", "LIST refused", listing.text)
        folders, result.special_folders = parse_list(listing.untagged)
        found = ", ".join(f"{k}={v}" for k, v in result.special_folders.items())
        result.steps.append(
            Step("list", True, f"{len(folders)} folders; special-use: {found or 'none'}", _ms(t))
        )
        with contextlib.suppress(ProbeFailed):
            await client.command("LOGOUT")
        result.ok = True
    except ProbeFailed as exc:
        result.error = _failure(exc, "imap", secrets)
    finally:
        if conn is not None:
            await conn.close()
    return result


def _failure(exc: ProbeFailed, protocol: str, secrets: tuple[str, ...]) -> ErrorInfo:
    """The step's error with every secret the probe knows removed from the server's words."""
    return error(
        exc.code,
        protocol,
        server_response=_redact(exc.server_response or "", secrets) or None,
        detail=_redact(exc.detail, secrets) or None,
    )


async def _imap_auth(client: ImapClient, creds: Credentials, caps: set[str]) -> ImapReply:
    if creds.access_token:
        if "AUTH=XOAUTH2" not in caps:
            raise ProbeFailed("auth.mechanism_unsupported", "server does not offer AUTH=XOAUTH2")
        ir = xoauth2_initial_response(creds.username, creds.access_token)
        if "SASL-IR" in caps:
            return await client.command(f"AUTHENTICATE XOAUTH2 {ir}")
        return await client.command("AUTHENTICATE XOAUTH2", [ir])
    password = creds.password or ""
    if "AUTH=PLAIN" in caps:
        ir = base64.b64encode(f"\0{creds.username}\0{password}".encode()).decode()
        if "SASL-IR" in caps:
            return await client.command(f"AUTHENTICATE PLAIN {ir}")
        return await client.command("AUTHENTICATE PLAIN", [ir])
    if "LOGINDISABLED" in caps:
        if "AUTH=XOAUTH2" in caps or "AUTH=OAUTHBEARER" in caps:
            raise ProbeFailed("auth.oauth_required", "server offers only OAuth2")
        raise ProbeFailed("auth.mechanism_unsupported", "LOGIN is disabled and no AUTH=PLAIN")
    return await client.command(f"LOGIN {_quote(creds.username)} {_quote(password)}")


# ---------------------------------------------------------------- SMTP


@dataclass
class SmtpReply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return " ".join(self.lines)


async def _smtp_reply(conn: LineConn, timeout: float | None = None) -> SmtpReply:  # noqa: ASYNC109
    lines: list[str] = []
    while True:
        line = await conn.readline(timeout)
        if len(line) < 3 or not line[:3].isdigit():
            raise ProbeFailed("protocol.unexpected_greeting", "not an SMTP reply", line[:200])
        lines.append(line[4:])
        if len(line) == 3 or line[3] != "-":
            return SmtpReply(int(line[:3]), lines)
        if len(lines) > 200:
            raise ProbeFailed("protocol.unexpected_greeting", "reply too long")


async def _smtp_cmd(conn: LineConn, line: str) -> SmtpReply:
    await conn.send(line)
    return await _smtp_reply(conn)


def _ehlo_ext(reply: SmtpReply) -> dict[str, str]:
    ext: dict[str, str] = {}
    for line in reply.lines[1:]:
        key, _, rest = line.partition(" ")
        ext[key.upper()] = rest
    return ext


async def probe_smtp(  # noqa: PLR0912, PLR0915 - one branch per protocol step
    server: ServerSettings, creds: Credentials, opts: ProbeOptions
) -> ProbeResult:
    result = ProbeResult("smtp")
    secrets = creds.secrets()
    conn: LineConn | None = None
    try:
        if server.security == "plain" and not (opts.smtp_allow_plain and server.port == 25):
            raise _step_fail(
                result.steps,
                "settings",
                time.monotonic(),
                "tls.plain_not_allowed",
                "plain SMTP is only allowed on port 25 when enabled",
            )
        conn, _ = await _connect(server, opts, result.steps)
        t = time.monotonic()
        try:
            greet = await _smtp_reply(conn, opts.greeting_timeout)
        except ProbeFailed as exc:
            if exc.code == "protocol.timeout" and server.security != "tls":
                raise _step_fail(result.steps, "greeting", t, "tls.tls_port", exc.detail) from None
            raise _step_fail(result.steps, "greeting", t, exc.code, exc.detail, exc.server_response) from None
        if greet.code != 220:
            code = "server.unavailable" if greet.code in (421, 554) else "protocol.unexpected_greeting"
            raise _step_fail(result.steps, "greeting", t, code, f"greeting {greet.code}", greet.text[:200])
        result.steps.append(Step("greeting", True, greet.text[:200], _ms(t)))
        t = time.monotonic()
        ehlo = await _smtp_cmd(conn, f"EHLO {opts.ehlo_name}")
        if ehlo.code != 250:
            raise _step_fail(result.steps, "ehlo", t, "smtp.rejected", f"EHLO {ehlo.code}", ehlo.text[:200])
        ext = _ehlo_ext(ehlo)
        result.steps.append(Step("ehlo", True, " ".join(ext)[:300], _ms(t)))
        if server.security == "starttls":
            t = time.monotonic()
            if "STARTTLS" not in ext:
                raise _step_fail(
                    result.steps, "starttls", t, "tls.starttls_not_offered", "no STARTTLS in EHLO"
                )
            reply = await _smtp_cmd(conn, "STARTTLS")
            if reply.code != 220:
                raise _step_fail(
                    result.steps, "starttls", t, "tls.handshake_failed", "STARTTLS refused", reply.text
                )
            await conn.starttls(opts.tls_context(), server.host)
            ehlo = await _smtp_cmd(conn, f"EHLO {opts.ehlo_name}")
            ext = _ehlo_ext(ehlo)
            result.steps.append(Step("starttls", True, "TLS established", _ms(t)))
        elif server.security == "plain" and "STARTTLS" in ext:
            raise _step_fail(
                result.steps, "starttls", time.monotonic(), "tls.starttls_not_used", "server offers STARTTLS"
            )
        result.capabilities = sorted(ext)
        mechs = ext.get("AUTH", "").upper().split()
        result.auth_mechanisms = mechs
        t = time.monotonic()
        if not mechs:
            raise _step_fail(result.steps, "auth", t, "auth.smtp_auth_unavailable", "no AUTH in EHLO")
        reply = await _smtp_auth(conn, creds, mechs)
        if reply.code != 235:
            code = classify_smtp_auth(reply.code, reply.text, creds.mechanism)
            raise _step_fail(
                result.steps,
                "auth",
                t,
                code,
                f"{creds.mechanism} refused ({reply.code})",
                _redact(reply.text, secrets),
            )
        result.steps.append(Step("auth", True, f"{creds.mechanism} accepted", _ms(t)))
        with contextlib.suppress(ProbeFailed):
            await _smtp_cmd(conn, "QUIT")
        result.ok = True
    except ProbeFailed as exc:
        result.error = _failure(exc, "smtp", secrets)
    finally:
        if conn is not None:
            await conn.close()
    return result


async def _smtp_auth(conn: LineConn, creds: Credentials, mechs: list[str]) -> SmtpReply:
    if creds.access_token:
        if "XOAUTH2" not in mechs:
            raise ProbeFailed("auth.mechanism_unsupported", "server does not offer AUTH XOAUTH2")
        reply = await _smtp_cmd(
            conn, f"AUTH XOAUTH2 {xoauth2_initial_response(creds.username, creds.access_token)}"
        )
        if reply.code == 334:  # error details as a challenge; an empty answer ends the exchange
            reply = await _smtp_cmd(conn, "")
        return reply
    password = creds.password or ""
    if "PLAIN" in mechs:
        ir = base64.b64encode(f"\0{creds.username}\0{password}".encode()).decode()
        return await _smtp_cmd(conn, f"AUTH PLAIN {ir}")
    if "LOGIN" in mechs:
        reply = await _smtp_cmd(conn, "AUTH LOGIN")
        if reply.code == 334:
            reply = await _smtp_cmd(conn, base64.b64encode(creds.username.encode()).decode())
        if reply.code == 334:
            reply = await _smtp_cmd(conn, base64.b64encode(password.encode()).decode())
        return reply
    if "XOAUTH2" in mechs or "OAUTHBEARER" in mechs:
        raise ProbeFailed("auth.oauth_required", "server offers only OAuth2")
    raise ProbeFailed("auth.mechanism_unsupported", f"server offers {' '.join(mechs)}")
