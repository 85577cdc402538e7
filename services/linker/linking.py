"""The linker's work on one message or one directory change: rules from the pure modules, state in a
`LinkStore`, events through an outbox kept on the message's own document.

Every emitted event is first written into `outbox` in the same single-document update that records the
new state, then published, then removed from the outbox. A crash between the steps leaves the event in
the outbox; the redelivered input finds it there and publishes it again (same deterministic id).
State changes use compare-and-set on `rev`, so a message being linked and a relink caused by a
directory change cannot overwrite each other with stale links.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
from mailsync.outbound_ids import send_id_from_message_id
from mailsync.store import Document

from . import discovery_rules, link_rules, reply_rules, threading_rules
from .directory import AddressChange
from .store import LinkStore

log = logging.getLogger("mailsync.linker")

Publish = Callable[[Sequence[Envelope[Any]]], Awaitable[None]]
MAX_CAS_ATTEMPTS = 20


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
    ) -> None:
        self.store = store
        self._publish = publish
        self._source = source
        self._plus = plus_addressing

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
            await self.settle(doc_id, cause=change.cause)
        return len(doc_ids)

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
        if sets:
            await self.store.patch_message(doc["_id"], sets)

    async def settle(self, doc_id: str, *, cause: str) -> None:
        """Bring one message's links, thread, signals and discovery up to date, then flush its outbox."""
        for _ in range(MAX_CAS_ATTEMPTS):
            doc = await self.store.get_message(doc_id)
            if doc is None:
                return
            pending: list[Document] = list(doc.get("outbox") or [])
            sets, events, retarget = await self._decide(doc, cause)
            if not sets and not events:
                break
            if await self.store.update_message(doc_id, doc["rev"], sets, events):
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

    async def flush(self, doc_id: str, outbox: list[Document]) -> None:
        """Publish outbox entries, then remove them (a concurrent flush may publish them too: same ids)."""
        if not outbox:
            return
        await self._publish([parse_event(e["event"]) for e in outbox])
        await self.store.pull_outbox(doc_id, outbox)

    def _out(self, event: Envelope[Any]) -> Document:
        return {"id": event.id, "event": event.model_dump_json()}

    async def _decide(
        self, doc: Document, cause: str
    ) -> tuple[Document, list[Document], tuple[str, str] | None]:
        tenant, inbox_id = doc["tenant_id"], doc["inbox_id"]
        plus = self._plus(tenant)
        parts = {
            p["email"]: link_rules.Participant(p["email"], p.get("name"), list(p["roles"]))
            for p in doc.get("participants", [])
        }
        directory = await self.store.records_for(tenant, link_rules.lookup_keys(parts, plus_addressing=plus))
        links, ambiguous = link_rules.compute_links(parts, directory, plus_addressing=plus)
        version = link_rules.link_version(links)
        sets: Document = {}
        events: list[Document] = []
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
                    events.append(self._out(self._build(MessageLinked, linked, tenant, inbox_id, subject)))
            else:
                added, removed = link_rules.diff_links(_links(doc), links)
                change = LinkChangedData(
                    message_key=doc["message_key"],
                    link_version=version,
                    added=added,
                    removed=removed,
                    cause=cause,
                )
                events.append(self._out(self._build(LinkChanged, change, tenant, inbox_id, subject)))

        retarget: tuple[str, str] | None = None
        thread_id = doc.get("thread_id")
        if thread_id is None:
            refs = reply_rules.referenced_ids(doc.get("in_reply_to", []), doc.get("references", []))
            known = {d["message_id"]: d["thread_id"] for d in await self.store.by_message_ids(tenant, refs)}
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
            signal, signal_events = await self._signals(doc, thread_id, links, ref)
            sets["signal"] = signal
            events += signal_events

        if not doc.get("discovery_done"):
            events += await self._discover(doc, parts, directory, plus)
            sets["discovery_done"] = True
        return sets, events, retarget

    def _build(self, cls: Any, data: Any, tenant: str, inbox_id: str, subject: str) -> Envelope[Any]:
        event: Envelope[Any] = cls.build(
            data=data, tenant_id=tenant, source=self._source, inbox_id=inbox_id, subject=subject
        )
        return event

    async def _original(self, doc: Document, thread_id: str) -> tuple[str | None, str | None]:
        """The CRM's message this one answers: (Message-ID, send id), or (None, None)."""
        tenant = doc["tenant_id"]
        refs = reply_rules.referenced_ids(doc.get("in_reply_to", []), doc.get("references", []))
        for mid in refs:  # our Message-ID token: recognised even before the send event arrives
            sid = send_id_from_message_id(mid)
            if sid:
                return mid, sid
        sent = {d["message_id"]: d for d in await self.store.by_message_ids(tenant, refs) if d.get("send_id")}
        for mid in refs:
            if mid in sent:
                return mid, sent[mid]["send_id"]
        tracked = await self.store.sent_in_thread(tenant, thread_id)
        if tracked is not None and tracked["_id"] != doc["_id"]:
            return tracked.get("message_id") or (refs[0] if refs else None), tracked.get("send_id")
        return None, None

    async def _signals(
        self, doc: Document, thread_id: str, links: list[RecordLink], ref: MessageRef | None
    ) -> tuple[str, list[Document]]:
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
        original, original_send = await self._original(doc, thread_id)
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
            return "bounce", [self._out(self._build(BounceReceived, data, tenant, inbox_id, subject))]
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
            return "auto_reply", [self._out(self._build(AutoReplyReceived, auto, tenant, inbox_id, subject))]
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
        return "reply", [self._out(self._build(ReplyReceived, reply, tenant, inbox_id, subject))]

    async def _discover(
        self,
        doc: Document,
        parts: dict[str, link_rules.Participant],
        directory: dict[str, list[link_rules.RecordRef]],
        plus: bool,
    ) -> list[Document]:
        tenant, inbox_id = doc["tenant_id"], doc["inbox_id"]
        inbox = await self.store.inbox(tenant, inbox_id)
        if inbox is None or inbox.contact_discovery == "off":
            return []
        out: list[Document] = []
        for email in sorted(parts):
            p = parts[email]
            base = link_rules.strip_plus(email) if plus else email
            if directory.get(email) or directory.get(base):
                continue
            if discovery_rules.is_unwanted(email):
                continue
            if not discovery_rules.eligible(inbox.contact_discovery, doc["direction"], p.roles):
                continue
            if not await self.store.claim_contact(tenant, email, doc["_id"]):
                continue  # already proposed, from another message
            data = ContactDiscoveredData(
                email=email,
                name=p.name,
                owner_user_id=inbox.owner_user_id,
                messages_seen=1,
                first_message_key=doc["message_key"],
            )
            out.append(self._out(self._build(ContactDiscovered, data, tenant, inbox_id, email)))
        return out
