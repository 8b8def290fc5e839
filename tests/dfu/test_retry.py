"""The one retry policy: its waits, its reset, and that stamina retries with the same bounds."""

from __future__ import annotations

import random

import pytest

from dfu.retry import RetryPolicy


def test_waits_double_up_to_the_cap_with_stamina_s_additive_jitter() -> None:
    policy = RetryPolicy(1.0, 60.0, jitter_s=1.0)
    rng = random.Random(7)
    waits = [policy.delay(n, rng) for n in range(10)]
    for n, wait in enumerate(waits):
        base = 2.0**n
        assert min(60.0, base) <= wait <= min(60.0, base + 1.0)
    assert waits[-1] == 60.0


def test_a_link_backoff_grows_and_starts_over_after_a_success() -> None:
    backoff = RetryPolicy(0.5, 4.0).backoff(random.Random(1))
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_a_fleet_that_lost_its_broker_together_stays_spread_at_the_cap() -> None:
    """Stamina's additive jitter vanishes under the cap: fifty gateways would retry in step every 60 s. The
    link's spread keeps every wait between half and all of itself, the capped ones too."""
    policy = RetryPolicy(1.0, 60.0, spread=0.5)
    fleet = [policy.backoff(random.Random(seed)) for seed in range(50)]
    for attempt in range(12):
        waits = [b.next_delay() for b in fleet]
        nominal = min(60.0, 2.0**attempt)
        assert all(nominal / 2 <= w <= nominal for w in waits)
        assert max(waits) - min(waits) > nominal / 4  # not in step


@pytest.mark.parametrize(
    ("initial", "cap", "jitter", "spread"),
    [(0.0, 1.0, 0.0, 0.0), (2.0, 1.0, 0.0, 0.0), (1.0, 2.0, -1.0, 0.0), (1.0, 2.0, 0.0, 1.0)],
)
def test_nonsense_bounds_are_refused(initial: float, cap: float, jitter: float, spread: float) -> None:
    with pytest.raises(ValueError, match="retry policy"):
        RetryPolicy(initial, cap, jitter_s=jitter, spread=spread)


async def test_a_bounded_operation_gives_up_after_its_attempts() -> None:
    tries = 0

    async def operation() -> None:
        nonlocal tries
        async for attempt in RetryPolicy(0.001, 0.002, attempts=3).retrying(on=OSError):
            with attempt:
                tries += 1
                raise OSError("down")

    with pytest.raises(OSError, match="down"):
        await operation()
    assert tries == 3
