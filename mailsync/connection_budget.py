"""How many IMAP connections mailsync may hold per mail account, and who gets which. No I/O.

Providers refuse logins past a per-account count of simultaneous IMAP connections ("Too many
simultaneous connections"), and the account owner's own clients (phone, desktop) count against the
same limit. The fetcher (sync) and the sender (Sent-copy APPEND) compute the same split from the same
inputs, so they share one budget without talking to each other.

Also the fetcher's plan of folders onto connections when it has more folders than connections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Per-account limits by preset id. Gmail: 15 (Gmail Help, "Too many simultaneous connections");
# Exchange Online / Outlook.com: MaxConnectionsPerUser defaults to 16; Yahoo/AOL (one platform): ~5;
# iCloud: ~5 reported, so the strict figure; Zoho: 10 (the preset's figure).
PROVIDER_LIMITS: dict[str, int] = {
    "gmail": 15,
    "outlook": 16,
    "office365": 16,
    "yahoo": 5,
    "aol": 5,
    "icloud": 5,
    "zoho": 10,
}
# Custom servers: Dovecot's default `mail_max_userip_connections` is 10 (per user and client IP).
DEFAULT_LIMIT = 10
MIN_CONNECTIONS = 2  # one for the fetcher, one for the sender

# Custom records of a known provider's servers (no preset id): known by the IMAP host's domain.
_HOST_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("gmail.com", "gmail"),
    ("googlemail.com", "gmail"),
    ("mail.yahoo.com", "yahoo"),
    ("aol.com", "aol"),
    ("office365.com", "office365"),
    ("outlook.com", "outlook"),
    ("mail.me.com", "icloud"),
    ("zoho.com", "zoho"),
    ("zoho.eu", "zoho"),
    ("zoho.in", "zoho"),
)


@dataclass(frozen=True)
class ConnectionShares:
    usable: int  # connections mailsync may hold for the account, both services together
    fetcher: int
    sender: int


def known_provider(provider: str | None, imap_host: str) -> str | None:
    """The preset id, else one recognised from the IMAP host name."""
    if provider in PROVIDER_LIMITS:
        return provider
    host = imap_host.lower().rstrip(".")
    for suffix, name in _HOST_SUFFIXES:
        if host == suffix or host.endswith("." + suffix):
            return name
    return provider


def connection_shares(
    provider: str | None, imap_host: str, configured: int | None = None
) -> ConnectionShares:
    """The account's budget split between the fetcher and the sender.

    `configured` (settings) is the number mailsync may use in all, taken as is. Otherwise a third of
    the provider's limit is left to the owner's own clients. The sender gets one connection on small
    budgets and two otherwise (a Sent copy per send is short); the fetcher gets the rest.
    """
    if configured is not None:
        usable = max(MIN_CONNECTIONS, configured)
    else:
        limit = PROVIDER_LIMITS.get(known_provider(provider, imap_host) or "", DEFAULT_LIMIT)
        usable = max(MIN_CONNECTIONS, limit - limit // 3)
    sender = 1 if usable <= 4 else 2
    return ConnectionShares(usable=usable, fetcher=usable - sender, sender=sender)


@dataclass(frozen=True)
class Lane:
    """One connection of the fetcher: one folder that may IDLE, or folders polled in turn."""

    folders: tuple[str, ...]
    idle: bool


def plan_lanes(folders: Sequence[tuple[str, bool]], connections: int) -> list[Lane]:
    """Folders (name, wants IDLE), in priority order, onto at most `connections` connections.

    Within the share every folder keeps its own connection. Over it, the IDLE folders keep dedicated
    connections (all but one connection at most), and the remaining folders are spread round-robin
    over the connections left, each polled in turn.
    """
    if connections < 1:
        raise ValueError("at least one connection is needed")
    if len(folders) <= connections:
        return [Lane((name,), idle) for name, idle in folders]
    dedicated = [name for name, idle in folders if idle][: connections - 1]
    rest = [name for name, _ in folders if name not in dedicated]
    left = connections - len(dedicated)
    wants = dict(folders)
    groups = [tuple(rest[i::left]) for i in range(left)]
    shared = [Lane(g, len(g) == 1 and wants[g[0]]) for g in groups if g]
    return [Lane((name,), True) for name in dedicated] + shared
