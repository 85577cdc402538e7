"""Message events from the fetcher (topic `mailsync.messages.v1`)."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from .common import Address, MessageRef
from .envelope import Envelope, Payload

Direction = Literal["inbound", "outbound"]


class DeliveryStatus(Payload):
    """One per-recipient block of a `message/delivery-status` part (RFC 3464)."""

    final_recipient: str = Field(description="Final-Recipient address, address type removed.")
    action: str = Field(description="`failed`, `delayed`, `delivered`, `relayed` or `expanded`.")
    status: str | None = Field(default=None, description="Status code, e.g. `5.1.1`.")
    diagnostic: str | None = Field(default=None, description="Diagnostic-Code text.")


class DeliveryReport(Payload):
    """What a DSN says: the recipients it reports on and the Message-ID of the original, if attached."""

    recipients: list[DeliveryStatus] = Field(default_factory=list)
    original_message_id: str | None = Field(
        default=None, description="Message-ID of the returned message (from its attached headers)."
    )


class MessageReceivedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("ref",)
    identity_when_set: ClassVar[tuple[str, ...]] = ("resync_id",)

    ref: MessageRef
    history: bool = Field(
        description="True for mail found by a backfill, reactivation or UIDVALIDITY rebuild; "
        "False for mail that just arrived. Automations should ignore history."
    )
    direction: Direction = Field(description="`outbound` when found in a Sent folder or sent by the inbox.")
    message_id: str | None = Field(default=None, description="Message-ID header, angle brackets removed.")
    in_reply_to: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)
    subject: str | None = None
    from_: list[Address] = Field(default_factory=list, alias="from")
    sender: Address | None = None
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    reply_to: list[Address] = Field(default_factory=list)
    date: datetime | None = Field(default=None, description="Date header; None when missing or invalid.")
    internal_date: datetime | None = Field(default=None, description="IMAP INTERNALDATE.")
    size: int = Field(ge=0, description="RFC822.SIZE in bytes.")
    flags: list[str] = Field(default_factory=list)
    gmail_labels: list[str] = Field(default_factory=list)
    gmail_thread_id: str | None = None
    auto_submitted: str | None = Field(default=None, description="Auto-Submitted header, if any.")
    mailsync_send_id: str | None = Field(
        default=None, description="Our send id when this is the Sent copy of a message mailsync sent."
    )
    has_attachments: bool = False
    body_stored: bool = Field(default=False, description="Body fetched and stored; bodies follow headers.")
    parse_errors: list[str] = Field(
        default_factory=list, description="Non-empty when the MIME was malformed; raw bytes are kept."
    )
    content_type: str | None = Field(
        default=None,
        description="Top-level Content-Type with its parameters, e.g. "
        "`multipart/report; report-type=delivery-status` (bounce detection).",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Selected headers for auto-reply and bounce detection, names lower-cased: `precedence`, "
        "`x-autoreply`, `x-autorespond`, `x-failed-recipients`, `list-id`, `return-path`.",
    )
    delivery_report: DeliveryReport | None = Field(
        default=None, description="The parsed `message/delivery-status` part of a DSN (multipart/report)."
    )
    resync_id: str | None = Field(
        default=None,
        description="Set when a resync re-announces mail (after a reactivation, whose deactivation purged "
        "the store, or a requested resync): part of the event id, so consumers that processed the first "
        "announcement process this one too. None for a first announcement.",
    )


class MessageReceived(Envelope[MessageReceivedData]):
    event_type: ClassVar[str] = "mailsync.message.received"
    type: Literal["mailsync.message.received"] = "mailsync.message.received"


class MessageUpdatedData(Payload):
    # `change` is part of the identity: a flag change and the body being stored can share a MODSEQ.
    identity: ClassVar[tuple[str, ...]] = ("ref", "modseq", "change")
    ref: MessageRef
    modseq: int = Field(ge=0, description="CONDSTORE MODSEQ of the change (0 without CONDSTORE).")
    change: Literal["flags", "body"] = Field(
        "flags",
        description="What changed: the server flags/labels, or the body now stored (or flagged too large).",
    )
    flags: list[str] = Field(default_factory=list)
    gmail_labels: list[str] = Field(default_factory=list)
    body_stored: bool = False


class MessageUpdated(Envelope[MessageUpdatedData]):
    event_type: ClassVar[str] = "mailsync.message.updated"
    type: Literal["mailsync.message.updated"] = "mailsync.message.updated"


class MessageDeletedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("ref",)
    ref: MessageRef
    reason: Literal["expunged", "moved", "uidvalidity_reset"]


class MessageDeleted(Envelope[MessageDeletedData]):
    event_type: ClassVar[str] = "mailsync.message.deleted"
    type: Literal["mailsync.message.deleted"] = "mailsync.message.deleted"
