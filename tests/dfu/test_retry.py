"""The one retry policy: its waits, its reset, and that stamina retries with the same bounds."""

from __future__ import annotations

import random

import pytest

from dfu.retry import RetryPolicy


def test_waits_double_up_to_the_cap_and_jitter_stays_within_its_bound() -> None:
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


def test_jitter_spreads_a_fleet_that_lost_its_broker_together() -> None:
    policy = RetryPolicy(1.0, 60.0, jitter_s=1.0)
    firsts = {round(policy.backoff(random.Random(seed)).next_delay(), 3) for seed in range(50)}
    assert len(firsts) > 40


@pytest.mark.parametrize(("initial", "cap", "jitter"), [(0.0, 1.0, 0.0), (2.0, 1.0, 0.0), (1.0, 2.0, -1.0)])
def test_nonsense_bounds_are_refused(initial: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="retry policy"):
        RetryPolicy(initial, cap, jitter_s=jitter)


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
