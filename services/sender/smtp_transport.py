"""SMTP submission with aiosmtplib: implicit TLS, STARTTLS, or plain only where the inbox allows it.

`SmtpTransport` is the interface the delivery loop uses; `AioSmtpTransport` is the real one. Sessions
are reused per inbox for a few seconds (a TLS handshake and AUTH per message would dominate), at most
`connections_per_inbox` at once. A reused session that turns out dead before any message data was
sent is replaced transparently; once DATA started, a failure is reported (the message may be out).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import aiosmtplib

from mailsync.inbox_record import InboxRecord

from .logins import Login

LoginSource = Callable[[bool], Awaitable[Login]]  # force_refresh → credentials


class OutcomeUnknown(Exception):
    """The connection failed after message data started: the server may have accepted the message."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class PlainNotAllowed(Exception):
    """The inbox's SMTP server is plain (port 25) and the inbox does not allow it."""


@dataclass(frozen=True)
class SmtpResult:
    accepted: list[str]
    refused: dict[str, str]
    response: str


class SmtpTransport(Protocol):
    async def send(
        self, record: InboxRecord, login: LoginSource, sender: str, recipients: list[str], raw: bytes
    ) -> SmtpResult: ...

    async def close(self) -> None: ...


def xoauth2_refresh_may_help(code: int, *, refreshed: bool) -> bool:
    """Whether a refused XOAUTH2 login is worth one forced token refresh: only a permanent refusal
    (5xx) of a token we did not mint for this very login. A 4xx (454 temporary authentication
    failure) is the server's trouble, and a refused fresh token stays refused after another refresh."""
    return 500 <= code < 600 and not refreshed


def tls_context(verify: bool, cafile: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if cafile:
        ctx.load_verify_locations(cafile)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class _Session:
    smtp: aiosmtplib.SMTP
    last_used: float = field(default_factory=time.monotonic)


class _Stage(Exception):
    """Wraps a failure with whether message data had started to go out."""

    def __init__(self, exc: BaseException, data_started: bool) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.data_started = data_started


class AioSmtpTransport:
    def __init__(
        self,
        *,
        timeout: float,
        tls: ssl.SSLContext,
        ehlo_hostname: str | None,
        connections_per_inbox: int,
        idle_seconds: float,
    ) -> None:
        self._timeout = timeout
        self._tls = tls
        self._ehlo = ehlo_hostname
        self._per_inbox = connections_per_inbox
        self._idle = idle_seconds
        self._idle_sessions: dict[str, list[_Session]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def _connect(self, record: InboxRecord, login: LoginSource) -> aiosmtplib.SMTP:
        server = record.smtp
        if server.security == "plain" and not record.smtp_allow_plain:
            raise PlainNotAllowed(
                f"{server.host}:{server.port} is plain SMTP and the inbox does not allow it"
            )
        smtp = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            use_tls=server.security == "tls",
            start_tls=server.security == "starttls",
            tls_context=self._tls if server.security != "plain" else None,
            timeout=self._timeout,
            local_hostname=self._ehlo,
        )
        await smtp.connect()
        try:
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo()  # after STARTTLS the extensions (AUTH) are only known after a new EHLO
            if smtp.supports_extension("auth"):
                creds = await login(False)
                if creds.mechanism == "xoauth2":
                    try:
                        await smtp.auth_xoauth2(creds.username, creds.secret)
                    except aiosmtplib.SMTPAuthenticationError as exc:
                        if not xoauth2_refresh_may_help(exc.code, refreshed=bool(creds.update)):
                            raise
                        # The stored token may have been revoked early: one forced refresh, then give up.
                        creds = await login(True)
                        await smtp.auth_xoauth2(creds.username, creds.secret)
                else:
                    await smtp.login(creds.username, creds.secret)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _take_idle(self, key: str) -> _Session | None:
        sessions = self._idle_sessions.get(key, [])
        now = time.monotonic()
        while sessions:
            s = sessions.pop()
            if s.smtp.is_connected and now - s.last_used < self._idle:
                return s
            s.smtp.close()
        return None

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, sender: str, recipients: list[str], raw: bytes
    ) -> SmtpResult:
        options = [f"SIZE={len(raw)}"] if smtp.supports_extension("size") else []
        try:
            await smtp.mail(sender, options=options)
        except BaseException as exc:
            raise _Stage(exc, data_started=False) from exc
        refused: dict[str, str] = {}
        refusals: list[aiosmtplib.SMTPRecipientRefused] = []
        accepted: list[str] = []
        try:
            for rcpt in recipients:
                try:
                    await smtp.rcpt(rcpt)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refusals.append(exc)
                    refused[rcpt] = f"{exc.code} {' '.join(exc.message.split())}"
            if not accepted:
                await _quiet_rset(smtp)
                raise aiosmtplib.SMTPRecipientsRefused(refusals)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise _Stage(exc, data_started=False) from exc
        except BaseException as exc:
            raise _Stage(exc, data_started=False) from exc
        try:
            response = await smtp.data(raw)
        except aiosmtplib.SMTPResponseException as exc:
            await _quiet_rset(smtp)
            # The server answered the DATA with an error: nothing was accepted.
            raise _Stage(exc, data_started=False) from exc
        except BaseException as exc:
            raise _Stage(exc, data_started=True) from exc
        return SmtpResult(accepted, refused, f"{response.code} {' '.join(response.message.split())}")

    async def send(
        self, record: InboxRecord, login: LoginSource, sender: str, recipients: list[str], raw: bytes
    ) -> SmtpResult:
        key = record.id
        slot = self._slots.setdefault(key, asyncio.Semaphore(self._per_inbox))
        async with slot:
            session = self._take_idle(key)
            reused = session is not None
            if session is None:
                session = _Session(await self._connect(record, login))
            try:
                result = await self._transaction(session.smtp, sender, recipients, raw)
            except _Stage as stage:
                session.smtp.close()
                stale = isinstance(stage.exc, (aiosmtplib.SMTPServerDisconnected, ConnectionError)) or (
                    # 421: the server closed the idle session ("timeout exceeded"), not a verdict on us.
                    isinstance(stage.exc, aiosmtplib.SMTPResponseException) and stage.exc.code == 421
                )
                if stage.data_started:
                    raise OutcomeUnknown(stage.exc) from None
                if not (reused and stale):
                    raise stage.exc from None
                # The idle session had died; nothing was sent on it. One fresh session.
                session = _Session(await self._connect(record, login))
                try:
                    result = await self._transaction(session.smtp, sender, recipients, raw)
                except _Stage as again:
                    session.smtp.close()
                    if again.data_started:
                        raise OutcomeUnknown(again.exc) from None
                    raise again.exc from None
            session.last_used = time.monotonic()
            if self._idle > 0:
                self._idle_sessions.setdefault(key, []).append(session)
            else:
                await _quiet_quit(session.smtp)
            return result

    async def close(self) -> None:
        for sessions in self._idle_sessions.values():
            for s in sessions:
                await _quiet_quit(s.smtp)
        self._idle_sessions.clear()


async def _quiet_rset(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.rset()
    except (aiosmtplib.SMTPException, ConnectionError):
        smtp.close()


async def _quiet_quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit(timeout=2.0)  # a polite goodbye; never hold up a shutdown for it
    except (aiosmtplib.SMTPException, ConnectionError, OSError):
        smtp.close()
