"""Initial sync with bodies in the same pass, against the real Dovecot, Kafka-less recorder and FerretDB.

The folder sync runs in-process on a real IMAP session. What must hold: every body is stored (the one
above the size cap flagged `too_large`, not fetched), each `message updated` (body) event is published
only once its body is stored and after the message's `message received`; a crash in the middle resumes
where the cursor stood and replays with the same event ids; no later pass fetches a body again; a
unit's bodies stay within the byte budget; a cursor whose headers went ahead without bodies gets its
bodies from the backlog.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from contracts import Envelope
from contracts.messages import MessageReceived, MessageUpdated
from services.fetcher.imap.seqset import expand
from services.fetcher.imap.session import ImapSession
from services.fetcher.sync import folder as folder_module
from services.fetcher.sync.folder import FolderSync, SyncTuning
from services.fetcher.sync.messages import FolderContext
from tests.integration.conftest import MailUser
from tests.integration.folder_kit import connect, inbox_context, seeded_inbox
from tests.integration.test_fetcher_sync import append, mail

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
CAP = 4000  # bytes: the one big message is above it


class Recorder:
    """Keeps what would go to Kafka; checks each body event's body is already stored; can fail once."""

    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], ctx: FolderContext, fail_on: int | None = None
    ) -> None:
        self.db, self.ctx, self.fail_on = db, ctx, fail_on
        self.calls = 0
        self.events: list[Envelope[Any]] = []
        self.unstored: list[int] = []

    async def publish_all(self, events: Sequence[Envelope[Any]]) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise ConnectionError("broker gone (test)")
        for e in events:
            if isinstance(e, MessageUpdated) and e.data.change == "body":
                doc_id = f"{self.ctx.doc_id(e.data.ref.message_key)}:0"
                if await self.db.message_bodies.find_one({"_id": doc_id}, {"_id": 1}) is None:
                    self.unstored.append(e.data.ref.uid)
        self.events.extend(events)


