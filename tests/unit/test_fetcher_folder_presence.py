"""A configured folder gone from the server is logged once per disappearance, not on every poll
(services/fetcher/sync/folder.py: `folder_missing`, `presence_change`)."""

from __future__ import annotations

import pytest

from services.fetcher.imap.session import AuthenticationFailed, ImapError
from services.fetcher.sync.folder import folder_missing, presence_change


@pytest.mark.parametrize(
    ("exc", "missing"),
    [
        # Dovecot's answer to EXAMINE of a deleted folder.
        (ImapError("EXAMINE", "NO", "Mailbox doesn't exist: Archive", "NONEXISTENT"), True),
        (ImapError("EXAMINE", "NO", "Unknown Mailbox: Archive (Failure)", "nonexistent"), True),
        (ImapError("EXAMINE", "NO", "no such mailbox"), True),  # servers without response codes
        (ImapError("EXAMINE", "NO", "Internal error occurred", "UNAVAILABLE"), False),
        (ImapError("EXAMINE", "NO", "Too many connections", "LIMIT"), False),
        (ImapError("EXAMINE", "NO", "Internal error", "SERVERBUG"), False),
        (ImapError("EXAMINE", "BAD", "Error in IMAP command EXAMINE"), False),
        (AuthenticationFailed("EXAMINE", "NO", "session expired"), False),
    ],
)
def test_which_examine_failures_mean_the_folder_is_gone(exc: ImapError, missing: bool) -> None:
    assert folder_missing(exc) is missing


def _logged(polls: list[bool]) -> list[str]:
    """Runs the decision over a series of polls (True: the folder was missing) the way FolderSync does."""
    out: list[str] = []
    was = False
    for missing in polls:
        change = presence_change(was, missing)
        if change is not None:
            out.append(change)
        was = missing
    return out


def test_a_folder_missing_on_many_polls_is_logged_once() -> None:
    assert _logged([False, True, True, True, True, True]) == ["gone"]


def test_a_folder_that_comes_back_and_goes_again_is_logged_again() -> None:
    assert _logged([True, True, False, False, True, True, False]) == ["gone", "back", "gone", "back"]


def test_a_folder_always_there_is_never_logged() -> None:
    assert _logged([False] * 5) == []
