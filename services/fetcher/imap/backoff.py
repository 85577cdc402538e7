"""Reconnect delays: exponential with full jitter, capped (10 minutes by default)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 1.0
    cap: float = 600.0
    factor: float = 2.0
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

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
