"""Per-inbox daily download budget (Gmail: 2,500 MB/day): count bytes, decide when to pause. No I/O.

Going over a provider's daily limit locks the account for up to a day; stopping just below it and
resuming at the next UTC day keeps the inbox syncing instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

GMAIL_DAILY_BYTES = 2500 * 1000 * 1000


@dataclass
class DownloadBudget:
    limit: int | None  # bytes per UTC day; None: unlimited
    day: str = ""
    used: int = 0

    def add(self, nbytes: int, now: datetime) -> None:
        today = now.astimezone(UTC).date().isoformat()
        if today != self.day:
            self.day, self.used = today, 0
        self.used += max(0, nbytes)

    def resume_at(self, now: datetime) -> datetime | None:
        """None while within budget; else the start of the next UTC day."""
        today = now.astimezone(UTC).date().isoformat()
        if self.limit is None or today != self.day or self.used < self.limit:
            return None
        start = datetime.fromisoformat(today).replace(tzinfo=UTC)
        return start + timedelta(days=1)


def daily_limit(provider: str | None, gmail: bool, configured_mb: int | None) -> int | None:
    """The configured budget wins; Gmail gets its published limit by default."""
    if configured_mb is not None:
        return configured_mb * 1000 * 1000
    if gmail or provider == "gmail":
        return GMAIL_DAILY_BYTES
    return None
