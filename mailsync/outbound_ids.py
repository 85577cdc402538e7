"""How mail sent by mailsync is recognised later: our Message-ID token and the send-id header.

The sender stamps every message with `Message-ID: <mailsync.<send_id>@<domain of From>>` and the header
`X-Mailsync-Send-Id: <send_id>`. The fetcher reads the header (or the Message-ID) of a Sent-folder copy to
reconcile it with the send request (`MessageReceived.mailsync_send_id`); the linker finds the token in
`In-Reply-To` / `References` of replies. `send_id` is 32 lowercase hex digits, derived deterministically
from tenant, inbox and idempotency key, so a resend after a crash carries the same Message-ID.
"""

from __future__ import annotations

import re
import uuid

SEND_ID_HEADER = "X-Mailsync-Send-Id"
MESSAGE_ID_PREFIX = "mailsync."

# Namespace for send ids; changing it would change every Message-ID we ever stamped.
_SEND_ID_NAMESPACE = uuid.UUID("3b0c5a64-6f0e-5d1c-8b7e-1c2d3e4f5a6b")
_TOKEN = re.compile(r"<?mailsync\.([0-9a-f]{32})@[^>\s]+>?", re.IGNORECASE)
_SEND_ID = re.compile(r"^[0-9a-f]{32}$")


def send_id_for(tenant_id: str, inbox_id: str, idempotency_key: str) -> str:
    """The deterministic send id of one send request."""
    return uuid.uuid5(_SEND_ID_NAMESPACE, f"{tenant_id}\x1f{inbox_id}\x1f{idempotency_key}").hex


def message_id_for(send_id: str, domain: str) -> str:
    """`<mailsync.<send_id>@<domain>>`, with angle brackets."""
    if not _SEND_ID.match(send_id):
        msg = "send_id must be 32 lowercase hex digits"
        raise ValueError(msg)
    return f"<{MESSAGE_ID_PREFIX}{send_id}@{domain.strip().lower() or 'mailsync.invalid'}>"


def send_id_from_message_id(message_id: str | None) -> str | None:
    """Our send id if the Message-ID (with or without brackets) is one of ours, else None."""
    if not message_id:
        return None
    m = _TOKEN.fullmatch(message_id.strip())
    return m.group(1).lower() if m else None


def send_ids_in(header_value: str | None) -> list[str]:
    """All our send ids referenced in an `In-Reply-To` / `References` value, in order."""
    if not header_value:
        return []
    return [m.group(1).lower() for m in _TOKEN.finditer(header_value)]


def send_id_from_header(value: str | None) -> str | None:
    """The `X-Mailsync-Send-Id` value, if well-formed."""
    if not value:
        return None
    value = value.strip().lower()
    return value if _SEND_ID.match(value) else None
