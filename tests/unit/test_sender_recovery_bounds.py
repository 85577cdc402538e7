"""The sender's crash-recovery bounds: the journal write after SMTP is retried briefly, and a send whose
outcome keeps getting lost is resent only up to `sender_max_attempts` (then failed and dead-lettered)."""

from __future__ import annotations

import random

import pytest
from pymongo.errors import BulkWriteError, OperationFailure

from services.sender import delivery
from services.sender.failures import (
    retry_decision,
    smtp_code_failure,
    unconfirmed_decision,
    write_retry_delay,
)


@pytest.mark.parametrize(
    ("attempts", "limit", "decision"),
    [(0, 3, "resend"), (1, 3, "resend"), (2, 3, "resend"), (3, 3, "exhausted"), (7, 3, "exhausted")],
)
def test_an_unconfirmed_send_is_resent_only_within_the_attempt_bound(
    attempts: int, limit: int, decision: str
) -> None:
    assert unconfirmed_decision("resend", attempts, limit) == decision


def test_the_bound_matches_the_normal_retry_path() -> None:
    # Past the first attempt the recovery resend and the retry after a 4xx stop at the same count.
    transient = smtp_code_failure(451, "4.3.0 busy")
    for limit in (1, 2, 6):
        for attempts in range(1, limit + 3):
            resend = unconfirmed_decision("resend", attempts, limit) == "resend"
            assert resend == (retry_decision(transient, attempts, limit) == "retry"), (attempts, limit)


def test_the_fail_policy_never_resends() -> None:
    assert unconfirmed_decision("fail", 0, 6) == "fail"
    assert unconfirmed_decision("fail", 6, 6) == "fail"


def test_write_retry_delays_are_jittered_and_bounded() -> None:
    rand = random.Random(3)
    delays = [write_retry_delay(n, 5, 0.2, 1.6, rand) for n in range(1, 6)]
    assert delays[-1] is None  # the fifth failed write is the last one
    waits = [d for d in delays if d is not None]
    assert len(waits) == 4
    for n, wait in enumerate(waits, start=1):
        ceiling = min(1.6, 0.2 * 2 ** (n - 1))
        assert ceiling / 2 <= wait <= ceiling, (n, wait)
    # Jittered: two generators give different waits for the same attempt.
    assert write_retry_delay(2, 5, 0.2, 1.6, random.Random(1)) != write_retry_delay(
        2, 5, 0.2, 1.6, random.Random(2)
    )
    assert write_retry_delay(1, 1, 0.2, 1.6) is None


def test_the_journal_retries_fit_within_a_few_seconds_and_the_shutdown_step() -> None:
    # "Fails twice then succeeds" needs at least three attempts; all retries together (worst case)
    # must end within the bounded shutdown step that closes the journal's group commit.
    assert delivery.JOURNAL_WRITE_ATTEMPTS >= 3
    worst = 0.0
    for n in range(1, delivery.JOURNAL_WRITE_ATTEMPTS):
        worst += min(delivery.JOURNAL_RETRY_MAX_SECONDS, delivery.JOURNAL_RETRY_BASE_SECONDS * 2 ** (n - 1))
    assert worst <= 3.0 < delivery.STOP_STEP_SECONDS


def test_the_journal_failure_log_text_carries_no_documents() -> None:
    # A bulk write error's details hold the documents (recipients, the SMTP reply): the log names
    # the codes and the server's words only, secrets scrubbed.
    bulk = BulkWriteError(
        {
            "writeErrors": [
                {
                    "index": 0,
                    "code": 1,
                    "errmsg": "database is locked",
                    "op": {"_id": "t1:i1:k1:sent", "smtp": {"response": "250 ok bob@example.test"}},
                }
            ]
        }
    )
    text = delivery._write_error_text(bulk)
    assert text == "BulkWriteError: 1: database is locked"
    plain = delivery._write_error_text(OperationFailure("database is locked password=hunter2", code=1))
    assert "database is locked" in plain and "hunter2" not in plain
