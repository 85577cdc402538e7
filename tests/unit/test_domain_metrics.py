"""The domain metrics helpers: bounded labels, gauges that follow live state."""

from __future__ import annotations

import gc
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from mailsync import metrics


def sample(name: str, **labels: str) -> float:
    text = metrics.exposition()[0].decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


class _Conn:
    """Stands for an IMAP session (any object that can be weakly referenced)."""


def test_imap_connections_by_state_follow_each_connection() -> None:
    a, b = _Conn(), _Conn()
    base = {s: sample("mailsync_imap_connections", state=s) for s in metrics.IMAP_STATES}
    metrics.imap_state(a, "syncing")
    metrics.imap_state(b, "syncing")
    metrics.imap_state(b, "idle")
    assert sample("mailsync_imap_connections", state="syncing") == base["syncing"] + 1
    assert sample("mailsync_imap_connections", state="idle") == base["idle"] + 1
    metrics.imap_state(a, None)
    assert sample("mailsync_imap_connections", state="syncing") == base["syncing"]
    del b  # dropped without a clean close: leaves the gauge anyway
    gc.collect()
    assert sample("mailsync_imap_connections", state="idle") == base["idle"]


def test_idle_and_reconnect_reasons_are_bounded() -> None:
    class ConnectionLost(Exception):
        pass

    class ProtocolError(Exception):
        pass

    before = {r: sample("mailsync_imap_reconnects_total", reason=r) for r in ("connection_lost", "timeout")}
    metrics.observe_reconnect(ConnectionLost("bye"))
    metrics.observe_reconnect(TimeoutError())
    metrics.observe_reconnect(ConnectionRefusedError())
    metrics.observe_reconnect(ProtocolError())
    metrics.observe_reconnect(RuntimeError("NO [UNAVAILABLE]"))
    assert sample("mailsync_imap_reconnects_total", reason="connection_lost") == before["connection_lost"] + 1
    assert sample("mailsync_imap_reconnects_total", reason="timeout") == before["timeout"] + 1
    for reason in ("network", "protocol", "server_error"):
        assert sample("mailsync_imap_reconnects_total", reason=reason) >= 1
    restarts = sample("mailsync_imap_idle_total", ended="restart")
    metrics.observe_idle([])
    metrics.observe_idle(["EXISTS"])
    assert sample("mailsync_imap_idle_total", ended="restart") == restarts + 1
    assert sample("mailsync_imap_idle_total", ended="changes") >= 1


def test_initial_sync_progress_gauges() -> None:
    metrics.observe_sync_progress("t1", "unit-i1", "INBOX", 20, 100)
    metrics.observe_sync_progress("t1", "unit-i1", "Sent", 0, 10)
    folders = sample("mailsync_sync_initial_folders")
    remaining = sample("mailsync_sync_initial_remaining_messages")
    assert folders >= 2 and remaining >= 90
    metrics.observe_sync_progress("t1", "unit-i1", "INBOX", 60, 100)
    assert sample("mailsync_sync_initial_remaining_messages") == remaining - 40
    metrics.observe_sync_progress("t1", "unit-i1", "INBOX", 100, 100)
    metrics.observe_sync_progress("t1", "unit-i1", "Sent", 10, 10)
    assert sample("mailsync_sync_initial_folders") == folders - 2
    assert sample("mailsync_sync_initial_remaining_messages") == remaining - 90


def test_smtp_outcomes_by_reply_code() -> None:
    @dataclass
    class Refused(Exception):
        code: int

    @dataclass
    class AllRefused(Exception):
        recipients: list[Refused]

    before = {c: sample("mailsync_smtp_outcomes_total", code=c) for c in ("250", "550", "451", "none")}
    metrics.observe_smtp("250 2.0.0 Ok: queued as 12345")
    metrics.observe_smtp(Refused(550))
    metrics.observe_smtp(AllRefused([Refused(451)]))
    metrics.observe_smtp(None)
    metrics.observe_smtp(OSError("connection refused"))  # no reply at all
    metrics.observe_smtp("garbage")
    assert sample("mailsync_smtp_outcomes_total", code="250") == before["250"] + 1
    assert sample("mailsync_smtp_outcomes_total", code="550") == before["550"] + 1
    assert sample("mailsync_smtp_outcomes_total", code="451") == before["451"] + 1
    assert sample("mailsync_smtp_outcomes_total", code="none") == before["none"] + 3


def test_janitor_sweeps_and_linker_decisions() -> None:
    @dataclass
    class Stats:
        acquired: bool = True
        lost_lease: bool = False
        warned: int = 0
        cancelled: int = 0
        deactivated: int = 0
        purged_inboxes: int = 0

    warned = sample("mailsync_janitor_actions_total", action="warned")
    deactivated = sample("mailsync_janitor_actions_total", action="deactivated")
    skipped = sample("mailsync_janitor_sweeps_total", outcome="skipped")
    metrics.observe_sweep(Stats(warned=3, deactivated=1))
    metrics.observe_sweep(Stats(acquired=False, warned=5))
    metrics.observe_sweep(None)
    assert sample("mailsync_janitor_actions_total", action="warned") == warned + 3
    assert sample("mailsync_janitor_actions_total", action="deactivated") == deactivated + 1
    assert sample("mailsync_janitor_sweeps_total", outcome="skipped") == skipped + 1
    assert sample("mailsync_janitor_sweeps_total", outcome="failed") >= 1

    replies = sample("mailsync_linker_signals_total", kind="reply")
    linked = sample("mailsync_linker_links_total", outcome="linked")
    changed = sample("mailsync_linker_links_total", outcome="changed")
    metrics.observe_linked({"links": [{"record_id": "r1"}], "signal": "reply", "thread_id": "x"}, first=True)
    metrics.observe_linked({"links": [], "link_version": "v2"}, first=False)
    metrics.observe_linked({"thread_id": "x"}, first=False)  # nothing counted
    assert sample("mailsync_linker_signals_total", kind="reply") == replies + 1
    assert sample("mailsync_linker_links_total", outcome="linked") == linked + 1
    assert sample("mailsync_linker_links_total", outcome="changed") == changed + 1
