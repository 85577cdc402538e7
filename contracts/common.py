"""Value types shared by several payloads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# An email address as carried in events: already normalised by the producer where it says so.
EmailStr = Annotated[str, StringConstraints(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]


class Address(BaseModel):
    """A mailbox from a header: display name (RFC 2047 decoded) and address."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    email: str = Field(max_length=320, description="As written in the header; may be malformed.")


class MessageRef(BaseModel):
    """Where a message lives on the IMAP server and its stable key inside mailsync.

    `message_key` is stable across folders and resyncs: Gmail's X-GM-MSGID where offered, else a hash
    of the inbox and the Message-ID header, else of folder + UIDVALIDITY + UID.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_key: str = Field(min_length=1)
    folder: str
    uidvalidity: int = Field(ge=0)
    uid: int = Field(ge=0)


class ErrorInfo(BaseModel):
    """A failure a user or operator can act on: stable code, the form field to fix, a hint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(description="Stable machine-readable code, e.g. `auth.invalid_credentials`.")
    message: str = Field(description="Human-readable; never contains a secret.")
    field: str | None = Field(default=None, description="Settings field to fix, e.g. `imap.password`.")
    hint: str | None = Field(default=None, description="What to do, e.g. `use an app password`.")
    server_response: str | None = Field(default=None, description="The server's words, secrets removed.")


RecordType = Literal["lead", "contact"]
