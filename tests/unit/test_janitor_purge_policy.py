"""What a deactivation's purge may delete and when it stops (pure): bounded by the deactivation time,
ended by a reactivation after it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.janitor.purge_policy import (
    STORED_AT,
    purge_bound,
    stop_reason,
    stored_before,
    stored_before_filter,
)

D = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # the deactivation
SECOND = timedelta(seconds=1)


def test_the_bound_is_the_recorded_deactivation_time() -> None:
    started = D + timedelta(hours=5)
    assert purge_bound({"deactivated_at": D}, started) == D
    # Stored without a zone (a client without tz_aware): read as UTC.
    assert purge_bound({"deactivated_at": D.replace(tzinfo=None)}, started) == D
    # An older case without the field: bounded by the purge's own start.
    assert purge_bound({}, started) == started
    assert purge_bound({"deactivated_at": "yesterday"}, started) == started


def test_only_documents_stored_before_the_deactivation_are_deleted() -> None:
    assert stored_before(D - SECOND, D)
    assert not stored_before(D, D)  # stored at the deactivation instant: the resync's, kept
    assert not stored_before(D + SECOND, D)
    assert stored_before((D - SECOND).replace(tzinfo=None), D)
    assert not stored_before((D + SECOND).replace(tzinfo=None), D)


def test_documents_without_a_usable_stamp_count_as_older() -> None:
    for unknown in (None, "2026-03-02", 1772366400, {"$date": 1}):
        assert stored_before(unknown, D)


def test_the_query_form_names_the_field_and_the_bound() -> None:
    assert stored_before_filter(STORED_AT, D) == {"stored_at": {"$not": {"$gte": D}}}
    assert stored_before_filter("written_at", D) == {"written_at": {"$not": {"$gte": D}}}


@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_stored_before_is_a_strict_cut_at_the_bound(offset: int) -> None:
    assert stored_before(D + timedelta(seconds=offset), D) == (offset < 0)


def test_a_resync_requested_after_the_deactivation_stops_the_purge() -> None:
    go_on = {"case_generation": 0, "current_generation": 0}
    assert stop_reason(None, D, **go_on) is None
    assert stop_reason({}, D, **go_on) is None
    assert stop_reason({"resync_requested_at": None}, D, **go_on) is None
    # A manual resync from before the deactivation is no reactivation.
    assert stop_reason({"resync_requested_at": D - SECOND}, D, **go_on) is None
    assert stop_reason({"resync_requested_at": D}, D, **go_on) is None
    assert stop_reason({"resync_requested_at": D + SECOND}, D, **go_on) == "reactivated"
    naive = (D + SECOND).replace(tzinfo=None)
    assert stop_reason({"resync_requested_at": naive}, D, **go_on) == "reactivated"


def test_a_newer_janitor_generation_stops_the_purge() -> None:
    assert stop_reason(None, D, case_generation=0, current_generation=1) == "new_generation"
    assert stop_reason(None, D, case_generation=2, current_generation=2) is None
    # A case of a later generation than the activity document (written before it): not stopped.
    assert stop_reason(None, D, case_generation=3, current_generation=2) is None
    # Both signs: the registry's comes first (it is the earlier one).
    both = stop_reason({"resync_requested_at": D + SECOND}, D, case_generation=0, current_generation=1)
    assert both == "reactivated"
