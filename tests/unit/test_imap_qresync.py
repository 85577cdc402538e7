"""QRESYNC VANISHED parsing (services/fetcher/imap/qresync.py): ranges kept as ranges, bad input refused."""

from __future__ import annotations

import pytest

from services.fetcher.imap.protocol import ProtocolError, ResponseFramer, Untagged, parse_response
from services.fetcher.imap.qresync import merge, parse_vanished, uid_ranges


def untagged(line: bytes) -> Untagged:
    (raw,) = ResponseFramer().feed(line + b"\r\n")
    resp = parse_response(raw)
    assert isinstance(resp, Untagged)
    return resp


def test_vanished_earlier_with_ranges() -> None:
    v = parse_vanished(untagged(b"* VANISHED (EARLIER) 1:3,5,9:7"))
    assert v.earlier
    assert v.ranges == ((1, 3), (5, 5), (7, 9))
    assert 2 in v and 5 in v and 8 in v
    assert 4 not in v and 10 not in v


def test_vanished_without_earlier_single_uid() -> None:
    v = parse_vanished(untagged(b"* VANISHED 41"))
    assert not v.earlier
    assert v.ranges == ((41, 41),)


def test_huge_range_is_not_expanded() -> None:
    v = parse_vanished(untagged(b"* VANISHED (EARLIER) 1:4294967295"))
    assert v.ranges == ((1, 4294967295),)
    assert 4294967295 in v


def test_ranges_are_merged_and_sorted() -> None:
    assert uid_ranges("10:12,1,2,11:15,3") == ((1, 3), (10, 15))
    both = merge(
        [parse_vanished(untagged(b"* VANISHED (EARLIER) 5:6")), parse_vanished(untagged(b"* VANISHED 7"))]
    )
    assert both.ranges == ((5, 7),) and both.earlier
    assert merge([]).ranges == ()


@pytest.mark.parametrize(
    "line",
    [
        b"* VANISHED (LATER) 1:3",
        b"* VANISHED (EARLIER)",
        b"* VANISHED 1:*",
        b"* VANISHED 0",
        b"* VANISHED 4294967296",
        b"* VANISHED 1:3 5",
        b"* VANISHED abc",
    ],
)
def test_malformed_vanished_is_refused(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_vanished(untagged(line))


def test_too_many_ranges_is_refused() -> None:
    with pytest.raises(ProtocolError):
        uid_ranges(",".join(str(i * 2) for i in range(1, 10_002)))
