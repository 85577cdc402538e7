"""Refused recipients are stored in a shape FerretDB v1 accepts and come back unchanged in `message sent`."""

from __future__ import annotations

from contracts.common import Address
from contracts.sending import SendRequestedData
from services.sender.delivery import sent_event, stored_refusals

REFUSED = {
    "nobody@mail.example.com": "550 5.1.1 <nobody@mail.example.com>: User unknown",
    "full.box@example.org": "452 4.2.2 mailbox full",
}


def _keys(value: object) -> list[str]:
    """Every field name in a stored document (nested documents and lists included)."""
    if isinstance(value, dict):
        return [str(k) for k in value] + [k for v in value.values() for k in _keys(v)]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


def test_stored_refusals_have_no_dotted_field_names_and_no_nested_arrays() -> None:
    stored = stored_refusals(REFUSED)
    assert all("." not in k and "$" not in k for k in _keys({"smtp": {"refused": stored}}))
    assert all(isinstance(r, dict) for r in stored)
    assert stored_refusals({}) == []


def _event_refusals(refused: object) -> dict[str, str]:
    cmd = SendRequestedData(
        idempotency_key="k1", from_=Address(email="ann@example.com"), to=[Address(email="bob@example.com")]
    )
    req = {"tenant_id": "t1", "inbox_id": "i1"}
    q = {
        "send_id": "s1",
        "message_id": "<m1@example.com>",
        "attempts": 1,
        "smtp": {"accepted": ["bob@example.com"], "refused": refused, "response": "250 ok"},
    }
    return sent_event(req, q, cmd, "/sender").data.refused_recipients


def test_message_sent_reports_the_refusals_as_the_server_gave_them() -> None:
    assert _event_refusals(stored_refusals(REFUSED)) == REFUSED
    assert _event_refusals([]) == {}
    assert _event_refusals(None) == {}
    # A mapping by address (as MongoDB may hold from before) reads the same.
    assert _event_refusals(dict(REFUSED)) == REFUSED
