"""Pure decisions of the linker: links, reply classification, threads, discovery, sharing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.common import Address
from contracts.messages import DeliveryReport, DeliveryStatus
from services.linker import discovery_rules, link_rules, reply_rules, threading_rules
from services.linker.addresses import InvalidAddress, normalize
from services.linker.link_rules import RecordRef
from services.linker.query_api import ApiError, Query, linked_emails, parse_query
from services.linker.store import InboxView, MemoryLinkStore


def _parts(**by_role: list[str]) -> dict[str, link_rules.Participant]:
    return link_rules.participants(
        {role: [Address(email=e) for e in emails] for role, emails in by_role.items()},  # type: ignore[misc]
        own={"me@corp.example"},
    )


def test_participants_merge_roles_and_drop_own_and_malformed() -> None:
    parts = _parts(
        sender=["Ann@Example.com"], recipient=["me@corp.example", "ann@example.com", "not an address"]
    )
    assert {e: p.roles for e, p in parts.items()} == {"ann@example.com": ["sender", "recipient"]}


def test_links_version_is_order_independent_and_changes_with_roles() -> None:
    directory = {
        "ann@example.com": [RecordRef("c1", "contact")],
        "bob@example.com": [RecordRef("l1", "lead")],
    }
    a, _ = link_rules.compute_links(_parts(sender=["ann@example.com"], cc=["bob@example.com"]), directory)
    b, _ = link_rules.compute_links(_parts(cc=["bob@example.com"], sender=["ann@example.com"]), directory)
    c, _ = link_rules.compute_links(_parts(sender=["ann@example.com"], bcc=["bob@example.com"]), directory)
    assert link_rules.link_version(a) == link_rules.link_version(b) != link_rules.link_version(c)
    added, removed = link_rules.diff_links(a, c)
    assert [lk.roles for lk in added] == [["bcc"]] and [lk.roles for lk in removed] == [["cc"]]


def test_plus_addressing_is_decided_per_call() -> None:
    directory = {"ann@example.com": [RecordRef("c1", "contact")]}
    parts = _parts(sender=["ann+crm@example.com"])
    assert link_rules.compute_links(parts, directory)[0] == []
    assert [lk.record_id for lk in link_rules.compute_links(parts, directory, plus_addressing=True)[0]] == [
        "c1"
    ]
    assert link_rules.lookup_keys(["ann+x@d.example"], plus_addressing=True) == {
        "ann+x@d.example",
        "ann@d.example",
    }


def _classify(**kw: object) -> reply_rules.Classification:
    args: dict[str, object] = {
        "from_emails": ["ann@example.com"],
        "subject": "Re: offer",
        "auto_submitted": None,
        "headers": {},
        "content_type": "text/plain",
        "delivery_report": None,
    }
    args.update(kw)
    return reply_rules.classify(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "kind"),
    [
        ({}, "human"),
        ({"auto_submitted": "no"}, "human"),
        ({"auto_submitted": "auto-replied"}, "auto_reply"),
        ({"auto_submitted": "auto-generated; owner-email=x"}, "auto_reply"),
        ({"headers": {"X-Autoreply": "yes"}}, "auto_reply"),
        ({"headers": {"x-autorespond": "1"}}, "auto_reply"),
        ({"headers": {"precedence": "bulk"}}, "auto_reply"),
        ({"headers": {"precedence": "auto_reply"}}, "auto_reply"),
        ({"headers": {"precedence": "junk"}}, "auto_reply"),
        ({"subject": "Automatic reply: offer"}, "auto_reply"),
        ({"subject": "Out of Office: back Monday"}, "auto_reply"),
        ({"subject": "Abwesenheitsnotiz: Angebot"}, "auto_reply"),
        ({"subject": "Re: our out of office party"}, "human"),
        ({"content_type": "multipart/report; report-type=delivery-status; boundary=x"}, "bounce"),
        ({"content_type": "multipart/report; report-type=disposition-notification"}, "human"),
        (
            {"from_emails": ["MAILER-DAEMON@mx.example"], "subject": "Undelivered Mail Returned to Sender"},
            "bounce",
        ),
        (
            {"from_emails": ["postmaster@mx.example"], "subject": "Delivery Status Notification (Failure)"},
            "bounce",
        ),
        ({"headers": {"x-failed-recipients": "a@x.example, b@x.example"}}, "bounce"),
    ],
)
def test_classify(kw: dict[str, object], kind: str) -> None:
    assert _classify(**kw).kind == kind


def test_bounce_details_from_the_report() -> None:
    report = DeliveryReport(
        recipients=[
            DeliveryStatus(
                final_recipient="rfc822;gone@x.example",
                action="failed",
                status="5.1.1",
                diagnostic="smtp; 550",
            ),
            DeliveryStatus(final_recipient="rfc822;ok@x.example", action="delivered", status="2.0.0"),
        ],
        original_message_id="orig@corp.example",
    )
    c = _classify(content_type="multipart/report; report-type=delivery-status", delivery_report=report)
    assert (c.bounced_recipients, c.status, c.permanent, c.original_message_id) == (
        ["gone@x.example"],
        "5.1.1",
        True,
        "orig@corp.example",
    )
    delayed = DeliveryReport(
        recipients=[DeliveryStatus(final_recipient="a@x.example", action="delayed", status="4.4.1")]
    )
    assert _classify(delivery_report=delayed).permanent is False
    assert _classify(headers={"x-failed-recipients": "a@x.example"}).bounced_recipients == ["a@x.example"]


def test_referenced_ids_nearest_first() -> None:
    assert reply_rules.referenced_ids(["<c@x>"], ["<a@x>", "<b@x>", "<c@x>"]) == ["c@x", "b@x", "a@x"]


def _thread(gmail: str | None, irt: list[str], refs: list[str], known: dict[str, str] | None = None) -> str:
    return threading_rules.thread_id(
        gmail_thread_id=gmail,
        message_id="m@x",
        message_key="k",
        in_reply_to=irt,
        references=refs,
        known_threads=known or {},
    )


def test_thread_ids() -> None:
    assert _thread("9", [], ["<r@x>"]) == "gm:9"
    assert _thread(None, ["p@x"], ["<r@x>", "<p@x>"]) == "mid:r@x"
    assert _thread(None, ["p@x"], []) == "mid:p@x"
    assert _thread(None, ["p@x"], [], {"p@x": "mid:root@x"}) == "mid:root@x"
    assert _thread(None, [], []) == "mid:m@x"


@pytest.mark.parametrize(
    "email",
    [
        "noreply@x.example",
        "no-reply@x.example",
        "do_not_reply@x.example",
        "mailer-daemon@x.example",
        "notifications@github.example",
        "support@x.example",
        "info@x.example",
        "bounces+123@x.example",
        "team-list-owner@x.example",
        "dev@googlegroups.com",
        "noreply-abc@x.example",
    ],
)
def test_unwanted_addresses(email: str) -> None:
    assert discovery_rules.is_unwanted(email)


@pytest.mark.parametrize(
    "email", ["ann@x.example", "information.officer@x.example", "supporter.jane@x.example"]
)
def test_people_are_wanted(email: str) -> None:
    assert not discovery_rules.is_unwanted(email)


def test_discovery_policy() -> None:
    assert not discovery_rules.eligible("off", "outbound", ["recipient"])
    assert discovery_rules.eligible("sent_only", "outbound", ["cc"])
    assert not discovery_rules.eligible("sent_only", "outbound", ["sender"])
    assert not discovery_rules.eligible("sent_only", "inbound", ["sender"])
    assert discovery_rules.eligible("sent_and_received", "inbound", ["sender"])


# ---- sharing: a property over random inboxes, shares and viewers ------------------------------------

USERS = ["u1", "u2", "u3", "u4"]
LEVELS = ["private", "metadata", "subject", "full"]

inbox_st = st.tuples(
    st.sampled_from(["t1", "t2"]),
    st.sampled_from(USERS),
    st.sampled_from(LEVELS),
    st.lists(st.sampled_from(USERS), max_size=3, unique=True),
)


@settings(max_examples=150, deadline=None)
@given(
    inboxes=st.lists(inbox_st, min_size=1, max_size=5),
    messages=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=12),
    viewer=st.sampled_from(USERS),
    viewer_tenant=st.sampled_from(["t1", "t2"]),
    owner_filter=st.sampled_from(["all", *USERS]),
)
async def test_query_shows_exactly_what_the_viewer_may_see(
    inboxes: list[tuple[str, str, str, list[str]]],
    messages: list[int],
    viewer: str,
    viewer_tenant: str,
    owner_filter: str,
) -> None:
    store = MemoryLinkStore()
    for t in ("t1", "t2"):
        store.add_record(t, RecordRef("r1", "contact"), ["ann@example.com"])
    for n, (tenant, owner, sharing, shared) in enumerate(inboxes):
        store.inbox_docs[(tenant, f"i{n}")] = InboxView(
            tenant, f"i{n}", owner, f"{owner}@corp", sharing=sharing, shared_with=tuple(shared)
        )  # type: ignore[arg-type]
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for m, which in enumerate(messages):
        n = which % len(inboxes)
        tenant = inboxes[n][0]
        store.messages[f"{tenant}:i{n}:m{m}"] = {
            "_id": f"{tenant}:i{n}:m{m}",
            "tenant_id": tenant,
            "inbox_id": f"i{n}",
            "message_key": f"m{m}",
            "direction": "inbound",
            "sort_at": at + timedelta(minutes=m % 3),
            "subject": f"subject {m}",
            "ref": {"message_key": f"m{m}", "folder": "INBOX", "uidvalidity": 1, "uid": m},
            "record_ids": ["r1"],
            "links": [],
            "deleted": False,
        }
    # Page through with a small page size: every page obeys the rules and pages never overlap.
    seen: list[dict[str, object]] = []
    cursor = None
    while True:
        page = await linked_emails(store, Query(viewer_tenant, viewer, "r1", owner_filter, 2, cursor))
        seen += page["items"]
        if not page["next_cursor"]:
            break
        from services.linker.query_api import decode_cursor

        cursor = decode_cursor(page["next_cursor"])
    keys = [i["message_key"] for i in seen]
    assert len(keys) == len(set(keys))

    expected = {}
    for m, which in enumerate(messages):
        n = which % len(inboxes)
        tenant, owner, sharing, shared = inboxes[n]
        # The rule, stated independently: the owner sees all; others what is shared with them.
        shared_level = sharing if viewer in shared and sharing != "private" else None
        level = "full" if viewer == owner else shared_level
        if tenant == viewer_tenant and level and owner_filter in ("all", owner):
            expected[f"m{m}"] = level
    assert {i["message_key"]: i["visibility"] for i in seen} == expected
    for item in seen:
        n = int(str(item["inbox_id"])[1:])
        assert inboxes[n][0] == viewer_tenant  # never another tenant's mail
        if item["visibility"] == "full":
            assert item["subject"] and item["ref"]
        elif item["visibility"] == "subject":
            assert item["subject"] and item["ref"] is None
        else:
            assert item["subject"] is None and item["ref"] is None
    dates = [i["date"] for i in seen]
    assert dates == sorted(dates, reverse=True)


def test_query_identity_and_tenant_checks() -> None:
    with pytest.raises(ApiError) as e:
        parse_query({}, "record_id=r1")
    assert e.value.status == 401
    with pytest.raises(ApiError) as e:
        parse_query({"x-mailsync-tenant": "t1", "x-mailsync-user": "u1"}, "record_id=r1&tenant_id=t2")
    assert e.value.status == 403
    with pytest.raises(ApiError) as e:
        parse_query({"x-mailsync-tenant": "t1", "x-mailsync-user": "u1"}, "record_id=r1&limit=0")
    assert e.value.status == 400
    q = parse_query({"x-mailsync-tenant": "t1", "x-mailsync-user": "u1"}, "record_id=r1&owner=u2&limit=5")
    assert (q.tenant_id, q.viewer, q.record_id, q.owner, q.limit) == ("t1", "u1", "r1", "u2", 5)


async def test_record_of_another_tenant_is_not_found() -> None:
    store = MemoryLinkStore()
    store.add_record("t2", RecordRef("r1", "contact"), ["ann@example.com"])
    with pytest.raises(ApiError) as e:
        await linked_emails(store, Query("t1", "u1", "r1"))
    assert e.value.status == 404


_ATOM = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-",
    min_size=1,
    max_size=12,
)
_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)


@settings(max_examples=400, deadline=None)
@given(
    local=st.lists(_ATOM, min_size=1, max_size=3).map(".".join),
    labels=st.lists(_LABEL, min_size=1, max_size=4),
    strip=st.booleans(),
)
def test_fast_address_path_agrees_with_the_full_parser(local: str, labels: list[str], strip: bool) -> None:
    from services.linker.addresses import normalize_full

    raw = f"{local}@{'.'.join(labels)}"
    try:
        expected: str | None = normalize_full(raw, strip_plus=strip)
    except InvalidAddress:
        expected = None
    try:
        got: str | None = normalize(raw, strip_plus=strip)
    except InvalidAddress:
        got = None
    assert got == expected
