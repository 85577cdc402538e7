"""The one envelope every event and command travels in.

Attribute names follow CloudEvents 1.0 (`specversion`, `id`, `type`, `source`, `time`, `subject`,
`datacontenttype`) plus mailsync's `tenant_id`, `inbox_id` and `schema_version`. The payload is `data`.

Event ids are deterministic: a UUIDv5 over the event type, tenant, inbox and the payload fields that
name the fact (`Payload.identity`). Publishing the same fact twice, e.g. after a crash and replay,
yields the same id, so every consumer dedupes by `id`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Fixed namespace for mailsync event ids; changing it would change every id ever issued.
EVENT_ID_NAMESPACE = uuid.UUID("6f1d8f4e-3b7a-5c55-9a43-2d1e0b7c9a10")
_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes


def uuid5_str(name: str) -> str:
    """`str(uuid.uuid5(EVENT_ID_NAMESPACE, name))`, without building UUID objects: ids are made for
    every event on the hot paths (the linker makes two per message)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Payload(BaseModel):
    """Base of every event's `data`. Subclasses name the fields that identify the fact."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    # Payload fields whose values, with type/tenant/inbox, make the event id.
    identity: ClassVar[tuple[str, ...]] = ()
    # Fields that join the identity only when set (not None): adding one never changes existing ids.
    identity_when_set: ClassVar[tuple[str, ...]] = ()


P = TypeVar("P", bound=Payload)


def _identity_part(value: Any) -> str:
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(sorted(_identity_part(v) for v in value))
    return "" if value is None else str(value)


def event_id(event_type: str, tenant_id: str, inbox_id: str | None, data: Payload) -> str:
    """The deterministic id of a fact: same type, tenant, inbox and identity fields → same id."""
    if not data.identity:
        msg = f"{type(data).__name__} declares no identity fields; its events could not be deduplicated"
        raise TypeError(msg)
    parts = [event_type, tenant_id, inbox_id or ""]
    parts += [f"{name}={_identity_part(getattr(data, name))}" for name in data.identity]
    parts += [
        f"{name}={_identity_part(getattr(data, name))}"
        for name in data.identity_when_set
        if getattr(data, name) is not None
    ]
    return uuid5_str("\x1f".join(parts))


class Envelope(BaseModel, Generic[P]):
    """CloudEvents-shaped envelope. Subclasses pin `type` and `data` for one event."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Class-level facts used by the topic registry and the schema generator.
    event_type: ClassVar[str]
    kind: ClassVar[Literal["event", "command"]] = "event"
    current_schema_version: ClassVar[int] = 1

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(description="Deterministic UUIDv5 of the fact; consumers dedupe on it.")
    type: str
    source: str = Field(description="Producer, as a URI reference, e.g. `/mailsync/fetcher`.")
    time: AwareDatetime = Field(description="When the fact happened (UTC).")
    subject: str | None = Field(default=None, description="What the event is about, e.g. a message key.")
    datacontenttype: Literal["application/json"] = "application/json"
    schema_version: int = Field(default=1, ge=1, description="Version of this event type's `data` schema.")
    tenant_id: str = Field(min_length=1)
    inbox_id: str | None = Field(default=None, description="Kafka key on per-inbox topics.")
    data: P

    @classmethod
    def build(
        cls,
        *,
        data: P,
        tenant_id: str,
        source: str,
        inbox_id: str | None = None,
        subject: str | None = None,
        time: datetime | None = None,
    ) -> Self:
        """Make an event with its deterministic id computed from the fact."""
        return cls(
            id=event_id(cls.event_type, tenant_id, inbox_id, data),
            type=cls.event_type,
            source=source,
            time=time or datetime.now(UTC),
            subject=subject,
            schema_version=cls.current_schema_version,
            tenant_id=tenant_id,
            inbox_id=inbox_id,
            data=data,
        )

    def expected_id(self) -> str:
        """The id this event must carry; a consumer may reject an event whose id differs."""
        return event_id(self.type, self.tenant_id, self.inbox_id, self.data)
