"""IMAP sequence sets (`1:5,7,9:12`) ↔ sorted UID lists, and UID ranges split into bounded chunks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def compress(uids: Iterable[int]) -> str:
    """Sorted, de-duplicated ranges: [1, 2, 3, 5] → `1:3,5`; empty input → empty string."""
    out: list[str] = []
    start = prev = -1
    for uid in sorted(set(uids)):
        if uid == prev + 1 and start >= 0:
            prev = uid
            continue
        if start >= 0:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if start >= 0:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


def expand(spec: str, star: int | None = None) -> list[int]:
    """`1:3,5` → [1, 2, 3, 5]. `*` needs `star` (the largest value in use)."""
    out: set[int] = set()
    for part in filter(None, spec.split(",")):
        lo_s, _, hi_s = part.partition(":")
        lo = _num(lo_s, star)
        hi = _num(hi_s, star) if hi_s else lo
        if lo > hi:
            lo, hi = hi, lo
        out.update(range(lo, hi + 1))
    return sorted(out)


def _num(s: str, star: int | None) -> int:
    if s == "*":
        if star is None:
            raise ValueError("sequence set uses '*' but no largest value was given")
        return star
    if not s.isdigit():
        raise ValueError(f"not a sequence number: {s!r}")
    return int(s)


def chunks_desc(uids: list[int], size: int) -> Iterator[list[int]]:
    """Sorted UIDs cut into chunks of at most `size`, newest (highest) chunk first."""
    ordered = sorted(uids, reverse=True)
    for i in range(0, len(ordered), size):
        yield sorted(ordered[i : i + size])
