"""What an IDLE wake lets the next pass skip: the decision and the sorting of a `UID FETCH n:*` answer."""

from __future__ import annotations

import asyncio

from services.fetcher.imap.protocol import Untagged, Value
from services.fetcher.imap.session import ImapSession
from services.fetcher.sync.wake import plan_wake, sort_new_mail, wake_exists


def exists(n: int) -> Untagged:
    return Untagged("EXISTS", number=n)


def test_only_exists_above_the_known_count_is_new_mail() -> None:
    assert plan_wake([exists(11)], known_exists=10, limit=500) == "new_mail"
    assert plan_wake([exists(11), exists(12)], known_exists=10, limit=500) == "new_mail"
    assert wake_exists([exists(11), exists(12)]) == 12


def test_anything_but_exists_or_no_wake_needs_the_full_pass() -> None:
    assert plan_wake(None, known_exists=10, limit=500) == "full"  # no IDLE since the last pass
    assert plan_wake([], known_exists=10, limit=500) == "full"  # IDLE restart: time ran out
    for other in (
        Untagged("EXPUNGE", number=3),
        Untagged("FETCH", number=3, values=[["UID", 3, "FLAGS", ["\\Seen"]]]),
        Untagged("VANISHED", values=["4:5"]),
    ):
        assert plan_wake([exists(11), other], known_exists=10, limit=500) == "full"
    assert plan_wake([Untagged("EXISTS")], known_exists=10, limit=500) == "full"  # no number: garbled


def test_a_count_already_known_needs_nothing_and_a_flood_the_chunked_full_pass() -> None:
    assert plan_wake([exists(10)], known_exists=10, limit=500) == "nothing"
    assert plan_wake([exists(9)], known_exists=10, limit=500) == "nothing"
    assert plan_wake([exists(511)], known_exists=10, limit=500) == "full"
    assert plan_wake([exists(510)], known_exists=10, limit=500) == "new_mail"


def item(uid: int, *, header: bool = True) -> dict[str, Value]:
    out: dict[str, Value] = {"UID": uid, "FLAGS": []}
    if header:
        out["BODY[HEADER]"] = b"Subject: x\r\n\r\n"
    return out


def test_new_mail_is_what_is_above_the_cursor_in_uid_order() -> None:
    got = sort_new_mail([item(12), item(11)], uidnext=11)
    assert [m["UID"] for m in got.messages] == [11, 12] and not got.stray


def test_star_answers_the_last_message_when_nothing_is_new() -> None:
    got = sort_new_mail([item(10)], uidnext=11)
    assert got.messages == [] and not got.stray


def test_an_unsolicited_flag_change_in_the_answer_is_stray() -> None:
    # A flag change on an old message, and one on the new message itself, told in the middle of FETCH.
    got = sort_new_mail([item(3, header=False), item(11), item(11, header=False)], uidnext=11)
    assert [m["UID"] for m in got.messages] == [11] and "BODY[HEADER]" in got.messages[0]
    assert got.stray


async def test_the_session_hands_what_ended_idle_to_one_pass_only() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        tag = (await reader.readline()).split(b" ", 1)[0]
        writer.write(b"+ idling\r\n* 4 EXISTS\r\n")
        assert await reader.readline() == b"DONE\r\n"
        writer.write(tag + b" OK Idle completed.\r\n")
        tag = (await reader.readline()).split(b" ", 1)[0]
        writer.write(b"+ idling\r\n")
        assert await reader.readline() == b"DONE\r\n"
        writer.write(tag + b" OK Idle completed.\r\n")
        await writer.drain()

    server = await asyncio.start_server(script, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        s = await ImapSession.connect("127.0.0.1", port, "plain", connect_timeout=5)
        assert s.take_wake() is None
        await s.idle(10)
        wake = s.take_wake()
        assert wake is not None and [(u.kind, u.number) for u in wake] == [("EXISTS", 4)]
        assert s.take_wake() is None, "taken once"
        await s.idle(0.1)  # nothing happens: the restart case
        assert s.take_wake() == []
        s.abort()
    finally:
        server.close()
