"""What a consumer publishes instead of crashing or dropping input it cannot process."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .envelope import Envelope, Payload


class InputRejectedData(Payload):
    identity: ClassVar[tuple[str, ...]] = ("consumer", "topic", "partition", "offset", "event_id")
    consumer: str = Field(description="Consumer group that rejected the record.")
    topic: str
    partition: int
    offset: int
    key: str | None = None
    reason: str = Field(description="Validation error or cause, secrets removed.")
    event_id: str | None = Field(default=None, description="The rejected event's id, if it had one.")
    raw_excerpt: str = Field(default="", max_length=2000, description="First bytes of the record.")


class InputRejected(Envelope[InputRejectedData]):
    event_type: ClassVar[str] = "mailsync.input.rejected"
    type: Literal["mailsync.input.rejected"] = "mailsync.input.rejected"
