"""The linker's work on one message or one directory change: rules from the pure modules, state in a
`LinkStore`, events through an outbox kept on the message's own document.

Every emitted event is first written into `outbox` in the same single-document update that records the
new state, then published, then removed from the outbox. A crash between the steps leaves the event in
the outbox; the redelivered input finds it there and publishes it again (same deterministic id).
State changes use compare-and-set on `rev`, so a message being linked and a relink caused by a
directory change cannot overwrite each other with stale links.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from contracts import Envelope, parse_event
from contracts.common import Address, MessageRef
from contracts.links import (
    AutoReplyReceived,
    AutoReplyReceivedData,
    BounceReceived,
    BounceReceivedData,
    ContactDiscovered,
    ContactDiscoveredData,
    LinkChanged,
    LinkChangedData,
    LinkRole,
    MessageLinked,
    MessageLinkedData,
    RecordLink,
    ReplyReceived,
    ReplyReceivedData,
)
from contracts.messages import DeliveryReport, MessageDeleted, MessageReceived
from contracts.sending import MessageSent
from mailsync import metrics
from mailsync.outbound_ids import send_id_from_message_id
from mailsync.store import Document

from . import discovery_rules, link_rules, reply_rules, threading_rules
from .directory import AddressChange
from .link_rules import RecordRef
from .store import InboxView, LinkStore

log = logging.getLogger("mailsync.linker")

Publish = Callable[[Sequence[Envelope[Any]]], Awaitable[None]]
# Context (e.g. a tracing span) for the work on one input event, and a publisher sending each input's
# events inside its context (`EventPublisher.publish_grouped`).
Trace = Callable[[Envelope[Any]], AbstractContextManager[Any]]
PublishGrouped = Callable[
    [Sequence[tuple[AbstractContextManager[Any], Sequence[Envelope[Any]]]]], Awaitable[None]
]
MAX_CAS_ATTEMPTS = 20


class Lookups(Protocol):
    """What deciding a message reads: the store itself, or a batch's view fetched for many at once."""

    async def inbox(self, tenant: str, inbox_id: str) -> InboxView | None: ...
    async def records_for(self, tenant: str, emails: Collection[str]) -> dict[str, list[RecordRef]]: ...
    async def by_message_ids(self, tenant: str, message_ids: Collection[str]) -> list[Document]: ...
    async def sent_in_thread(self, tenant: str, thread_id: str) -> Document | None: ...
    async def claim_contact(self, tenant: str, email: str, doc_id: str) -> bool: ...


@dataclass
class MessageFacts:
    """One email as the linker sees it, from a `message received` or a `message sent` event."""

    tenant_id: str
    inbox_id: str
    message_key: str
    direction: str
    history: bool
    ref: MessageRef | None = None
    fetcher_key: str | None = None
    send_id: str | None = None
    message_id: str | None = None
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    subject: str | None = None
    from_: list[Address] = field(default_factory=list)
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    date: datetime | None = None
    gmail_thread_id: str | None = None
    auto_submitted: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    delivery_report: DeliveryReport | None = None
    has_attachments: bool = False
    body_stored: bool = False
    event: Envelope[Any] | None = None  # the input it came from (tracing)

    @property
    def doc_id(self) -> str:
        return f"{self.tenant_id}:{self.inbox_id}:{self.message_key}"

    def by_role(self) -> dict[LinkRole, list[Address]]:
        return {
            "sender": self.from_,
            "recipient": self.to,
            "cc": self.cc,
            "bcc": self.bcc,
            "reply_to": self.reply_to,
        }


def send_key(send_id: str) -> str:
    """The linker's key for mail mailsync sent: the send event and its Sent-folder copy are one email."""
    return f"send:{send_id}"


def facts_from_received(event: MessageReceived) -> MessageFacts:
    d = event.data
    send_id = d.mailsync_send_id or (
        send_id_from_message_id(d.message_id) if d.direction == "outbound" else None
    )
    return MessageFacts(
        tenant_id=event.tenant_id,
        inbox_id=event.inbox_id or "",
        message_key=send_key(send_id) if send_id else d.ref.message_key,
        fetcher_key=d.ref.message_key,
        direction=d.direction,
        history=d.history,
        ref=d.ref,
        send_id=send_id,
        message_id=threading_rules.clean_id(d.message_id) if d.message_id else None,
        in_reply_to=d.in_reply_to,
        references=d.references,
        subject=d.subject,
        from_=d.from_,
        to=d.to,
        cc=d.cc,
        bcc=d.bcc,
        reply_to=d.reply_to,
        date=d.date or d.internal_date,
        gmail_thread_id=d.gmail_thread_id,
        auto_submitted=d.auto_submitted,
        headers=d.headers,
        content_type=d.content_type,
        delivery_report=d.delivery_report,
        has_attachments=d.has_attachments,
        body_stored=d.body_stored,
        event=event,
    )