def big_mail(tag: str) -> bytes:
    head = (
        f"From: Big <big-{tag}@example.com>\r\nTo: someone@mailsync.test\r\nSubject: big\r\n"
        f"Message-ID: <{tag}-big@example.com>\r\n\r\n"
    )
    return head.encode() + (b"y" * 78 + b"\r\n") * (CAP // 80 + 10)


def spy_fetches(session: ImapSession, log: list[tuple[str, str]]) -> None:
    original = session.uid_fetch

    async def spy(uid_set: str, items: str, modifiers: str = "") -> Any:
        log.append((uid_set, items))
        return await original(uid_set, items, modifiers)

    session.uid_fetch = spy  # type: ignore[method-assign]


async def test_initial_sync_stores_bodies_in_the_same_pass_and_resumes_after_a_crash(  # type: ignore[no-untyped-def]
    mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser], monkeypatch: pytest.MonkeyPatch
) -> None:
    user = mail_user_factory("inlinebody")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    raws = [mail(i, tag) for i in range(11)]
    raws.insert(6, big_mail(tag))  # UID 7
    await asyncio.to_thread(append, user, port, raws)
    one = len(raws[0])
    # Units of at most two small bodies: the byte budget cuts the 5-message FETCH windows.
    monkeypatch.setattr(folder_module, "UNIT_BYTES", 2 * one + one // 2)
    db = mongo[f"test_inline_{tag}"]
    ctx = inbox_context(user, tag)
    tuning = SyncTuning(backfill_days=None, fetch_chunk=5, body_max_bytes=CAP, inline_bodies=True)
    try:
        crashed = Recorder(db, ctx, fail_on=4)  # the third unit's writes fail
        session = await connect(user, port)
        try:
            with pytest.raises(ConnectionError):
                await FolderSync(ctx, db=db, publisher=crashed, tuning=tuning).run_pass(session)
        finally:
            session.abort()
        cur = await db.sync_cursors.find_one({"_id": f"t1:{ctx.inbox_id}:INBOX"})
        assert cur is not None and not cur["initial_done"]
        assert 1 < cur["initial_below"] < 13, "the crash left the initial sync part-way"
        assert cur["bodies_below"] == cur["initial_below"], "bodies move with the headers"

        resumed = Recorder(db, ctx)
        session = await connect(user, port)
        fetches: list[tuple[str, str]] = []
        spy_fetches(session, fetches)
        try:
            fs = FolderSync(ctx, db=db, publisher=resumed, tuning=tuning)
            first = await fs.run_pass(session)
            assert first.initial_completed_now and not first.more
            body_fetches = [s for s, items in fetches if "BODY.PEEK[]" in items]
            assert body_fetches, "bodies came with the initial sync"
            assert all(len(expand(s)) <= 2 for s in body_fetches), body_fetches
            assert all(7 not in expand(s) for s in body_fetches), "the message over the cap is not fetched"
            fetches.clear()
            second = await fs.run_pass(session)
            assert (second.bodies, second.more) == (0, False)
            assert not [f for f in fetches if "BODY.PEEK[]" in f[1]], "no body is fetched twice"
        finally:
            await session.logout()

        cur = await db.sync_cursors.find_one({"_id": f"t1:{ctx.inbox_id}:INBOX"})
        assert cur is not None and cur["initial_done"] and cur["bodies_done"]
        assert resumed.unstored == [] and crashed.unstored == [], "a body event before its body"
        # Every message: one received id and one body id across both runs (a replay reuses them).
        events = crashed.events + resumed.events
        for kind in (MessageReceived, MessageUpdated):
            ids: dict[int, set[str]] = {}
            for e in events:
                if isinstance(e, kind):
                    ids.setdefault(e.data.ref.uid, set()).add(e.id)
            assert sorted(ids) == list(range(1, 13)), kind
            assert all(len(v) == 1 for v in ids.values()), kind
        # The body event of a message follows its received event.
        order = [(type(e).__name__, e.data.ref.uid) for e in resumed.events if hasattr(e.data, "ref")]
        for uid in {u for _, u in order}:
            kinds = [k for k, u in order if u == uid]
            if "MessageUpdated" in kinds and "MessageReceived" in kinds:
                assert kinds.index("MessageReceived") < kinds.index("MessageUpdated")
        bodies = [d async for d in db.message_bodies.find({"inbox_id": ctx.inbox_id})]
        assert len(bodies) == 12
        big = next(d for d in bodies if d.get("too_large"))
        assert big["size"] > CAP and "data" not in big
        small = [d for d in bodies if not d.get("too_large")]
        assert len(small) == 11 and all(bytes(d["data"]) in raws for d in small)
        assert sorted(d["snippet"] for d in small) == sorted(f"body {i}" for i in range(11))
    finally:
        await mongo.drop_database(db.name)


async def test_headers_synced_without_bodies_get_them_from_the_backlog(  # type: ignore[no-untyped-def]
    mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    s = await seeded_inbox(mongo, mail_lab.imap_port, mail_user_factory("backlogbody"), 7)
    user, port, db, ctx = s.user, s.port, s.db, s.ctx
    session = await connect(user, port)
    try:
        rec = Recorder(db, ctx)
        headers_only = SyncTuning(backfill_days=None, fetch_chunk=3, bodies=False)
        first = await FolderSync(ctx, db=db, publisher=rec, tuning=headers_only).run_pass(session)
        assert (first.received, first.bodies) == (7, 0)
        assert await db.message_bodies.count_documents({"inbox_id": ctx.inbox_id}) == 0
        with_bodies = SyncTuning(backfill_days=None, fetch_chunk=3, body_chunk=2, body_chunks_per_pass=2)
        fs = FolderSync(ctx, db=db, publisher=rec, tuning=with_bodies)
        passes, stored = 0, 0
        while True:
            result = await fs.run_pass(session)
            passes, stored = passes + 1, stored + result.bodies
            if not result.more:
                break
        assert stored == 7 and passes >= 2, "the backlog ran in bounded passes"
        assert rec.unstored == []
        assert await db.message_bodies.count_documents({"inbox_id": ctx.inbox_id, "n": 0}) == 7
    finally:
        await session.logout()
        await mongo.drop_database(db.name)


class FailOnBodyUnit(Recorder):
    """Fails when the n-th batch of body events is published (a crash in the backlog's store stage)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], ctx: FolderContext, n: int) -> None:
        super().__init__(db, ctx)
        self.n, self.body_batches = n, 0

    async def publish_all(self, events: Sequence[Envelope[Any]]) -> None:
        if any(isinstance(e, MessageUpdated) and e.data.change == "body" for e in events):
            self.body_batches += 1
            if self.body_batches == self.n:
                raise ConnectionError("broker gone (test)")
        await super().publish_all(events)


async def test_backlog_units_stay_within_the_byte_budget_and_resume_after_a_crash(  # type: ignore[no-untyped-def]
    mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser], monkeypatch: pytest.MonkeyPatch
) -> None:
    user = mail_user_factory("backlogunits")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    raws = [mail(i, tag) for i in range(9)]
    raws.insert(4, big_mail(tag))  # UID 5
    await asyncio.to_thread(append, user, port, raws)
    one = len(raws[0])
    monkeypatch.setattr(folder_module, "UNIT_BYTES", 2 * one + one // 2)  # two small bodies a unit
    db = mongo[f"test_units_{tag}"]
    ctx = inbox_context(user, tag)
    tuning = SyncTuning(backfill_days=None, fetch_chunk=5, body_max_bytes=CAP, body_chunk=5)
    try:
        crashed = FailOnBodyUnit(db, ctx, n=3)
        session = await connect(user, port)
        try:
            with pytest.raises(ConnectionError):
                fs = FolderSync(ctx, db=db, publisher=crashed, tuning=tuning)
                while (await fs.run_pass(session)).more:
                    pass
        finally:
            session.abort()
        cur = await db.sync_cursors.find_one({"_id": f"t1:{ctx.inbox_id}:INBOX"})
        assert cur is not None and cur["initial_done"] and not cur["bodies_done"]
        assert 1 < cur["bodies_below"] <= 11, "the crash left the backlog part-way"

        resumed = Recorder(db, ctx)
        session = await connect(user, port)
        fetches: list[tuple[str, str]] = []
        spy_fetches(session, fetches)
        try:
            fs = FolderSync(ctx, db=db, publisher=resumed, tuning=tuning)
            while (await fs.run_pass(session)).more:
                pass
        finally:
            await session.logout()
        body_fetches = [expand(s) for s, items in fetches if "BODY.PEEK[]" in items]
        assert body_fetches and all(len(u) <= 2 for u in body_fetches), body_fetches
        assert all(5 not in u for u in body_fetches), "the message over the cap is not fetched"
        fetched = [uid for u in body_fetches for uid in u]
        assert len(fetched) == len(set(fetched)), "no body fetched twice after the resume"
        assert all(uid < cur["bodies_below"] for uid in fetched), "stored units are not fetched again"
        assert resumed.unstored == [] and crashed.unstored == []
        ids: dict[int, set[str]] = {}
        for e in crashed.events + resumed.events:
            if isinstance(e, MessageUpdated) and e.data.change == "body":
                ids.setdefault(e.data.ref.uid, set()).add(e.id)
        assert sorted(ids) == list(range(1, 11)) and all(len(v) == 1 for v in ids.values())
        bodies = [d async for d in db.message_bodies.find({"inbox_id": ctx.inbox_id})]
        assert len(bodies) == 10 and sum(1 for d in bodies if d.get("too_large")) == 1
        cur = await db.sync_cursors.find_one({"_id": f"t1:{ctx.inbox_id}:INBOX"})
        assert cur is not None and cur["bodies_done"]
    finally:
        await mongo.drop_database(db.name)
