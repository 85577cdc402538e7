"""The IMAP session's I/O rules against a scripted in-process server: read-only, IDLE watchdog."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from mailsync.inbox_record import InboxRecord
from services.fetcher.imap.session import ConnectionLost, Folder, ImapSession
from services.fetcher.sync.inbox import choose_folders

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | object"]


async def serve(script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]) -> AsyncIterator[int]:
    server = await asyncio.start_server(script, "127.0.0.1", 0)  # type: ignore[arg-type]
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def tagged(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    line = await reader.readline()
    tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
    return tag, rest


async def open_session(port: int) -> ImapSession:
    return await ImapSession.connect("127.0.0.1", port, "plain", connect_timeout=5)


GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n"


async def test_idle_wakes_on_exists_and_ends_with_done() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        tag, cmd = await tagged(reader)
        assert cmd == b"IDLE"
        writer.write(b"+ idling\r\n* OK Still here\r\n* 4 EXISTS\r\n* 1 RECENT\r\n")
        assert await reader.readline() == b"DONE\r\n"
        writer.write(tag + b" OK Idle completed.\r\n")
        await writer.drain()

    async for port in serve(script):
        s = await open_session(port)
        woke = await s.idle(10)
        assert [(u.kind, u.number) for u in woke] == [("EXISTS", 4)]
        s.abort()


async def test_idle_on_a_dead_connection_raises_instead_of_hanging() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        await tagged(reader)
        writer.write(b"+ idling\r\n")
        await reader.readline()  # DONE, never answered: a half-open connection
        await asyncio.sleep(5)

    async for port in serve(script):
        s = await open_session(port)
        with pytest.raises(ConnectionLost, match="DONE"):
            await s.idle(0.2, done_timeout=0.3)


async def test_bye_and_eof_are_connection_lost() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        await tagged(reader)
        writer.write(b"* BYE shutting down\r\n")
        await writer.drain()
        writer.close()

    async for port in serve(script):
        s = await open_session(port)
        with pytest.raises(ConnectionLost, match="BYE"):
            await s.noop()


async def test_session_refuses_anything_that_would_change_the_mailbox() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        await asyncio.sleep(1)

    async for port in serve(script):
        s = await open_session(port)
        for cmd in ("UID STORE 1 +FLAGS (\\Seen)", "EXPUNGE", "SELECT INBOX", "UID MOVE 1 Trash"):
            with pytest.raises(ValueError, match="never modifies"):
                await s._command(cmd)
        with pytest.raises(ValueError, match="PEEK"):
            await s.uid_fetch("1:5", "UID BODY[]")
        s.abort()


def _record(**sync: object) -> InboxRecord:
    return InboxRecord.model_validate(
        {
            "_id": "t:i",
            "tenant_id": "t",
            "inbox_id": "i",
            "owner_user_id": "u",
            "email": "a@x.test",
            "imap": {"host": "h", "port": 993, "security": "tls"},
            "smtp": {"host": "h", "port": 465, "security": "tls"},
            "imap_auth": {
                "kind": "password",
                "username": "a",
                "password": {"key_id": "k", "nonce": "", "ciphertext": ""},
            },
            "sync": sync,
        }
    )


def test_folder_choice_inbox_and_sent_or_gmail_all_mail() -> None:
    folders = [
        Folder("INBOX", frozenset(), "/"),
        Folder("Gesendet", frozenset({"\\Sent"}), "/"),
        Folder("[Gmail]/All Mail", frozenset({"\\All"}), "/"),
        Folder("Work", frozenset(), "/"),
    ]
    plain = frozenset({"IMAP4REV1", "IDLE"})
    assert choose_folders(_record(), folders, plain) == [("INBOX", False), ("Gesendet", True)]
    gmail = plain | {"X-GM-EXT-1"}
    assert choose_folders(_record(), folders, gmail) == [("[Gmail]/All Mail", False)]
    assert choose_folders(_record(folders=["Work", "Missing"]), folders, plain) == [("Work", False)]
