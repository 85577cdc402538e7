"""Reconnect delays: exponential with full jitter, capped (10 minutes by default)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# One generator for every Backoff: a `random.Random` holds ~2.5 KB of state, and a replica keeps
# three Backoffs per inbox (tens of MB at 10,000 inboxes). Tests pass their own seeded one.
_SHARED_RNG = random.Random()


@dataclass
class Backoff:
    base: float = 1.0
    cap: float = 600.0
    factor: float = 2.0
    failures: int = 0
    rng: random.Random = field(default=_SHARED_RNG)

    def next_delay(self) -> float:
        """Delay before the next attempt; each call counts one more failure.

        Full jitter (uniform between half and the whole exponential step) spreads reconnects of many
        inboxes after a server outage instead of having them all retry in the same second.
        """
        step = min(self.cap, self.base * self.factor ** min(self.failures, 64))
        self.failures += 1
        return self.rng.uniform(step / 2, step)

    def reset(self) -> None:
        self.failures = 0
