"""Facts the linker needs from a message's MIME, for the fetcher to put on `message received`.

`classification_headers` picks the headers auto-reply and bounce detection look at;
`delivery_report` parses a DSN (RFC 3464: `multipart/report; report-type=delivery-status`) into the
contract's `DeliveryReport`: each recipient's action and status, and the Message-ID of the returned
message from its attached headers. Pure functions over `email.message.Message`, no I/O.
"""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message
from email.policy import compat32

from contracts.messages import DeliveryReport, DeliveryStatus

CLASSIFICATION_HEADERS = (
    "precedence",
    "x-autoreply",
    "x-autorespond",
    "x-failed-recipients",
    "list-id",
    "return-path",
)


def classification_headers(msg: Message) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in CLASSIFICATION_HEADERS:
        value = msg.get(name)
        if value is not None:
            out[name] = str(value).strip()[:500]
    return out


def _fields(block: Message | str) -> dict[str, str]:
    """A delivery-status block (header-like fields) as a lower-cased dict."""
    if isinstance(block, Message):
        return {k.lower(): str(v).strip() for k, v in block.items()}
    out: dict[str, str] = {}
    for line in block.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line[:1].isspace():
            out[name.strip().lower()] = value.strip()
    return out


def _status_blocks(part: Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):  # parsed as a list of header blocks (per-message, per-recipient…)
        return [_fields(p) for p in payload if isinstance(p, Message)]
    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    return [_fields(b) for b in blocks]


def delivery_report(msg: Message) -> DeliveryReport | None:
    """The DSN's report, or None when the message is not a delivery-status report."""
    if msg.get_content_type() != "multipart/report":
        return None
    status_part: Message | None = None
    original: str | None = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status" and status_part is None:
            status_part = part
        elif ctype in ("text/rfc822-headers", "message/rfc822") and original is None:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                original = inner[0].get("message-id")
            else:
                raw = part.get_payload(decode=True)
                if isinstance(raw, bytes):
                    original = message_from_bytes(raw, policy=compat32).get("message-id")
    if status_part is None:
        return None
    recipients = []
    for block in _status_blocks(status_part):
        recipient = block.get("final-recipient") or block.get("original-recipient")
        if not recipient or "action" not in block:
            continue  # the per-message block
        _, sep, addr = recipient.partition(";")
        recipients.append(
            DeliveryStatus(
                final_recipient=(addr if sep else recipient).strip(),
                action=block["action"].lower(),
                status=block.get("status", "").split()[0] if block.get("status") else None,
                diagnostic=(block.get("diagnostic-code") or None),
            )
        )
    clean = str(original).strip().strip("<>").strip() if original else None
    return DeliveryReport(recipients=recipients, original_message_id=clean or None)
