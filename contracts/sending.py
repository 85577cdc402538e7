"""The sender's command and outcomes (topics `mailsync.send.commands.v1`, `mailsync.send.events.v1`)."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .common import Address, ErrorInfo
from .envelope import Envelope, Payload


class Attachment(Payload):
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = "application/octet-stream"
    content_b64: str | None = Field(default=None, description="Inline content, base64.")
    ref: str | None = Field(default=None, description="Reference to stored content, e.g. `blob:<id>`.")
    content_id: str | None = Field(default=None, description="For inline images referenced from HTML.")

    @model_validator(mode="after")
    def _one_source(self) -> Attachment:
        if (self.content_b64 is None) == (self.ref is None):
            msg = "an attachment needs exactly one of content_b64 or ref"
            raise ValueError(msg)
        return self


class SendRequestedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("idempotency_key",)
    idempotency_key: str = Field(min_length=1, max_length=200)
    from_: Address = Field(alias="from", description="The inbox address or one of its From aliases.")
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    reply_to: list[Address] = Field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    in_reply_to_message_key: str | None = Field(
        default=None, description="The message being answered; sets In-Reply-To and References."
    )
    send_at: datetime | None = Field(default=None, description="Send no earlier than this.")
    requested_by_user_id: str | None = None
    record_ids: list[str] = Field(default_factory=list, description="CRM records this mail is about.")

    @model_validator(mode="after")
    def _has_recipient(self) -> SendRequestedData:
        if not (self.to or self.cc or self.bcc):
            msg = "a message needs at least one recipient in to, cc or bcc"
            raise ValueError(msg)
        return self


class SendRequested(Envelope[SendRequestedData]):
    kind: ClassVar[Literal["event", "command"]] = "command"
    event_type: ClassVar[str] = "mailsync.send.requested"
    type: Literal["mailsync.send.requested"] = "mailsync.send.requested"


class MessageSentData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("idempotency_key",)
    idempotency_key: str
    send_id: str
    message_id: str = Field(description="The Message-ID we stamped, with our token.")
    accepted_recipients: list[str]
    refused_recipients: dict[str, str] = Field(default_factory=dict)
    smtp_response: str
    attempts: int = Field(ge=1)
    from_: Address | None = Field(default=None, alias="from", description="From of the sent message.")
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    subject: str | None = None
    in_reply_to: list[str] = Field(default_factory=list, description="Message-IDs, angle brackets removed.")
    references: list[str] = Field(default_factory=list, description="Message-IDs, angle brackets removed.")
    record_ids: list[str] = Field(default_factory=list, description="CRM records named in the request.")


class MessageSent(Envelope[MessageSentData]):
    event_type: ClassVar[str] = "mailsync.send.message_sent"
    type: Literal["mailsync.send.message_sent"] = "mailsync.send.message_sent"


class SendFailedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("idempotency_key",)
    idempotency_key: str
    send_id: str | None = None
    permanent: bool
    attempts: int = Field(ge=0)
    error: ErrorInfo


class SendFailed(Envelope[SendFailedData]):
    event_type: ClassVar[str] = "mailsync.send.failed"
    type: Literal["mailsync.send.failed"] = "mailsync.send.failed"


class SentCopyStoredData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("send_id",)
    send_id: str
    message_id: str
    folder: str
    uid: int | None = Field(default=None, description="From UIDPLUS APPENDUID when offered.")
    uidvalidity: int | None = None
    how: Literal["appended", "provider_filed", "already_present"]


class SentCopyStored(Envelope[SentCopyStoredData]):
    event_type: ClassVar[str] = "mailsync.send.sent_copy_stored"
    type: Literal["mailsync.send.sent_copy_stored"] = "mailsync.send.sent_copy_stored"


class SentCopyFailedData(Payload):
    # Each failed attempt is its own fact: the last one (will_retry=False) must not dedupe away.
    identity: ClassVar[tuple[str, ...]] = ("send_id", "attempts")
    send_id: str
    message_id: str
    attempts: int = Field(ge=1)
    will_retry: bool
    error: ErrorInfo


class SentCopyFailed(Envelope[SentCopyFailedData]):
    event_type: ClassVar[str] = "mailsync.send.sent_copy_failed"
    type: Literal["mailsync.send.sent_copy_failed"] = "mailsync.send.sent_copy_failed"


class SendDeadLetteredData(Payload):
    """A send that ran out of retries, with its command, for an operator to inspect or replay."""

    identity: ClassVar[tuple[str, ...]] = ("idempotency_key",)
    idempotency_key: str
    send_id: str | None = None
    attempts: int = Field(ge=0)
    error: ErrorInfo
    command: SendRequestedData


class SendDeadLettered(Envelope[SendDeadLetteredData]):
    event_type: ClassVar[str] = "mailsync.send.dead_lettered"
    type: Literal["mailsync.send.dead_lettered"] = "mailsync.send.dead_lettered"
