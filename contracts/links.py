"""Linker output: links to CRM records, reply signals, discovered contacts."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import Address, MessageRef, RecordType
from .envelope import Envelope, Payload

LinkRole = Literal["sender", "recipient", "cc", "bcc", "reply_to"]


class RecordLink(Payload):
    record_id: str
    record_type: RecordType
    email: str = Field(description="The normalised address that matched.")
    roles: list[LinkRole]


class MessageLinkedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("message_key", "link_version")
    message_key: str
    ref: MessageRef | None = None
    link_version: str = Field(description="Hash of the link set; same links → same event id.")
    links: list[RecordLink]
    ambiguous_addresses: list[str] = Field(
        default_factory=list, description="Addresses that matched more than one record (all are linked)."
    )
    direction: Literal["inbound", "outbound"]


class MessageLinked(Envelope[MessageLinkedData]):
    event_type: ClassVar[str] = "mailsync.message.linked"
    type: Literal["mailsync.message.linked"] = "mailsync.message.linked"


class LinkChangedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("message_key", "link_version")
    message_key: str
    link_version: str
    added: list[RecordLink] = Field(default_factory=list)
    removed: list[RecordLink] = Field(default_factory=list)
    cause: str = Field(description="E.g. `record.address_added`, `record.deleted`.")


class LinkChanged(Envelope[LinkChangedData]):
    event_type: ClassVar[str] = "mailsync.message.link_changed"
    type: Literal["mailsync.message.link_changed"] = "mailsync.message.link_changed"


class ReplyReceivedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("message_key",)
    message_key: str
    ref: MessageRef
    original_message_id: str = Field(description="Message-ID of the CRM's mail this answers.")
    original_send_id: str | None = Field(default=None, description="mailsync send id of the original.")
    thread_id: str | None = None
    from_: Address = Field(alias="from")
    record_ids: list[str] = Field(default_factory=list)


class ReplyReceived(Envelope[ReplyReceivedData]):
    event_type: ClassVar[str] = "mailsync.message.reply_received"
    type: Literal["mailsync.message.reply_received"] = "mailsync.message.reply_received"


class AutoReplyReceivedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("message_key",)
    message_key: str
    ref: MessageRef
    original_message_id: str | None = None
    signal: str = Field(description="Why it is automatic, e.g. `Auto-Submitted: auto-replied`.")
    record_ids: list[str] = Field(default_factory=list)


class AutoReplyReceived(Envelope[AutoReplyReceivedData]):
    event_type: ClassVar[str] = "mailsync.message.auto_reply_received"
    type: Literal["mailsync.message.auto_reply_received"] = "mailsync.message.auto_reply_received"


class BounceReceivedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("message_key",)
    message_key: str
    ref: MessageRef
    original_message_id: str | None = None
    bounced_recipients: list[str] = Field(default_factory=list)
    status: str | None = Field(default=None, description="DSN status, e.g. `5.1.1`.")
    permanent: bool
    diagnostic: str | None = None


class BounceReceived(Envelope[BounceReceivedData]):
    event_type: ClassVar[str] = "mailsync.message.bounce_received"
    type: Literal["mailsync.message.bounce_received"] = "mailsync.message.bounce_received"


class ContactDiscoveredData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("email",)
    email: str
    name: str | None = None
    owner_user_id: str
    messages_seen: int = Field(ge=1)
    first_message_key: str


class ContactDiscovered(Envelope[ContactDiscoveredData]):
    event_type: ClassVar[str] = "mailsync.contact.discovered"
    type: Literal["mailsync.contact.discovered"] = "mailsync.contact.discovered"
