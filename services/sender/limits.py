"""Per-inbox sending limits and the IMAP upload budget: presets per provider, and the decision.

Provider figures are their published limits (rounded down a little so we stop before they block):
Gmail/Workspace 2,000 messages/day (500 for consumer accounts, which we cannot tell apart: configure
`MAILSYNC_SENDER_DAILY_LIMIT`), Office 365 30 messages/minute and 10,000 recipients/day, Outlook.com
300/day, Yahoo 500/day, iCloud 1,000/day, Zoho 500/day. Gmail's IMAP upload budget is 500 MB/day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from contracts.common import ErrorInfo


@dataclass(frozen=True)
class SendLimits:
    per_day: int | None = None
    per_minute: int | None = None
    upload_bytes_per_day: int | None = None


PRESETS: dict[str, SendLimits] = {
    "gmail": SendLimits(per_day=2000, per_minute=60, upload_bytes_per_day=500 * 1000 * 1000),
    "google": SendLimits(per_day=2000, per_minute=60, upload_bytes_per_day=500 * 1000 * 1000),
    "office365": SendLimits(per_day=10000, per_minute=30),
    "outlook": SendLimits(per_day=300, per_minute=30),
    "yahoo": SendLimits(per_day=500, per_minute=20),
    "icloud": SendLimits(per_day=1000, per_minute=30),
    "zoho": SendLimits(per_day=500, per_minute=30),
}


def limits_for(
    provider: str | None,
    *,
    per_day: int | None = None,
    per_minute: int | None = None,
    upload_bytes_per_day: int | None = None,
) -> SendLimits:
    """The preset of the provider, with configured values taking precedence."""
    preset = PRESETS.get((provider or "").lower(), SendLimits())
    return SendLimits(
        per_day=per_day or preset.per_day,
        per_minute=per_minute or preset.per_minute,
        upload_bytes_per_day=upload_bytes_per_day or preset.upload_bytes_per_day,
    )


def day_bucket(now: datetime) -> str:
    return now.strftime("%Y%m%d")


def minute_field(now: datetime) -> str:
    return now.strftime("%H%M")


def next_minute(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


def next_day(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


@dataclass(frozen=True)
class Allow:
    pass


@dataclass(frozen=True)
class Delay:
    until: datetime
    reason: str


@dataclass(frozen=True)
class Refuse:
    error: ErrorInfo


def check_send(
    limits: SendLimits, day_count: int, minute_count: int, now: datetime
) -> Allow | Delay | Refuse:
    """Counts include the message being decided. Over the day: refuse; over the minute: wait."""
    if limits.per_day is not None and day_count > limits.per_day:
        return Refuse(
            ErrorInfo(
                code="send.rate_limited",
                message="rate limited: the inbox's daily sending limit of "
                f"{limits.per_day} messages is reached",
                hint="send again tomorrow (UTC) or raise MAILSYNC_SENDER_DAILY_LIMIT if the provider allows",
            )
        )
    if limits.per_minute is not None and minute_count > limits.per_minute:
        return Delay(next_minute(now), f"per-minute limit of {limits.per_minute} reached")
    return Allow()


def check_upload(limits: SendLimits, bytes_today: int, now: datetime) -> Allow | Delay:
    """`bytes_today` includes the message about to be appended."""
    if limits.upload_bytes_per_day is not None and bytes_today > limits.upload_bytes_per_day:
        return Delay(next_day(now), f"IMAP upload budget of {limits.upload_bytes_per_day} bytes/day used up")
    return Allow()
