"""How the body backlog divides into passes, against the real Dovecot and FerretDB (Kafka-less recorder).

A backlog pass runs units back to back until its time is up or new mail waits; each pass starts with an
EXAMINE, which is what makes many short passes slow on a big Maildir. What must hold: mail that arrives
during the backlog ends the pass (Dovecot's EXISTS on a FETCH's completion) and is announced by the next
pass, before the backlog goes on; a pass out of time stops after its unit; no body is fetched twice and
every body is announced once, whatever the passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from contracts import Envelope
from contracts.messages import MessageReceived, MessageUpdated
from services.fetcher.imap.seqset import expand
from services.fetcher.sync.folder import FolderSync, PassResult, SyncTuning
from services.fetcher.sync.messages import FolderContext
from tests.integration.conftest import MailUser
from tests.integration.folder_kit import connect, seeded_inbox
from tests.integration.test_fetcher_initial_bodies import Recorder, spy_fetches
from tests.integration.test_fetcher_sync import append, mail

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]


class MailDuringBacklog(Recorder):
    """Delivers one more message (a second IMAP connection's APPEND) when the first body unit is
    announced. Blocking on purpose: nothing else runs meanwhile, so where the EXISTS shows is fixed."""

    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], ctx: FolderContext, deliver: Callable[[], None]
    ) -> None:
        super().__init__(db, ctx)
        self.deliver: Callable[[], None] | None = deliver

    async def publish_all(self, events: Sequence[Envelope[Any]]) -> None:
        if self.deliver and any(isinstance(e, MessageUpdated) for e in events):
            self.deliver()
            self.deliver = None
        await super().publish_all(events)


def body_uids(events: Sequence[Envelope[Any]]) -> list[int]:
    return [e.data.ref.uid for e in events if isinstance(e, MessageUpdated) and e.data.change == "body"]


async def headers_only(
    db: AsyncDatabase[dict[str, Any]], ctx: FolderContext, user: MailUser, port: int
) -> None:
    session = await connect(user, port)
    try:
        tuning = SyncTuning(backfill_days=None, fetch_chunk=50, bodies=False)
        assert (
            await FolderSync(ctx, db=db, publisher=Recorder(db, ctx), tuning=tuning).run_pass(session)
        ).received
    finally:
        await session.logout()


async def test_new_mail_ends_a_backlog_pass_and_is_announced_before_the_backlog_goes_on(  # type: ignore[no-untyped-def]
    mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    s = await seeded_inbox(mongo, mail_lab.imap_port, mail_user_factory("backlognew"), 20)
    user, port, tag, db, ctx = s.user, s.port, s.tag, s.db, s.ctx
    try:
        await headers_only(db, ctx, user, port)
        rec = MailDuringBacklog(db, ctx, lambda: append(user, port, [mail(99, tag)]))
        tuning = SyncTuning(
            backfill_days=None, fetch_chunk=50, body_chunk=2, body_pass_seconds=600, body_stores_in_flight=2
        )
        session = await connect(user, port)
        passes: list[PassResult] = []
        try:
            fs = FolderSync(ctx, db=db, publisher=rec, tuning=tuning)
            while not passes or passes[-1].more:
                passes.append(await fs.run_pass(session))
        finally:
            await session.logout()
        first, second = passes[0], passes[1]
        # Units of 2, newest first, two stored at once. The APPEND happens while unit 1 is announced,
        # which the pipeline waits for before storing unit 3, so by then at most 4 FETCHes were sent;
        # the completion of the next one carries the EXISTS: at most 5 of the 10 units in this pass.
        assert first.more and 2 <= first.bodies <= 10, [p.bodies for p in passes]
        assert second.received == 1, "the next pass announces the new mail"
        new = [e for e in rec.events if isinstance(e, MessageReceived)]
        assert [e.data.ref.uid for e in new] == [21] and not new[0].data.history
        uids = body_uids(rec.events)
        assert sorted(uids) == list(range(1, 22)) and len(uids) == 21, "every body once"
        # The new mail's body came before the rest of the backlog's.
        assert uids.index(21) == first.bodies
        assert rec.unstored == []
        assert await db.message_bodies.count_documents({"inbox_id": ctx.inbox_id}) == 21
    finally:
        await mongo.drop_database(db.name)


async def test_a_pass_out_of_time_stops_after_its_unit_and_the_next_goes_on(  # type: ignore[no-untyped-def]
    mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    s = await seeded_inbox(mongo, mail_lab.imap_port, mail_user_factory("backlogtime"), 7)
    user, port, db, ctx = s.user, s.port, s.db, s.ctx
    try:
        await headers_only(db, ctx, user, port)
        rec = Recorder(db, ctx)
        tuning = SyncTuning(backfill_days=None, fetch_chunk=50, body_chunk=2, body_pass_seconds=0)
        session = await connect(user, port)
        fetches: list[tuple[str, str]] = []
        spy_fetches(session, fetches)
        counts: list[int] = []
        try:
            fs = FolderSync(ctx, db=db, publisher=rec, tuning=tuning)
            while True:
                result = await fs.run_pass(session)
                counts.append(result.bodies)
                if not result.more:
                    break
        finally:
            await session.logout()
        assert counts == [2, 2, 2, 1], "one unit a pass once the time is up"
        assert any(items == "UID RFC822.SIZE" for _, items in fetches), "no header pass here: sizes asked"
        fetched = [u for s, items in fetches if "BODY.PEEK[]" in items for u in expand(s)]
        assert sorted(fetched) == list(range(1, 8)), "no body fetched twice"
        assert sorted(body_uids(rec.events)) == list(range(1, 8))
        cur = await db.sync_cursors.find_one({"_id": f"t1:{ctx.inbox_id}:INBOX"})
        assert cur is not None and cur["bodies_done"]
    finally:
        await mongo.drop_database(db.name)


async def test_the_backlog_after_the_header_pass_reuses_its_sizes_and_keys(  # type: ignore[no-untyped-def]
    mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    """The same worker goes from headers to bodies: no size FETCH, each body under the key its
    `message received` announced (a worker that did not see the headers asks: the test above)."""
    s = await seeded_inbox(mongo, mail_lab.imap_port, mail_user_factory("backloghints"), 7)
    user, port, db, ctx = s.user, s.port, s.db, s.ctx
    try:
        rec = Recorder(db, ctx)
        tuning = SyncTuning(backfill_days=None, fetch_chunk=3, body_chunk=2)
        session = await connect(user, port)
        fetches: list[tuple[str, str]] = []
        spy_fetches(session, fetches)
        try:
            result = await FolderSync(ctx, db=db, publisher=rec, tuning=tuning).run_pass(session)
        finally:
            await session.logout()
        assert result.received == result.bodies == 7 and not result.more
        assert not [items for _, items in fetches if items == "UID RFC822.SIZE"], fetches
        received = {
            e.data.ref.uid: e.data.ref.message_key for e in rec.events if isinstance(e, MessageReceived)
        }
        bodies = {
            e.data.ref.uid: e.data.ref.message_key
            for e in rec.events
            if isinstance(e, MessageUpdated) and e.data.change == "body"
        }
        assert bodies == received and sorted(received) == list(range(1, 8))
        assert rec.unstored == []
        for key in received.values():
            assert await db.message_bodies.find_one({"_id": f"{ctx.doc_id(key)}:0"}, {"_id": 1}) is not None
    finally:
        await mongo.drop_database(db.name)
