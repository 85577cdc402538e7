"""The cleanup policy, pure: each rule fires at its threshold and not a day before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.janitor.cleanup_policy import Case, InboxFacts, Thresholds, decide, next_due

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
TH = Thresholds.days(30, 150, 7)


def test_never_opened_counts_from_the_baseline() -> None:
    facts = InboxFacts(baseline_at=T0, user_active_at=T0 + 100 * DAY)
    assert decide(facts, None, T0 + 22 * DAY, TH).action == "none"
    assert decide(facts, None, T0 + 23 * DAY - timedelta(seconds=1), TH).action == "none"
    warn = decide(facts, None, T0 + 23 * DAY, TH)
    assert (warn.action, warn.reason, warn.deactivate_at) == ("warn", "unopened", T0 + 30 * DAY)
    case = Case("warned", "unopened", T0 + 30 * DAY)
    assert decide(facts, case, T0 + 29 * DAY, TH).action == "none"
    assert decide(facts, case, T0 + 30 * DAY - timedelta(seconds=1), TH).action == "none"
    assert decide(facts, case, T0 + 30 * DAY, TH).action == "deactivate"


def test_user_inactive_rule_is_independent() -> None:
    # Mail opened every day by a teammate, but the owner idle since T0.
    now = T0 + 149 * DAY
    facts = InboxFacts(baseline_at=T0, last_opened_at=now, user_active_at=T0)
    assert decide(facts, None, T0 + 142 * DAY, TH).action == "none"
    warn = decide(facts, None, T0 + 143 * DAY, TH)
    assert (warn.action, warn.reason, warn.deactivate_at) == ("warn", "user_inactive", T0 + 150 * DAY)
    case = Case("warned", "user_inactive", T0 + 150 * DAY)
    assert decide(facts, case, now, TH).action == "none"
    d = decide(facts, case, T0 + 150 * DAY, TH)
    assert (d.action, d.reason) == ("deactivate", "user_inactive")


def test_an_open_cancels_an_unopened_warning() -> None:
    case = Case("warned", "unopened", T0 + 30 * DAY)
    facts = InboxFacts(baseline_at=T0, last_opened_at=T0 + 25 * DAY, user_active_at=T0 + 25 * DAY)
    d = decide(facts, case, T0 + 26 * DAY, TH)
    assert (d.action, d.reason, d.deactivate_at) == ("cancel", "unopened", T0 + 30 * DAY)


def test_late_discovery_still_gives_full_notice() -> None:
    facts = InboxFacts(baseline_at=T0, user_active_at=T0 + 200 * DAY)
    d = decide(facts, None, T0 + 90 * DAY, TH)
    assert (d.action, d.deactivate_at) == ("warn", T0 + 97 * DAY)


def test_without_warning_days_it_acts_at_the_threshold() -> None:
    th = Thresholds.days(30, 150, 0)
    facts = InboxFacts(baseline_at=T0, user_active_at=T0 + 100 * DAY)
    assert decide(facts, None, T0 + 30 * DAY - timedelta(seconds=1), th).action == "none"
    assert decide(facts, None, T0 + 30 * DAY, th).action == "deactivate"


def test_deactivated_cases_are_left_alone() -> None:
    facts = InboxFacts(baseline_at=T0)
    for status in ("deactivating", "deactivated"):
        case = Case(status, "unopened", T0 + 30 * DAY)  # type: ignore[arg-type]
        assert decide(facts, case, T0 + 400 * DAY, TH).action == "none"


times = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC))


@given(times, st.none() | times, st.none() | times, st.integers(0, 400))
def test_nothing_happens_before_next_due(
    baseline: datetime, opened: datetime | None, active: datetime | None, days_later: int
) -> None:
    facts = InboxFacts(baseline, opened, active)
    now = baseline + days_later * DAY
    d = decide(facts, None, now, TH)
    assert (d.action == "none") == (now < next_due(facts, TH))
    if d.action == "warn":
        assert d.deactivate_at is not None and d.deactivate_at - now >= TH.warning
        # A warned inbox is never deactivated before the warning's date.
        case = Case("warned", d.reason or "unopened", d.deactivate_at)
        assert decide(facts, case, d.deactivate_at - timedelta(seconds=1), TH).action != "deactivate"
        assert decide(facts, case, d.deactivate_at, TH).action == "deactivate"
