"""What the initial sync's header pass learnt about each message, kept for the body backlog after it.

The backlog needs each message's RFC822.SIZE (to cut units within the byte budget and to leave bodies
over the cap) and its message key (the body document's id). The header pass had both; keeping them
saves the backlog a size FETCH per unit and parsing every header block a second time (bench/sync.py,
100,000 messages: ~2.5 CPU-s of this process). A message's size and key cannot change under one
UIDVALIDITY (IMAP messages are immutable), so a hint is as good as asking again.

Bounded twice, ~250 bytes a hint: `limit` per folder and a pool shared by every folder of the process
(many big inboxes syncing at once). Beyond either nothing more is kept and the backlog asks the server,
as it does after a restart, when there are no hints at all.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_LIMIT = 100_000


class HintPool:
    """How many hints the folders sharing it hold, at most `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


PROCESS_POOL = HintPool(400_000)  # ~100 MB at most, whatever the number of inboxes


class BodyHints:
    def __init__(self, limit: int = DEFAULT_LIMIT, pool: HintPool = PROCESS_POOL) -> None:
        self._limit = limit
        self._pool = pool
        self._uidvalidity: int | None = None
        self._by_uid: dict[int, tuple[str, int]] = {}

    def __len__(self) -> int:
        return len(self._by_uid)

    def __del__(self) -> None:
        self._pool.used -= len(self._by_uid)  # a folder dropped with hints left gives them back

    def note(self, uidvalidity: int, uid: int, key: str, size: int) -> None:
        """A message the header pass announced; a size of 0 (no RFC822.SIZE) is not a size to trust."""
        if uidvalidity != self._uidvalidity:
            self.clear()
            self._uidvalidity = uidvalidity
        by_uid, pool = self._by_uid, self._pool
        if size > 0 and uid not in by_uid and len(by_uid) < self._limit and pool.used < pool.limit:
            by_uid[uid] = (key, size)
            pool.used += 1

    def sizes(self, uidvalidity: int, uids: Iterable[int]) -> dict[int, int]:
        """Known sizes among `uids` (none under another UIDVALIDITY)."""
        if uidvalidity != self._uidvalidity:
            return {}
        by_uid = self._by_uid
        return {u: by_uid[u][1] for u in uids if u in by_uid}

    def take_keys(self, uidvalidity: int, uids: Iterable[int]) -> dict[int, str]:
        """Known keys among `uids`, forgotten as they are handed out (each body is stored once)."""
        if uidvalidity != self._uidvalidity:
            return {}
        pop = self._by_uid.pop
        keys = {u: hint[0] for u in uids if (hint := pop(u, None)) is not None}
        self._pool.used -= len(keys)
        return keys

    def clear(self) -> None:
        self._pool.used -= len(self._by_uid)
        self._by_uid.clear()
        self._uidvalidity = None
