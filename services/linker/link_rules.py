"""Which CRM records a message links to: pure decisions, no I/O.

Input: the message's participants by header and the directory's answer for their addresses.
Output: one link per matching record (every match, never a silent pick), the roles it plays, the
addresses that matched several records, and a version hash of the link set (same links → same hash →
same event id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from contracts.common import Address, RecordType
from contracts.links import LinkRole, RecordLink

from .addresses import InvalidAddress, normalize, normalized_cache

# Header → role, in the order roles are listed on a link.
ROLE_ORDER: tuple[LinkRole, ...] = ("sender", "recipient", "cc", "bcc", "reply_to")


@dataclass(frozen=True, slots=True)
class RecordRef:
    record_id: str
    record_type: RecordType


@dataclass(slots=True)
class Participant:
    email: str
    name: str | None
    roles: list[LinkRole] = field(default_factory=list)


def own_addresses(inbox_email: str | None, aliases: Iterable[str]) -> set[str]:
    """The inbox's own normalised addresses (its address and its From aliases)."""
    own: set[str] = set()
    for raw in [inbox_email or "", *aliases]:
        try:
            own.add(normalize(raw))
        except InvalidAddress:
            continue
    return own


def participants(by_role: Mapping[LinkRole, Sequence[Address]], own: set[str]) -> dict[str, Participant]:
    """Normalised participant → roles, the inbox's own addresses and malformed addresses left out."""
    out: dict[str, Participant] = {}
    cached = normalized_cache()
    for role in ROLE_ORDER:
        addrs = by_role.get(role)
        if not addrs:
            continue
        for addr in addrs:
            email = cached.get(addr.email)  # the hot path: an address seen before, no call at all
            if email is None:
                try:
                    email = normalize(addr.email)
                except InvalidAddress:
                    continue
            if email in own:
                continue
            p = out.get(email)
            if p is None:
                out[email] = Participant(email, addr.name, [role])
                continue
            if p.name is None and addr.name:
                p.name = addr.name
            if role not in p.roles:
                p.roles.append(role)
    return out


def strip_plus(email: str) -> str:
    local, _, domain = email.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}" if "+" in local else email


def lookup_keys(emails: Iterable[str], *, plus_addressing: bool) -> set[str]:
    """Directory keys to fetch: each address, and its base address when plus-addressing is on."""
    keys = set(emails)
    if plus_addressing:
        keys |= {strip_plus(e) for e in keys}
    return keys


def compute_links(
    parts: Mapping[str, Participant],
    directory: Mapping[str, Sequence[RecordRef]],
    *,
    plus_addressing: bool = False,
) -> tuple[list[RecordLink], list[str]]:
    """Links to every record any participant matches, plus the addresses that matched several records."""
    by_record: dict[str, tuple[RecordRef, str, set[LinkRole]]] = {}
    ambiguous: list[str] = []
    for email in sorted(parts):
        found = directory.get(email, ())
        if plus_addressing and (base := strip_plus(email)) != email and base in directory:
            found = [*found, *directory[base]]
        if not found:
            continue
        if len(found) == 1:
            refs: Iterable[RecordRef] = found
        else:
            by_id = {ref.record_id: ref for ref in reversed(found)}  # first occurrence wins
            if len(by_id) > 1:
                ambiguous.append(email)
            refs = by_id.values()
        roles = parts[email].roles
        for ref in refs:
            entry = by_record.get(ref.record_id)
            if entry is None:
                by_record[ref.record_id] = (ref, email, set(roles))
            else:
                entry[2].update(roles)
    links = [
        RecordLink(
            record_id=rid,
            record_type=ref.record_type,
            email=email,
            roles=[r for r in ROLE_ORDER if r in roles],
        )
        for rid, (ref, email, roles) in sorted(by_record.items())
    ]
    return links, ambiguous


def link_version(links: Sequence[RecordLink]) -> str:
    """Stable hash of a link set: independent of order, changes when any link or role changes."""
    # Unit separator between fields: record ids and addresses cannot contain it.
    canon = sorted(
        [f"{lk.record_id}\x1f{lk.record_type}\x1f{lk.email}\x1f{','.join(sorted(lk.roles))}" for lk in links]
    )
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()[:32]


def diff_links(
    old: Sequence[RecordLink], new: Sequence[RecordLink]
) -> tuple[list[RecordLink], list[RecordLink]]:
    """(added, removed); a link whose email or roles changed is removed and added."""
    old_set = {lk.model_dump_json(): lk for lk in old}
    new_set = {lk.model_dump_json(): lk for lk in new}
    added = [new_set[k] for k in sorted(new_set.keys() - old_set.keys())]
    removed = [old_set[k] for k in sorted(old_set.keys() - new_set.keys())]
    return added, removed
