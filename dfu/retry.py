"""One retry policy for every place that tries again: capped exponential backoff with jitter.

The n-th wait (n from 0) is `min(max_s, initial_s * 2**n + uniform(0, jitter_s))`, the formula `stamina` uses,
so a bounded operation retried with `stamina` (a download, a BLE connection) and a link that must come back
forever (the MQTT link, the job service's bridge, `Backoff`) back off the same way. A link also takes a random
fraction up to `spread` off each wait: stamina's jitter vanishes at the cap, and gateways that lost their
broker together would otherwise come back in step every `max_s`. A success resets the count.
docs/architecture.md ("Retries") lists every site with its numbers.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import stamina


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float
    max_s: float
    jitter_s: float = 0.0
    attempts: int | None = None
    """tries in all for a bounded operation (None: until it succeeds)"""
    spread: float = 0.0
    """a link's waits: each loses a random fraction of itself up to this (0.5: between half and all of it)"""

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.jitter_s < 0 or not 0 <= self.spread < 1:
            raise ValueError(
                f"retry policy needs 0 < initial_s <= max_s, jitter_s >= 0, 0 <= spread < 1: {self}"
            )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failure number `attempt` (0-based)."""
        jitter = (rng or random).uniform(0.0, self.jitter_s) if self.jitter_s else 0.0
        return min(self.max_s, self.initial_s * 2.0 ** min(attempt, 60) + jitter)

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        return Backoff(self, rng or random.Random())

    def retrying(self, on: type[Exception] | tuple[type[Exception], ...]) -> AsyncIterator[stamina.Attempt]:
        """`async for attempt in policy.retrying(on=...): with attempt: ...` (stamina, same waits)."""
        return stamina.retry_context(
            on=on,
            attempts=self.attempts,
            timeout=None,
            wait_initial=self.initial_s,
            wait_max=self.max_s,
            wait_jitter=self.jitter_s,
            wait_exp_base=2,
        )


@dataclass
class Backoff:
    """The waits of a link that must come back (sans-I/O: the caller sleeps); `reset` after a success."""

    policy: RetryPolicy
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        delay = self.policy.delay(self.attempt, self.rng)
        if self.policy.spread:
            delay *= 1.0 - self.rng.uniform(0.0, self.policy.spread)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
