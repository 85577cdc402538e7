"""Input from the CRM: leads and contacts, and user activity."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from .common import RecordType
from .envelope import Envelope, Payload


class CrmRecordUpsertedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("record_id", "revision")
    record_id: str = Field(min_length=1)
    record_type: RecordType
    revision: int = Field(ge=0, description="Monotonic per record; older revisions are ignored.")
    owner_user_id: str
    name: str | None = None
    primary_email: str | None = None
    secondary_emails: list[str] = Field(default_factory=list)


class CrmRecordUpserted(Envelope[CrmRecordUpsertedData]):
    event_type: ClassVar[str] = "crm.record.upserted"
    type: Literal["crm.record.upserted"] = "crm.record.upserted"


class CrmRecordDeletedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("record_id", "revision")
    record_id: str = Field(min_length=1)
    record_type: RecordType
    revision: int = Field(ge=0)


class CrmRecordDeleted(Envelope[CrmRecordDeletedData]):
    event_type: ClassVar[str] = "crm.record.deleted"
    type: Literal["crm.record.deleted"] = "crm.record.deleted"


class EmailOpenedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("user_id", "target", "opened_at")
    user_id: str
    target: str = Field(description="`inbox:<id>` or `message:<message_key>`.")
    message_key: str | None = None
    opened_at: datetime


class EmailOpened(Envelope[EmailOpenedData]):
    event_type: ClassVar[str] = "crm.activity.email_opened"
    type: Literal["crm.activity.email_opened"] = "crm.activity.email_opened"


class UserActiveData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("user_id", "active_at")
    user_id: str
    active_at: datetime


class UserActive(Envelope[UserActiveData]):
    event_type: ClassVar[str] = "crm.activity.user_active"
    type: Literal["crm.activity.user_active"] = "crm.activity.user_active"
