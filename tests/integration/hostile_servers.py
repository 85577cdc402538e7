"""Scripted hostile IMAP and SMTP servers on 127.0.0.1 (asyncio), for the hostile-server tests.

`HostileImap(mode)` speaks just enough IMAP4rev1 for the fetcher's read-only session (CAPABILITY,
LOGIN, LIST, EXAMINE, UID SEARCH, UID FETCH, NOOP, IDLE, LOGOUT) over a mailbox of `messages`, and
misbehaves as its mode says:

- `ok`: behaves.
- `no_greeting`: accepts the connection and never says anything.
- `garbage`: greets, then answers every command with bytes that are not IMAP.
- `stall_fetch`: answers until a UID FETCH, sends half of a FETCH response, then goes silent.
- `bye_idle`: behaves, but says `* BYE` and hangs up shortly after every IDLE starts.
- `huge_literal`: answers a UID FETCH with a literal announced as 900 GB.
- `trickle`: sends its greeting one byte per `trickle_seconds`, forever.
- `overflow`: reports a UIDVALIDITY beyond 32 bits.
- `sasl_loop`: answers AUTHENTICATE with one SASL challenge after another.

`HostileSmtp(mode)`: `421_close` answers the greeting with `421` and closes the connection;
`421_at_mail` greets and answers EHLO, then answers MAIL FROM with `421` and closes; `421_on_reuse`
accepts one mail per connection and answers the next MAIL FROM on it with `421` and closes.
Each server records connection times, so tests can see the client's backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field

_TAGGED = re.compile(rb"^(\S+) (.*)$")


@dataclass
class HostileImap:
    mode: str
    messages: list[bytes] = field(default_factory=list)
    uidvalidity: int = 1763780000
    trickle_seconds: float = 0.5
    port: int = 0
    connections: list[float] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> HostileImap:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    def gaps(self) -> list[float]:
        """Seconds between consecutive connections (the client's reconnect delays)."""
        return [b - a for a, b in zip(self.connections, self.connections[1:], strict=False)]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(time.monotonic())
        self._writers.add(writer)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "no_greeting":
            await reader.read()  # until the client gives up and closes
            return
        if self.mode == "trickle":
            for byte in b"* OK [CAPABILITY IMAP4rev1] slowly, very slowly" * 1000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(self.trickle_seconds)
            return
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE LITERAL+ AUTH=PLAIN] hostile.test ready\r\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                return
            m = _TAGGED.match(line.rstrip(b"\r\n"))
            if not m:
                continue
            tag, rest = m.group(1), m.group(2)
            verb = rest.split(b" ", 2)
            command = verb[0].upper().decode(errors="replace")
            if command == "UID" and len(verb) > 1:
                command += " " + verb[1].upper().decode(errors="replace")
            self.commands.append(command)
            if self.mode == "garbage" and command not in ("LOGOUT",):
                writer.write(b"\x00\xff)))) {{{ " + tag + b" MAYBE\r\n* 1 FETCH (UID\r\n")
                await writer.drain()
                continue
            if not await self._answer(tag, command, rest, reader, writer):
                return

    async def _answer(  # noqa: PLR0912 - one branch per command
        self,
        tag: bytes,
        command: str,
        rest: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        def say(*lines: bytes) -> None:
            for ln in lines:
                writer.write(ln + b"\r\n")

        n = len(self.messages)
        if command == "CAPABILITY":
            say(b"* CAPABILITY IMAP4rev1 IDLE LITERAL+ AUTH=PLAIN", tag + b" OK done")
        elif command in ("LOGIN", "NOOP", "ENABLE", "ID"):
            say(tag + b" OK done")
        elif command == "LIST":
            say(b'* LIST (\\HasNoChildren) "/" INBOX', tag + b" OK done")
        elif command == "EXAMINE":
            validity = (1 << 40) if self.mode == "overflow" else self.uidvalidity
            say(
                f"* {n} EXISTS".encode(),
                f"* OK [UIDVALIDITY {validity}] ok".encode(),
                f"* OK [UIDNEXT {n + 1}] ok".encode(),
                tag + b" OK [READ-ONLY] done",
            )
        elif command == "UID SEARCH":
            say(b"* SEARCH " + b" ".join(str(i).encode() for i in range(1, n + 1)), tag + b" OK done")
        elif command == "UID FETCH":
            if self.mode == "stall_fetch":
                writer.write(b"* 1 FETCH (UID 1 FLAGS () RFC822.SIZE 100 BODY[HEADER] {500}\r\nFrom: a@b")
                await writer.drain()
                await reader.read()  # silent until the client hangs up
                return False
            if self.mode == "huge_literal":
                say(b"* 1 FETCH (UID 1 BODY[HEADER] {900000000000}")
                await writer.drain()
                await reader.read()
                return False
            self._fetch(tag, rest, say)
        elif command == "IDLE":
            say(b"+ idling")
            await writer.drain()
            if self.mode == "bye_idle":
                await asyncio.sleep(0.3)
                say(b"* BYE going away in the middle of IDLE")
                await writer.drain()
                return False
            done = await reader.readline()
            if not done:
                return False
            say(tag + b" OK idle done")
        elif command == "AUTHENTICATE" and self.mode == "sasl_loop":
            for _ in range(1000):  # challenge after challenge, never a verdict
                say(b"+ eyJzdGF0dXMiOiI0MDEifQ==")
                await writer.drain()
                if not await reader.readline():
                    return False
            return False
        elif command == "LOGOUT":
            say(b"* BYE bye", tag + b" OK done")
            await writer.drain()
            return False
        else:
            say(tag + b" BAD unknown command")
        await writer.drain()
        return True

    def _fetch(self, tag: bytes, rest: bytes, say: object) -> None:
        assert callable(say)
        parts = rest.split(b" ", 3)  # UID FETCH <set> (<items>)
        uids = _expand(parts[2].decode()) if len(parts) > 2 else []
        want_body = b"BODY.PEEK[]" in rest.upper()
        for uid in uids:
            if not 1 <= uid <= len(self.messages):
                continue
            raw = self.messages[uid - 1]
            end = raw.find(b"\r\n\r\n")
            section, data = (b"BODY[]", raw) if want_body else (b"BODY[HEADER]", raw[: end + 4])
            say(
                f'* {uid} FETCH (UID {uid} FLAGS () INTERNALDATE "22-Nov-2026 05:00:00 +0000" '
                f"RFC822.SIZE {len(raw)} ".encode()
                + section
                + b" {"
                + str(len(data)).encode()
                + b"}\r\n"
                + data
                + b")"
            )
        say(tag + b" OK done")


def _expand(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        if ":" in part:
            a, b = part.split(":")
            lo, hi = int(a), (10**9 if b == "*" else int(b))
            out.extend(range(min(lo, hi), min(max(lo, hi), 10_000) + 1))
        elif part.isdigit():
            out.append(int(part))
    return out


@dataclass
class HostileSmtp:
    mode: str = "421_close"
    port: int = 0
    connections: list[float] = field(default_factory=list)
    accepted: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> HostileSmtp:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(time.monotonic())
        bye = b"421 4.3.2 hostile.test service not available, closing transmission channel\r\n"
        try:
            if self.mode in ("421_at_mail", "421_on_reuse"):
                # 421_at_mail: 421 to the first MAIL FROM. 421_on_reuse: one mail accepted per
                # connection, 421 to the next MAIL FROM on it (a server ending an idle session).
                writer.write(b"220 hostile.test ESMTP\r\n")
                await writer.drain()
                mails = 0
                while line := await reader.readline():
                    verb = line.upper()
                    if verb.startswith((b"EHLO", b"HELO")):
                        writer.write(b"250-hostile.test\r\n250 8BITMIME\r\n")
                    elif verb.startswith(b"MAIL"):
                        if self.mode == "421_at_mail" or mails >= 1:
                            writer.write(bye)
                            await writer.drain()
                            return
                        mails += 1
                        writer.write(b"250 ok\r\n")
                    elif verb.startswith(b"DATA"):
                        writer.write(b"354 go ahead\r\n")
                        await writer.drain()
                        while (chunk := await reader.readline()) and chunk != b".\r\n":
                            pass
                        self.accepted += 1
                        writer.write(b"250 2.0.0 queued\r\n")
                    elif verb.startswith(b"QUIT"):
                        writer.write(b"221 bye\r\n")
                        await writer.drain()
                        return
                    else:
                        writer.write(b"250 ok\r\n")
                    await writer.drain()
                return
            writer.write(bye)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
