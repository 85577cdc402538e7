"""The topic registry: every topic, its key and the event types it carries.

Per-inbox topics are keyed by `inbox_id`, so all events of one inbox land on one partition in order.
CRM input topics are keyed by `subject` (the record or user id) for the same reason per record/user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from . import crm, errors, inbox, links, messages, sending
from .envelope import Envelope

AnyEvent = Envelope[Any]
KeyAttribute = Literal["inbox_id", "subject"]

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    key: KeyAttribute
    events: tuple[type[AnyEvent], ...]
    description: str
    partitions: int = 12
    retention_ms: int = 14 * DAY_MS
    # Compaction keeps the latest record per key: only for topics whose records are keyed state.
    compacted: bool = False
    config: dict[str, str] = field(default_factory=dict)

    def key_for(self, event: AnyEvent) -> bytes:
        """The Kafka key of an event on this topic; refuses an event without one."""
        value = event.inbox_id if self.key == "inbox_id" else event.subject
        if not value:
            msg = f"{event.type} on {self.name} needs `{self.key}` as its Kafka key"
            raise ValueError(msg)
        return value.encode()

    def kafka_config(self) -> dict[str, str]:
        cfg = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(-1 if self.compacted else self.retention_ms),
        }
        cfg.update(self.config)
        return cfg


TOPICS: tuple[Topic, ...] = (
    Topic(
        "mailsync.inbox.v1",
        "inbox_id",
        (
            inbox.InboxConnected,
            inbox.InboxSyncing,
            inbox.SyncProgress,
            inbox.InitialSyncCompleted,
            inbox.InboxAuthFailed,
            inbox.InboxConnectFailed,
            inbox.InboxThrottled,
            inbox.InboxPaused,
            inbox.InboxDeactivationWarning,
            inbox.InboxDeactivationWarningCancelled,
            inbox.InboxDeactivated,
            inbox.InboxReactivated,
            inbox.InboxRemoved,
        ),
        "Inbox lifecycle and status, from the fetcher and the janitor.",
        retention_ms=30 * DAY_MS,
    ),
    Topic(
        "mailsync.inbox.commands.v1",
        "inbox_id",
        (inbox.InboxCommandRequested,),
        "Pause, resume, resync or remove an inbox (from the CRM or an operator).",
        partitions=6,
    ),
    Topic(
        "mailsync.messages.v1",
        "inbox_id",
        (messages.MessageReceived, messages.MessageUpdated, messages.MessageDeleted),
        "Every message synced from IMAP, its changes and deletions.",
    ),
    Topic(
        "mailsync.links.v1",
        "inbox_id",
        (links.MessageLinked, links.LinkChanged, links.ContactDiscovered),
        "Message ↔ CRM record links and contacts discovered in the mailbox.",
    ),
    Topic(
        "mailsync.replies.v1",
        "inbox_id",
        (links.ReplyReceived, links.AutoReplyReceived, links.BounceReceived),
        "Replies to the CRM's mail for automations; auto-replies and bounces kept apart.",
    ),
    Topic(
        "mailsync.send.commands.v1",
        "inbox_id",
        (sending.SendRequested,),
        "Commands to send mail on behalf of an inbox.",
        partitions=6,
    ),
    Topic(
        "mailsync.send.events.v1",
        "inbox_id",
        (sending.MessageSent, sending.SendFailed, sending.SentCopyStored, sending.SentCopyFailed),
        "Outcomes of send commands and of the Sent-folder copy.",
    ),
    Topic(
        "mailsync.send.deadletter.v1",
        "inbox_id",
        (sending.SendDeadLettered,),
        "Send commands that exhausted their retries (after `send failed`), with the command.",
        partitions=3,
        retention_ms=30 * DAY_MS,
    ),
    Topic(
        "crm.records.v1",
        "subject",
        (crm.CrmRecordUpserted, crm.CrmRecordDeleted),
        "Leads and contacts from the CRM (input); key = record id, compacted to the latest state.",
        compacted=True,
    ),
    Topic(
        "crm.activity.v1",
        "subject",
        (crm.EmailOpened, crm.UserActive),
        "User activity from the CRM (input); key = user id.",
        partitions=6,
        retention_ms=7 * DAY_MS,
    ),
    Topic(
        "mailsync.rejected.v1",
        "subject",
        (errors.InputRejected,),
        "Records a consumer could not process, with the reason; key = the rejected record's key.",
        partitions=3,
        retention_ms=30 * DAY_MS,
    ),
)

TOPICS_BY_NAME: dict[str, Topic] = {t.name: t for t in TOPICS}


_TOPIC_BY_TYPE: dict[str, Topic] = {cls.event_type: t for t in reversed(TOPICS) for cls in t.events}


def topic_of(event: AnyEvent | type[AnyEvent]) -> Topic:
    """The one topic an event type travels on (the first in the registry that lists it)."""
    topic = _TOPIC_BY_TYPE.get(event.event_type)
    if topic is None:
        msg = f"event type {event.event_type} is on no topic"
        raise LookupError(msg)
    return topic
