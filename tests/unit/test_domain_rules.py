"""Pure decisions of the services: address normalisation, inbox commands, send admission."""

from __future__ import annotations

import pytest

from contracts.common import Address
from contracts.sending import SendRequestedData
from services.fetcher.inbox_commands import decide
from services.linker.addresses import InvalidAddress, normalize, normalize_all
from services.sender.admission import admit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ann@example.com", "ann@example.com"),
        ("  Ann@Example.COM ", "ann@example.com"),
        ('"Ann Smith" <Ann@Example.com>', "ann@example.com"),
        ("<ann@example.com>", "ann@example.com"),
        ("ann@bücher.example", "ann@xn--bcher-kva.example"),
        ("ann@example.com.", "ann@example.com"),
        ("Straße@example.com", "strasse@example.com"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_plus_addressing_is_a_setting() -> None:
    assert normalize("ann+crm@example.com") == "ann+crm@example.com"
    assert normalize("ann+crm@example.com", strip_plus=True) == "ann@example.com"


@pytest.mark.parametrize("raw", ["", "ann", "@example.com", "ann@", "a b@example.com"])
def test_invalid_addresses_raise(raw: str) -> None:
    with pytest.raises(InvalidAddress):
        normalize(raw)


def test_normalize_all_reports_what_it_could_not_use() -> None:
    good, bad = normalize_all(["A@x.org", None, " ", "a@X.org", "junk"])
    assert good == {"a@x.org"}
    assert bad == ["junk"]


@pytest.mark.parametrize(
    ("status", "action", "new", "emit", "refused"),
    [
        ("idle", "pause", "paused", "paused", False),
        ("paused", "pause", "paused", None, False),
        ("paused", "resume", "connecting", "reactivated", False),
        ("deactivated", "resume", "connecting", "reactivated", False),
        ("idle", "resume", "idle", None, False),
        ("paused", "resync", "paused", None, True),
        ("idle", "remove", "removed", "removed", False),
        ("removed", "resume", "removed", None, True),
    ],
)
def test_inbox_command_decisions(status: str, action: str, new: str, emit: str | None, refused: bool) -> None:
    d = decide(status, action)  # type: ignore[arg-type]
    assert (d.status, d.emit, d.refused is not None) == (new, emit, refused)


def test_resume_after_deactivation_resyncs() -> None:
    assert decide("deactivated", "resume").resync
    assert not decide("paused", "resume").resync


def _cmd(sender: str) -> SendRequestedData:
    return SendRequestedData(idempotency_key="k1", from_=Address(email=sender), to=[Address(email="x@y.z")])


def test_send_admission() -> None:
    inbox = {"email": "Ann@Example.com", "additional_from": ["sales@example.com"], "status": "idle"}
    assert admit(_cmd("ann@example.com"), inbox, "i1") is None
    assert admit(_cmd("SALES@example.com"), inbox, "i1") is None
    refusal = admit(_cmd("ceo@example.com"), inbox, "i1")
    assert (
        refusal is not None
        and refusal.error.code == "send.from_not_allowed"
        and refusal.error.field == "from"
    )
    unknown = admit(_cmd("ann@example.com"), None, "nope")
    assert unknown is not None and unknown.error.code == "inbox.unknown"
    paused = admit(_cmd("ann@example.com"), {**inbox, "status": "deactivated"}, "i1")
    assert paused is not None and paused.error.code == "inbox.deactivated"