def facts_from_sent(event: MessageSent) -> MessageFacts:
    d = event.data
    to = d.to
    if not (d.to or d.cc or d.bcc):  # a sender that only reports accepted recipients
        to = [Address(email=a) for a in d.accepted_recipients]
    return MessageFacts(
        tenant_id=event.tenant_id,
        inbox_id=event.inbox_id or "",
        message_key=send_key(d.send_id),
        direction="outbound",
        history=False,
        send_id=d.send_id,
        message_id=threading_rules.clean_id(d.message_id),
        in_reply_to=d.in_reply_to,
        references=d.references,
        subject=d.subject,
        from_=[d.from_] if d.from_ else [],
        to=to,
        cc=d.cc,
        bcc=d.bcc,
        date=event.time,
        event=event,
    )


def _addr(a: Address) -> Document:
    return {"name": a.name, "email": a.email}


def _links(doc: Document) -> list[RecordLink]:
    return [RecordLink.model_validate(x) for x in doc.get("links") or []]


class Linker:
    def __init__(
        self,
        store: LinkStore,
        publish: Publish,
        *,
        source: str = "/mailsync/linker",
        plus_addressing: Callable[[str], bool] = lambda tenant: False,
        trace: Trace | None = None,
        publish_grouped: PublishGrouped | None = None,
    ) -> None:
        self.store = store
        self._publish = publish
        self._source = source
        self._plus = plus_addressing
        self._trace = trace
        self._publish_grouped = publish_grouped

    # ---- inputs -------------------------------------------------------------------------------------

    async def on_message_event(self, event: Envelope[Any]) -> None:
        if isinstance(event, MessageReceived):
            await self.handle(facts_from_received(event))
        elif isinstance(event, MessageDeleted):
            await self.handle_deleted(event)

    async def on_send_event(self, event: Envelope[Any]) -> None:
        if isinstance(event, MessageSent):
            await self.handle(facts_from_sent(event))

    async def handle(self, facts: MessageFacts) -> None:
        inbox = await self.store.inbox(facts.tenant_id, facts.inbox_id)
        own = link_rules.own_addresses(inbox.email, inbox.aliases) if inbox else set()
        parts = link_rules.participants(facts.by_role(), own)
        doc = await self.store.get_message(facts.doc_id)
        if doc is None:
            owner = inbox.owner_user_id if inbox else None
            await self.store.mark_seen([facts.doc_id])  # so a batch sends a later copy this way too
            await self.store.insert_message(self._new_doc(facts, parts, owner))
        else:
            await self._merge(doc, facts, parts)
        # The address → messages index (with base addresses of plus-addresses) before links are computed:
        # a directory change from now on finds this message.
        await self.store.index_participants(
            facts.tenant_id, facts.doc_id, link_rules.lookup_keys(parts, plus_addressing=True)
        )
        await self.settle(facts.doc_id, cause="message.received")

    async def handle_deleted(self, event: MessageDeleted) -> None:
        # Only the copy the document points at: a move files the message elsewhere under the same key.
        doc_id = f"{event.tenant_id}:{event.inbox_id or ''}:{event.data.ref.message_key}"
        doc = await self.store.get_message(doc_id)
        if doc is not None and doc.get("ref") == event.data.ref.model_dump(mode="json"):
            await self.store.patch_message(doc_id, {"deleted": True})

    async def relink(self, change: AddressChange) -> int:
        """Relink the history of the changed addresses; returns how many messages were looked at."""
        doc_ids = await self.store.messages_with(change.tenant_id, change.emails)
        for doc_id in doc_ids:
            if not await self.settle(doc_id, cause=change.cause):
                # Indexed but not stored: a batch is linking it now, maybe with a directory read from
                # before this change. It reads this note after storing; settling again covers a store
                # that happened in between.
                await self.store.note_relink(doc_id, change.cause)
                await self.settle(doc_id, cause=change.cause)
        return len(doc_ids)

    # ---- batches ------------------------------------------------------------------------------------

    async def on_message_events(self, events: Sequence[Envelope[Any]]) -> None:
        """A batch of `mailsync.messages.v1` events, in topic order (a repeated event id counts once)."""
        items: list[MessageFacts | MessageDeleted] = []
        for event in _unique(events):
            if isinstance(event, MessageReceived):
                items.append(facts_from_received(event))
            elif isinstance(event, MessageDeleted):
                items.append(event)
        await self.handle_batch(items)

    async def on_send_events(self, events: Sequence[Envelope[Any]]) -> None:
        """A batch of `mailsync.send.events.v1` events, in topic order."""
        await self.handle_batch([facts_from_sent(e) for e in _unique(events) if isinstance(e, MessageSent)])

    async def handle_batch(self, items: Sequence[MessageFacts | MessageDeleted]) -> None:
        """Link many messages with a few queries per run of new messages instead of ~10 per message.

        Items are handled in order. New messages are decided together (`_run`); a message stored before
        (another copy, the Sent copy of a send, a redelivery after a crash) or a deletion takes the
        single-message path between runs, so each inbox's events keep their order. A redelivered message
        that is stored and settled already changes nothing: the events of its interrupted batch are
        published again from that batch's outbox.
        """
        if not items:
            return
        started = time.perf_counter()
        facts = [i for i in items if isinstance(i, MessageFacts)]
        seen = await self.store.mark_seen([f.doc_id for f in facts])
        stored: dict[str, Document] = {}
        if seen:
            stored = await self.store.get_messages(seen)
            await self._publish_pending(seen, stored)
        run: list[MessageFacts] = []
        firsts: set[str] = set()
        for item in items:
            if isinstance(item, MessageDeleted):
                await self._run(run)
                run = []
                await self.handle_deleted(item)
                continue
            doc = stored.get(item.doc_id)
            new = item.doc_id not in firsts and doc is None  # seen before but not stored: a crash between
            firsts.add(item.doc_id)
            if new:
                run.append(item)
            elif doc is not None and (sets := await self._settled_merge(doc, item)) is not None:
                if sets:  # only where it is filed (a move, a resync): no decision depends on it
                    await self.store.patch_message(doc["_id"], sets)
            else:
                await self._run(run)
                run = []
                with self._context(item):
                    await self.handle(item)
        await self._run(run)
        took = time.perf_counter() - started
        log.info(
            "linked a batch", extra={"items": len(items), "seen_before": len(seen), "seconds": round(took, 3)}
        )

    def _context(self, f: MessageFacts) -> AbstractContextManager[Any]:
        return self._trace(f.event) if self._trace is not None and f.event is not None else nullcontext()

    async def _settled_merge(self, doc: Document, f: MessageFacts) -> Document | None:
        """For a stored, settled message: what this copy adds that no decision depends on (nothing for a
        redelivery; the new folder after a move or a resync). None when it must be settled again: it is
        not settled yet, has events pending, or this copy names new participants."""
        settled = doc.get("link_version") is not None and doc.get("thread_id") is not None
        if not settled or doc.get("signal") is None or not doc.get("discovery_done") or doc.get("outbox"):
            return None
        sets = self._merge_sets(doc, f, await self._participants(f))
        return None if "participants" in sets else sets

    async def _participants(self, f: MessageFacts) -> dict[str, link_rules.Participant]:
        inbox = await self.store.inbox(f.tenant_id, f.inbox_id)
        own = link_rules.own_addresses(inbox.email, inbox.aliases) if inbox else set()
        return link_rules.participants(f.by_role(), own)

    async def _publish_pending(self, doc_ids: Collection[str], stored: Collection[str]) -> None:
        """Publish the outboxes of interrupted batches that hold these messages (same event ids). A batch
        interrupted before it stored its messages is dropped instead: they are being decided again."""
        for box in await self.store.pending_outboxes(doc_ids):
            if any(i in stored for i in box["doc_ids"]):
                await self._publish([parse_event(e["event"]) for e in box["events"]])
            await self.store.drop_outbox(box["_id"])

    async def _run(self, run: Sequence[MessageFacts]) -> None:
        """Decide a run of new messages from one prefetched view, then store them with bulk inserts.

        Order of writes: participants index, (decide), contact claims, the run's outbox, thread facts, the
        messages, publish, drop the outbox. A crash at any point is repaired by the redelivery (see
        handle_batch): before the messages are stored it decides them again, after it only republishes.
        """
        if not run:
            return
        store = self.store
        decided, decisions, view = await self._decide_run(run)
        lost = await view.store_claims()
        if lost:  # another message proposed that contact first (a concurrent batch)
            decided = [(d, [e for e in evs if not _lost_contact(e, lost)]) for d, evs in decided]
        events = [e for _, evs in decided for e in evs]
        batch_id = uuid.uuid4().hex
        if events:
            await store.put_outbox(batch_id, [d["_id"] for d, _ in decided], [self._out(e) for e in events])
        # Thread facts before the messages: a redelivery finds the messages settled and changes nothing.
        await store.note_threads([d for d, _ in decided])
        await store.track_threads(view.tracked)
        clashes = await store.insert_messages([d for d, _ in decided])
        for (d, _), sets in zip(decided, decisions, strict=True):
            if d["_id"] not in clashes:
                metrics.observe_linked(sets, first=True)
        # Messages stored meanwhile by the single-message path are left to that path (below).
        groups = [
            (f, evs) for f, (d, evs) in zip(run, decided, strict=True) if evs and d["_id"] not in clashes
        ]
        if self._publish_grouped is not None:
            await self._publish_grouped([(self._context(f), evs) for f, evs in groups])
        else:
            await self._publish([e for _, evs in groups for e in evs])
        if events:
            await store.drop_outbox(batch_id)
        notes = await store.relink_notes([d["_id"] for d, _ in decided])
        for note in notes:  # a directory change met these messages before they were stored
            await self.settle(note["doc_id"], cause=note["cause"])
        await store.drop_relink_notes([n["_id"] for n in notes])
        for f in run:
            if f.doc_id in clashes:
                with self._context(f):
                    await self.handle(f)

    async def _decide_run(
        self, run: Sequence[MessageFacts]
    ) -> tuple[list[tuple[Document, list[Envelope[Any]]]], list[Document], BatchView]:
        """The run's new message documents as settled, with their events and the `sets` of each."""
        store = self.store
        prepared: list[tuple[MessageFacts, dict[str, link_rules.Participant], Document]] = []
        for f in run:
            inbox = await store.inbox(f.tenant_id, f.inbox_id)
            own = link_rules.own_addresses(inbox.email, inbox.aliases) if inbox else set()
            parts = link_rules.participants(f.by_role(), own)
            prepared.append((f, parts, self._new_doc(f, parts, inbox.owner_user_id if inbox else None)))
        # The address → messages index first: a directory change from now on finds these messages.
        await store.index_participants_many(
            [(f.tenant_id, f.doc_id, link_rules.lookup_keys(p, plus_addressing=True)) for f, p, _ in prepared]
        )
        view = await BatchView.fetch(store, [(doc, parts) for _, parts, doc in prepared], self._plus)
        decided: list[tuple[Document, list[Envelope[Any]]]] = []
        decisions: list[Document] = []
        for i, (_, _, doc) in enumerate(prepared):
            if i % 100 == 99:
                await asyncio.sleep(0)  # let Kafka heartbeats run during a long run
            sets, events, retarget = await self._decide(doc, "message.received", view)
            final = {**doc, **sets, "rev": doc["rev"] + 1}
            if retarget:
                await view.retarget(final["tenant_id"], *retarget)
            view.learn(final)
            decided.append((final, events))
            decisions.append(sets)
        return decided, decisions, view

    # ---- state --------------------------------------------------------------------------------------

    def _new_doc(
        self, f: MessageFacts, parts: dict[str, link_rules.Participant], owner: str | None
    ) -> Document:
        return {
            "_id": f.doc_id,
            "tenant_id": f.tenant_id,
            "inbox_id": f.inbox_id,
            "owner_user_id": owner,
            "message_key": f.message_key,
            "fetcher_keys": [f.fetcher_key] if f.fetcher_key else [],
            "ref": f.ref.model_dump(mode="json") if f.ref else None,
            "send_id": f.send_id,
            "message_id": f.message_id,
            "in_reply_to": [threading_rules.clean_id(x) for x in f.in_reply_to],
            "references": [threading_rules.clean_id(x) for x in f.references],
            "direction": f.direction,
            "history": f.history,
            "subject": f.subject,
            "from": [_addr(a) for a in f.from_],
            "to": [_addr(a) for a in f.to],
            "cc": [_addr(a) for a in f.cc],
            "bcc": [_addr(a) for a in f.bcc],
            "reply_to": [_addr(a) for a in f.reply_to],
            "date": f.date,
            "sort_at": f.date or datetime.now(UTC),
            "gmail_thread_id": f.gmail_thread_id,
            "auto_submitted": f.auto_submitted,
            "headers": f.headers,
            "content_type": f.content_type,
            "delivery_report": f.delivery_report.model_dump(mode="json") if f.delivery_report else None,
            "has_attachments": f.has_attachments,
            "body_stored": f.body_stored,
            "participants": [{"email": p.email, "name": p.name, "roles": p.roles} for p in parts.values()],
            "links": None,
            "record_ids": [],
            "link_version": None,
            "ambiguous_addresses": [],
            "thread_id": None,
            "signal": None,
            "discovery_done": False,
            "deleted": False,
            "rev": 0,
            "outbox": [],
        }

    async def _merge(self, doc: Document, f: MessageFacts, parts: dict[str, link_rules.Participant]) -> None:
        """A message seen again (another folder, the Sent copy of a send): learn what is new."""
        sets = self._merge_sets(doc, f, parts)
        if sets:
            await self.store.patch_message(doc["_id"], sets)

    @staticmethod
    def _merge_sets(doc: Document, f: MessageFacts, parts: dict[str, link_rules.Participant]) -> Document:
        sets: Document = {}
        if f.ref is not None and doc.get("ref") != f.ref.model_dump(mode="json"):
            sets["ref"] = f.ref.model_dump(mode="json")
            sets["deleted"] = False
        if f.fetcher_key and f.fetcher_key not in doc.get("fetcher_keys", []):
            sets["fetcher_keys"] = [*doc.get("fetcher_keys", []), f.fetcher_key]
        if f.body_stored and not doc.get("body_stored"):
            sets["body_stored"] = True
        known = {p["email"]: p for p in doc.get("participants", [])}
        merged = dict(known)
        for email, p in parts.items():
            old = merged.get(email)
            if old is None:
                merged[email] = {"email": email, "name": p.name, "roles": p.roles}
            elif set(p.roles) - set(old["roles"]):
                roles = [r for r in link_rules.ROLE_ORDER if r in set(old["roles"]) | set(p.roles)]
                merged[email] = {**old, "roles": roles}
        if merged != known:
            sets["participants"] = list(merged.values())
        for name in ("subject", "date", "in_reply_to", "references", "gmail_thread_id"):
            value = getattr(f, name)
            if value and not doc.get(name):
                sets[name] = value
        return sets

    async def settle(self, doc_id: str, *, cause: str) -> bool:
        """Bring one message's links, thread, signals and discovery up to date, then flush its outbox.

        Returns False when the message is not stored (yet)."""
        for _ in range(MAX_CAS_ATTEMPTS):
            doc = await self.store.get_message(doc_id)
            if doc is None:
                return False
            pending: list[Document] = list(doc.get("outbox") or [])
            sets, decided, retarget = await self._decide(doc, cause, self.store)
            events = [self._out(e) for e in decided]
            if not sets and not events:
                break
            if await self.store.update_message(doc_id, doc["rev"], sets, events):
                metrics.observe_linked(sets, first=doc.get("link_version") is None)
                if "thread_id" in sets:
                    await self.store.note_threads([{**doc, **sets}])
                if retarget:
                    await self.store.retarget_thread(doc["tenant_id"], *retarget)
                pending += events
                break
        else:
            msg = f"message {doc_id} kept changing under {MAX_CAS_ATTEMPTS} attempts"
            raise RuntimeError(msg)
        thread_id = sets.get("thread_id") or doc.get("thread_id")
        if doc.get("send_id") and thread_id:  # idempotent; repeated so a crash cannot lose it
            await self.store.track_thread(doc["tenant_id"], thread_id, doc)
        await self.flush(doc_id, pending)
        return True

    async def flush(self, doc_id: str, outbox: list[Document]) -> None:
        """Publish outbox entries, then remove them (a concurrent flush may publish them too: same ids)."""
        if not outbox:
            return
        await self._publish([parse_event(e["event"]) for e in outbox])
        await self.store.pull_outbox(doc_id, outbox)

    def _out(self, event: Envelope[Any]) -> Document:
        return {"id": event.id, "event": event.model_dump_json()}

    async def _decide(
        self, doc: Document, cause: str, look: Lookups
    ) -> tuple[Document, list[Envelope[Any]], tuple[str, str] | None]:
        tenant, inbox_id = doc["tenant_id"], doc["inbox_id"]
        plus = self._plus(tenant)
        parts = {
            p["email"]: link_rules.Participant(p["email"], p.get("name"), list(p["roles"]))
            for p in doc.get("participants", [])
        }
        directory = await look.records_for(tenant, link_rules.lookup_keys(parts, plus_addressing=plus))
        links, ambiguous = link_rules.compute_links(parts, directory, plus_addressing=plus)
        version = link_rules.link_version(links)
        sets: Document = {}
        events: list[Envelope[Any]] = []
        subject = doc["message_key"]
        ref = MessageRef.model_validate(doc["ref"]) if doc.get("ref") else None

        old_version = doc.get("link_version")
        if old_version != version:
            sets.update(
                links=[lk.model_dump(mode="json") for lk in links],
                record_ids=sorted({lk.record_id for lk in links}),
                link_version=version,
                ambiguous_addresses=ambiguous,
            )
            if old_version is None:
                if links:
                    linked = MessageLinkedData(
                        message_key=doc["message_key"],
                        ref=ref,
                        link_version=version,
                        links=links,
                        ambiguous_addresses=ambiguous,
                        direction=doc["direction"],
                    )
                    events.append(self._build(MessageLinked, linked, tenant, inbox_id, subject))
            else:
                added, removed = link_rules.diff_links(_links(doc), links)
                change = LinkChangedData(
                    message_key=doc["message_key"],
                    link_version=version,
                    added=added,
                    removed=removed,
                    cause=cause,
                )
                events.append(self._build(LinkChanged, change, tenant, inbox_id, subject))

        retarget: tuple[str, str] | None = None
        thread_id = doc.get("thread_id")
        if thread_id is None:
            refs = reply_rules.referenced_ids(doc.get("in_reply_to", []), doc.get("references", []))
            known = {d["message_id"]: d["thread_id"] for d in await look.by_message_ids(tenant, refs)}
            known = {k: v for k, v in known.items() if v}
            thread_id = threading_rules.thread_id(
                gmail_thread_id=doc.get("gmail_thread_id"),
                message_id=doc.get("message_id"),
                message_key=doc["message_key"],
                in_reply_to=doc.get("in_reply_to", []),
                references=doc.get("references", []),
                known_threads=known,
            )
            sets["thread_id"] = thread_id
            mine = threading_rules.self_thread(doc.get("message_id"))
            if mine and mine != thread_id:
                retarget = (mine, thread_id)  # children that arrived first used this message as their root

        if doc.get("signal") is None:
            signal, signal_events = await self._signals(doc, thread_id, links, ref, look)
            sets["signal"] = signal
            events += signal_events

        if not doc.get("discovery_done"):
            events += await self._discover(doc, parts, directory, plus, look)
            sets["discovery_done"] = True
        return sets, events, retarget

    def _build(self, cls: Any, data: Any, tenant: str, inbox_id: str, subject: str) -> Envelope[Any]:
        event: Envelope[Any] = cls.build(
            data=data, tenant_id=tenant, source=self._source, inbox_id=inbox_id, subject=subject
        )
        return event

    async def _original(self, doc: Document, thread_id: str, look: Lookups) -> tuple[str | None, str | None]:
        """The CRM's message this one answers: (Message-ID, send id), or (None, None)."""
        tenant = doc["tenant_id"]
        refs = reply_rules.referenced_ids(doc.get("in_reply_to", []), doc.get("references", []))
        for mid in refs:  # our Message-ID token: recognised even before the send event arrives
            sid = send_id_from_message_id(mid)
            if sid:
                return mid, sid
        sent = {d["message_id"]: d for d in await look.by_message_ids(tenant, refs) if d.get("send_id")}
        for mid in refs:
            if mid in sent:
                return mid, sent[mid]["send_id"]
        tracked = await look.sent_in_thread(tenant, thread_id)
        if tracked is not None and tracked["_id"] != doc["_id"]:
            return tracked.get("message_id") or (refs[0] if refs else None), tracked.get("send_id")
        return None, None

    async def _signals(
        self, doc: Document, thread_id: str, links: list[RecordLink], ref: MessageRef | None, look: Lookups
    ) -> tuple[str, list[Envelope[Any]]]:
        if doc.get("history"):
            return "history", []  # automations must not act on old mail found by a backfill or resync
        if doc["direction"] != "inbound" or ref is None:
            return "outbound", []
        tenant, inbox_id, subject = doc["tenant_id"], doc["inbox_id"], doc["message_key"]
        report = DeliveryReport.model_validate(doc["delivery_report"]) if doc.get("delivery_report") else None
        senders = [a["email"] for a in doc.get("from", [])]
        cls = reply_rules.classify(
            from_emails=senders,
            subject=doc.get("subject"),
            auto_submitted=doc.get("auto_submitted"),
            headers=doc.get("headers") or {},
            content_type=doc.get("content_type"),
            delivery_report=report,
        )
        record_ids = sorted({lk.record_id for lk in links})
        original, original_send = await self._original(doc, thread_id, look)
        if cls.kind == "bounce":
            data = BounceReceivedData(
                message_key=subject,
                ref=ref,
                original_message_id=cls.original_message_id or original,
                bounced_recipients=cls.bounced_recipients,
                status=cls.status,
                permanent=cls.permanent,
                diagnostic=cls.diagnostic,
            )
            return "bounce", [self._build(BounceReceived, data, tenant, inbox_id, subject)]
        if cls.kind == "auto_reply":
            if original is None and not record_ids:
                return "auto_reply_unrelated", []  # a newsletter or a robot unrelated to the CRM
            auto = AutoReplyReceivedData(
                message_key=subject,
                ref=ref,
                original_message_id=original,
                signal=cls.signal,
                record_ids=record_ids,
            )
            return "auto_reply", [self._build(AutoReplyReceived, auto, tenant, inbox_id, subject)]
        if original is None or not doc.get("from"):
            return "none", []
        reply = ReplyReceivedData(
            message_key=subject,
            ref=ref,
            original_message_id=original,
            original_send_id=original_send,
            thread_id=thread_id,
            from_=Address.model_validate(doc["from"][0]),
            record_ids=record_ids,
        )
        return "reply", [self._build(ReplyReceived, reply, tenant, inbox_id, subject)]

    async def _discover(
        self,
        doc: Document,
        parts: dict[str, link_rules.Participant],
        directory: dict[str, list[link_rules.RecordRef]],
        plus: bool,
        look: Lookups,
    ) -> list[Envelope[Any]]:
        tenant, inbox_id = doc["tenant_id"], doc["inbox_id"]
        inbox = await look.inbox(tenant, inbox_id)
        if inbox is None or inbox.contact_discovery == "off":
            return []
        out: list[Envelope[Any]] = []
        for email in sorted(parts):
            p = parts[email]
            base = link_rules.strip_plus(email) if plus else email
            if directory.get(email) or directory.get(base):
                continue
            if discovery_rules.is_unwanted(email):
                continue
            if not discovery_rules.eligible(inbox.contact_discovery, doc["direction"], p.roles):
                continue
            if not await look.claim_contact(tenant, email, doc["_id"]):
                continue  # already proposed, from another message
            data = ContactDiscoveredData(
                email=email,
                name=p.name,
                owner_user_id=inbox.owner_user_id,
                messages_seen=1,
                first_message_key=doc["message_key"],
            )
            out.append(self._build(ContactDiscovered, data, tenant, inbox_id, email))
        return out


