"""How the initial sync cuts its FETCH windows into units by the bytes of their bodies."""

from __future__ import annotations

from services.fetcher.sync.bodies import header_of, unit_length, without_body


def test_a_unit_is_the_longest_prefix_within_the_budget() -> None:
    assert unit_length([100, 100, 100], cap=1000, budget=250) == 2
    assert unit_length([100, 100, 100], cap=1000, budget=300) == 3
    assert unit_length([], cap=1000, budget=300) == 0


def test_a_body_over_the_budget_still_makes_a_unit_of_one() -> None:
    assert unit_length([900, 10], cap=1000, budget=100) == 1
    assert unit_length([10, 900], cap=1000, budget=100) == 1


def test_bodies_over_the_cap_are_not_fetched_so_cost_nothing() -> None:
    assert unit_length([5000, 100, 5000, 100], cap=1000, budget=250) == 4
    assert unit_length([100, 5000, 200], cap=1000, budget=250) == 2


def test_a_whole_message_reads_as_its_header_fetch() -> None:
    raw = b"Subject: x\r\nFrom: a@b\r\n\r\nbody\r\n\r\nmore"
    assert header_of(raw) == b"Subject: x\r\nFrom: a@b\r\n\r\n"
    assert header_of(b"no end of headers") == b"no end of headers"
    items = without_body({"UID": 3, "RFC822.SIZE": len(raw), "BODY[]": raw})
    assert items == {"UID": 3, "RFC822.SIZE": len(raw), "BODY[HEADER]": header_of(raw)}
    big = without_body({"UID": 4, "BODY[HEADER]": b"Subject: y\r\n\r\n", "BODY[]": None})
    assert big == {"UID": 4, "BODY[HEADER]": b"Subject: y\r\n\r\n"}
