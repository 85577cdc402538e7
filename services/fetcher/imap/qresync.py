"""QRESYNC (RFC 7162) `VANISHED` responses → UID ranges, without expanding them.

`* VANISHED (EARLIER) 1:3,5` answers `EXAMINE ... (QRESYNC (uidvalidity modseq))` with what was
expunged since that MODSEQ; `* VANISHED 7` replaces `* N EXPUNGE` once QRESYNC is enabled. The set is
kept as ranges: a server may name ranges of UIDs it never had (RFC 7162 3.2.10 allows it), and a
hostile one `1:4294967295`, which must not become four billion integers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import ProtocolError, Untagged

MAX_UID = (1 << 32) - 1
MAX_RANGES = 10_000  # more than this in one response: treated as unusable, the caller falls back


@dataclass(frozen=True)
class Vanished:
    earlier: bool
    ranges: tuple[tuple[int, int], ...]  # inclusive (low, high), sorted, merged

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and any(lo <= uid <= hi for lo, hi in self.ranges)


def uid_ranges(spec: str) -> tuple[tuple[int, int], ...]:
    """`1:3,5,9:7` → ((1, 3), (5, 5), (7, 9)); merged and sorted. No `*` (not allowed in VANISHED)."""
    out: list[tuple[int, int]] = []
    parts = spec.split(",")
    if len(parts) > MAX_RANGES:
        raise ProtocolError(f"VANISHED with more than {MAX_RANGES} ranges")
    for part in parts:
        lo_s, sep, hi_s = part.partition(":")
        if not lo_s.isdigit() or (sep and not hi_s.isdigit()):
            raise ProtocolError(f"bad UID set in VANISHED: {part!r}")
        lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
        if lo > hi:
            lo, hi = hi, lo
        if lo < 1 or hi > MAX_UID:
            raise ProtocolError(f"UID out of range in VANISHED: {part!r}")
        out.append((lo, hi))
    out.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in out:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def parse_vanished(response: Untagged) -> Vanished:
    """`VANISHED [(EARLIER)] uid-set` → Vanished; ProtocolError when malformed."""
    if response.kind != "VANISHED":
        raise ProtocolError(f"not a VANISHED response: {response.kind}")
    values = list(response.values)
    earlier = False
    if values and isinstance(values[0], list):
        tags = [str(v).upper() for v in values[0]]
        if tags != ["EARLIER"]:
            raise ProtocolError(f"unknown VANISHED modifier {tags}")
        earlier = True
        values = values[1:]
    if len(values) != 1 or not isinstance(values[0], (str, int)) or isinstance(values[0], bool):
        raise ProtocolError("VANISHED needs exactly one UID set")
    return Vanished(earlier, uid_ranges(str(values[0])))


def merge(items: list[Vanished]) -> Vanished:
    ranges = [r for v in items for r in v.ranges]
    spec = ",".join(f"{lo}:{hi}" for lo, hi in ranges)
    return Vanished(any(v.earlier for v in items), uid_ranges(spec) if spec else ())