def _unique(events: Sequence[Envelope[Any]]) -> list[Envelope[Any]]:
    """The events in order, each id once (its first occurrence)."""
    firsts: dict[str, Envelope[Any]] = {}
    for e in events:
        firsts.setdefault(e.id, e)
    return list(firsts.values())


def _lost_contact(event: Envelope[Any], lost: set[tuple[str, str]]) -> bool:
    return isinstance(event, ContactDiscovered) and (event.tenant_id, event.data.email) in lost


class BatchView:
    """The `Lookups` of a run of new messages: fetched with one query per collection, then answered from
    memory and kept current as the run's messages are decided in order. A question outside what was
    fetched goes to the store, so the answers are the store's either way."""

    def __init__(self, store: LinkStore) -> None:
        self.store = store
        self.records: dict[tuple[str, str], list[RecordRef]] = {}
        self.record_keys: set[tuple[str, str]] = set()
        self.by_mid: dict[tuple[str, str], Document] = {}
        self.mid_keys: set[tuple[str, str]] = set()
        self.in_use: set[tuple[str, str]] = set()  # stored messages' thread ids among the run's own ids
        self.threads: dict[tuple[str, str], Document] = {}
        self.thread_keys: set[tuple[str, str]] = set()
        self.decided: list[Document] = []
        self.claims: dict[tuple[str, str], str] = {}
        self.tracked: list[tuple[str, str, Document]] = []

    @classmethod
    async def fetch(
        cls,
        store: LinkStore,
        docs: Sequence[tuple[Document, dict[str, link_rules.Participant]]],
        plus: Callable[[str], bool],
    ) -> BatchView:
        view = cls(store)
        for doc, parts in docs:
            tenant = doc["tenant_id"]
            view.record_keys |= {
                (tenant, e) for e in link_rules.lookup_keys(parts, plus_addressing=plus(tenant))
            }
            refs = reply_rules.referenced_ids(doc["in_reply_to"], doc["references"])
            view.mid_keys |= {(tenant, m) for m in refs}
            view.thread_keys |= {(tenant, t) for t in _thread_candidates(doc, refs)}
        view.records = await store.records_for_keys(view.record_keys)
        olds = {(d["tenant_id"], t) for d, _ in docs if (t := threading_rules.self_thread(d["message_id"]))}
        for d in await store.thread_facts(view.mid_keys, olds):
            key = (d["tenant_id"], d.get("message_id"))
            if key in view.mid_keys:
                view.by_mid.setdefault((d["tenant_id"], d["message_id"]), d)  # the first stored, as find_one
                if d.get("thread_id"):
                    view.thread_keys.add((d["tenant_id"], d["thread_id"]))
            if (d["tenant_id"], d.get("thread_id")) in olds:
                view.in_use.add((d["tenant_id"], d["thread_id"]))
        view.threads = await store.tracked_threads(view.thread_keys)
        return view

    async def inbox(self, tenant: str, inbox_id: str) -> InboxView | None:
        return await self.store.inbox(tenant, inbox_id)

    async def records_for(self, tenant: str, emails: Collection[str]) -> dict[str, list[RecordRef]]:
        if any((tenant, e) not in self.record_keys for e in emails):
            return await self.store.records_for(tenant, emails)
        return {e: refs for e in emails if (refs := self.records.get((tenant, e)))}

    async def by_message_ids(self, tenant: str, message_ids: Collection[str]) -> list[Document]:
        if any((tenant, m) not in self.mid_keys for m in message_ids):
            return await self.store.by_message_ids(tenant, message_ids)
        return [d for m in sorted(set(message_ids)) if (d := self.by_mid.get((tenant, m))) is not None]

    async def sent_in_thread(self, tenant: str, thread_id: str) -> Document | None:
        key = (tenant, thread_id)
        if key not in self.thread_keys:
            self.thread_keys.add(key)
            found = await self.store.sent_in_thread(tenant, thread_id)
            if found is not None:
                self.threads[key] = found
        return self.threads.get(key)

    async def claim_contact(self, tenant: str, email: str, doc_id: str) -> bool:
        return self.claims.setdefault((tenant, email), doc_id) == doc_id

    def learn(self, doc: Document) -> None:
        """A message of the run is decided: later ones may answer it or share its thread."""
        self.decided.append(doc)
        tenant, mid = doc["tenant_id"], doc.get("message_id")
        if mid and (tenant, mid) in self.mid_keys:
            self.by_mid.setdefault((tenant, mid), doc)
        if doc.get("send_id") and doc.get("thread_id"):
            self.track(tenant, doc["thread_id"], doc)

    def track(self, tenant: str, thread_id: str, sent: Document) -> None:
        key = (tenant, thread_id)
        self.thread_keys.add(key)
        if key not in self.threads:
            entry = {"_id": sent["_id"], "message_id": sent.get("message_id"), "send_id": sent.get("send_id")}
            self.threads[key] = entry
            self.tracked.append((tenant, thread_id, entry))

    async def retarget(self, tenant: str, old: str, new: str) -> None:
        """Children that arrived before their parent move to its thread: in this run and in the store."""
        for d in [*self.decided, *self.by_mid.values()]:
            if d["tenant_id"] == tenant and d.get("thread_id") == old:
                d["thread_id"] = new
        if (tenant, old) in self.in_use:  # the update scans the messages: only when one uses the id
            await self.store.retarget_thread(tenant, old, new)
        tracked = await self.sent_in_thread(tenant, old)
        if tracked is not None:
            self.track(tenant, new, tracked)

    async def store_claims(self) -> set[tuple[str, str]]:
        """Store the run's contact claims; returns the ones another message holds."""
        claims = [(t, e, doc_id) for (t, e), doc_id in self.claims.items()]
        won = await self.store.claim_contacts(claims) if claims else set()
        return {(t, e) for t, e, _ in claims} - won


def _thread_candidates(doc: Document, refs: Sequence[str]) -> set[str]:
    """Every thread id `threading_rules.thread_id` can give this message, besides known threads."""
    out = {f"mid:{r}" for r in refs}
    if doc.get("gmail_thread_id"):
        out.add(f"gm:{doc['gmail_thread_id']}")
    if mine := threading_rules.self_thread(doc.get("message_id")):
        out.add(mine)
    out.add(f"key:{doc['message_key']}")
    return out
