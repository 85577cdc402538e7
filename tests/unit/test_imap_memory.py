"""What an idle IMAP connection keeps in memory: the framer drops consumed bytes, sessions to one
server share their capability set."""

from __future__ import annotations

import asyncio

from services.fetcher.imap.protocol import ResponseFramer
from services.fetcher.imap.session import ImapSession


def test_framer_keeps_no_bytes_once_every_response_is_complete() -> None:
    f = ResponseFramer()
    out = f.feed(b"* OK [CAPABILITY IMAP4rev1] hi\r\n* 3 EXISTS\r\nM1 OK done\r\n")
    assert [r.text for r in out] == [b"* OK [CAPABILITY IMAP4rev1] hi", b"* 3 EXISTS", b"M1 OK done"]
    assert len(f._buf) == 0 and f.pending == 0


def test_framer_keeps_only_the_unfinished_response() -> None:
    f = ResponseFramer()
    assert f.feed(b"* 1 FETCH (UID 7 BODY[] {10}\r\n0123") == []
    assert f.pending == len(b"0123")  # the line before the literal is kept as a part already
    out = f.feed(b"456789)\r\n* 2 EXPUNGE\r\n* 4 EXI")
    assert [(r.text, r.literals) for r in out] == [
        (b"* 1 FETCH (UID 7 BODY[] {10})", (b"0123456789",)),
        (b"* 2 EXPUNGE", ()),
    ]
    assert bytes(f._buf[f._pos :]) == b"* 4 EXI"
    assert [r.text for r in f.feed(b"STS\r\n")] == [b"* 4 EXISTS"]
    assert len(f._buf) == 0


def test_framer_literal_split_at_the_buffer_reset() -> None:
    """A literal announced at the end of one read and delivered by the next survives the reset."""
    f = ResponseFramer()
    assert f.feed(b"* 1 FETCH (BODY[] {5}\r\n") == []
    assert f.feed(b"ab") == [] and f.feed(b"cde") == []
    assert [(r.text, r.literals) for r in f.feed(b")\r\n")] == [(b"* 1 FETCH (BODY[] {5})", (b"abcde",))]


async def test_sessions_to_one_server_share_one_capability_set() -> None:
    caps = b"IMAP4rev1 IDLE ENABLE QRESYNC CONDSTORE LITERAL+ SASL-IR ID NAMESPACE"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY " + caps + b"] ready\r\n")
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(script, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        a = await ImapSession.connect("127.0.0.1", port, "plain", connect_timeout=5)
        b = await ImapSession.connect("127.0.0.1", port, "plain", connect_timeout=5)
        assert a.capabilities == frozenset(caps.decode().upper().split())
        assert a.capabilities is b.capabilities
        a.abort()
        b.abort()
    finally:
        server.close()
