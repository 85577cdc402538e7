"""The per-account IMAP connection budget, its fetcher/sender split, and the folder → connection plan."""

from __future__ import annotations

import pytest

from mailsync.connection_budget import (
    DEFAULT_LIMIT,
    ConnectionShares,
    Lane,
    connection_shares,
    known_provider,
    plan_lanes,
)
from mailsync.inbox_record import InboxRecord
from services.fetcher.imap.session import Folder
from services.fetcher.sync.inbox import choose_folders, wants_idle


@pytest.mark.parametrize(
    ("provider", "host", "expected"),
    [
        ("gmail", "imap.gmail.com", ConnectionShares(usable=10, fetcher=8, sender=2)),  # 15 - 5
        (None, "imap.gmail.com", ConnectionShares(usable=10, fetcher=8, sender=2)),  # by host
        ("yahoo", "imap.mail.yahoo.com", ConnectionShares(usable=4, fetcher=3, sender=1)),  # 5 - 1
        ("office365", "outlook.office365.com", ConnectionShares(usable=11, fetcher=9, sender=2)),
        ("icloud", "imap.mail.me.com", ConnectionShares(usable=4, fetcher=3, sender=1)),
        ("zoho", "imappro.zoho.eu", ConnectionShares(usable=7, fetcher=5, sender=2)),
        (None, "mail.example.org", ConnectionShares(usable=7, fetcher=5, sender=2)),  # generic 10
    ],
)
def test_provider_budgets_split(provider: str | None, host: str, expected: ConnectionShares) -> None:
    got = connection_shares(provider, host)
    assert got == expected
    assert got.fetcher + got.sender == got.usable


def test_configured_budget_is_taken_as_is_and_never_below_two() -> None:
    assert connection_shares("gmail", "imap.gmail.com", 4) == ConnectionShares(4, 3, 1)
    assert connection_shares(None, "x", 6) == ConnectionShares(6, 4, 2)
    assert connection_shares(None, "x", 1) == ConnectionShares(2, 1, 1)


def test_known_provider_by_host_suffix_only() -> None:
    assert known_provider(None, "IMAP.GMAIL.COM.") == "gmail"
    assert known_provider(None, "notgmail.com") is None  # a suffix match needs a dot boundary
    assert known_provider("fastmail", "imap.fastmail.com") == "fastmail"
    assert connection_shares("fastmail", "imap.fastmail.com").usable == DEFAULT_LIMIT - DEFAULT_LIMIT // 3


def test_plan_within_share_gives_every_folder_its_connection() -> None:
    lanes = plan_lanes([("INBOX", True), ("Sent", True), ("Archive", False)], 3)
    assert lanes == [Lane(("INBOX",), True), Lane(("Sent",), True), Lane(("Archive",), False)]


def test_plan_over_share_keeps_idle_folders_and_rotates_the_rest() -> None:
    folders = [("INBOX", True), ("A", False), ("Sent", True), ("B", False), ("C", False), ("D", False)]
    lanes = plan_lanes(folders, 3)
    assert lanes == [Lane(("INBOX",), True), Lane(("Sent",), True), Lane(("A", "B", "C", "D"), False)]
    lanes = plan_lanes(folders, 4)
    assert lanes[:2] == [Lane(("INBOX",), True), Lane(("Sent",), True)]
    assert lanes[2:] == [Lane(("A", "C"), False), Lane(("B", "D"), False)]


@pytest.mark.parametrize("share", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("count", [1, 2, 6, 13])
def test_plan_never_exceeds_share_and_covers_every_folder_once(share: int, count: int) -> None:
    folders = [(f"F{i}", i % 3 == 0) for i in range(count)]
    lanes = plan_lanes(folders, share)
    assert len(lanes) <= share
    planned = [f for lane in lanes for f in lane.folders]
    assert sorted(planned) == sorted(n for n, _ in folders)
    assert all(len(lane.folders) == 1 for lane in lanes if lane.idle)


def test_plan_with_one_connection_polls_everything_in_turn() -> None:
    assert plan_lanes([("INBOX", True), ("Sent", True)], 1) == [Lane(("INBOX", "Sent"), False)]
    with pytest.raises(ValueError, match="connection"):
        plan_lanes([("INBOX", True)], 0)


def _record(folders: list[str] | None = None) -> InboxRecord:
    return InboxRecord.model_validate(
        {
            "_id": "t:i",
            "tenant_id": "t",
            "inbox_id": "i",
            "owner_user_id": "u",
            "email": "a@example.com",
            "imap": {"host": "imap.gmail.com", "port": 993, "security": "tls"},
            "smtp": {"host": "smtp.gmail.com", "port": 465, "security": "tls"},
            "imap_auth": {
                "kind": "password",
                "username": "a",
                "password": {"key_id": "k", "nonce": "bm9uY2U=", "ciphertext": "Y3Q="},
            },
            "sync": {"folders": folders},
        }
    )


GMAIL_FOLDERS = [
    Folder("INBOX", frozenset({"\\HasNoChildren"}), "/"),
    Folder("[Gmail]/All Mail", frozenset({"\\All", "\\HasNoChildren"}), "/"),
    Folder("[Gmail]/Sent Mail", frozenset({"\\Sent", "\\HasNoChildren"}), "/"),
    Folder("Work", frozenset({"\\HasNoChildren"}), "/"),
]
GMAIL_CAPS = frozenset({"IMAP4REV1", "X-GM-EXT-1", "IDLE", "CONDSTORE"})


def test_gmail_syncs_all_mail_once_and_idles_on_it() -> None:
    chosen = choose_folders(_record(), GMAIL_FOLDERS, GMAIL_CAPS)
    assert chosen == [("[Gmail]/All Mail", False)]
    assert wants_idle("[Gmail]/All Mail", False, GMAIL_FOLDERS, GMAIL_CAPS)
    assert not wants_idle("[Gmail]/All Mail", False, GMAIL_FOLDERS, frozenset({"IDLE"}))
    assert not wants_idle("Work", False, GMAIL_FOLDERS, GMAIL_CAPS)
    assert wants_idle("inbox", False, GMAIL_FOLDERS, GMAIL_CAPS)


def test_configured_folders_are_kept_once_each() -> None:
    chosen = choose_folders(_record(["INBOX", "Work", "INBOX", "Gone"]), GMAIL_FOLDERS, GMAIL_CAPS)
    assert chosen == [("INBOX", False), ("Work", False)]
