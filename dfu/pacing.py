"""Closed-loop flash pacing: when may the next packet leave, learned from the bootloader's own answers.

Theory of operation
-------------------
An nRF5 SDK bootloader hands every received data packet to fstorage, whose queue holds `flash_queue_size`
operations (the one in progress included); each packet also holds one of `buffers` receive buffers until
its own flash write completes. A packet that finds the queue (or the pool) full is dropped *silently*: the
only symptom is a CRC/offset mismatch later, which costs a whole object. Flash work is serialized: the page
erase queued by Create, then one write per packet (docs/secure-dfu.md, docs/bootloaders.md).

`FlashPacer` keeps a model of that queue: the estimated completion time of every operation the client
caused, and sends each packet at the earliest time at which fewer than `queue - slack` operations and fewer
than `buffers - slack` buffered writes are pending. Flash shares time with the radio: the SoftDevice runs
flash operations only between connection events (SoftDevice Specification, "Flash API timing"), so every
operation takes its flash time divided by `duty` (idle time / connection interval), and a page erase split
over idle spans may end up to one connection interval later (`interval_s`, charged in full when pacing). A
chip without partial erase (nRF52832) runs an erase whole, pre-empting the connection (`erase_preempts`):
no packet arrives meanwhile, so the pacing need not wait for it.

What no profile knows is how fast *this* board's flash is beside *this* radio: datasheet maxima, another
part, a busier radio. So every modelled duration is multiplied by `scale`, which `FlashEstimator` learns:

* **Drains.** A data Execute is answered only once fstorage is idle (`on_data_obj_execute_request_sched`,
  nrf_dfu_req_handler.c, SDK 15.0-17.1): its answer says "the queue emptied just before this notification
  left", i.e. within one connection interval before it arrived. The pacer logs every operation since the
  last known-empty moment with the earliest time the bootloader can have queued it and its duration at
  scale 1 (`_Op`). `drain_time(scale)`, the first moment at or after the Execute was handled at which that
  queue is empty, is non-decreasing in `scale`, so bisection gives the scales consistent with the answer:
  [lo, hi]. Operations dated as early as they can be make both err towards a slower flash: the safe side.
* **Losses.** A packet lost for a full queue means the model ran ahead of the flash: the scale grows by
  `LOSS_STEP` and the drain history that allowed it is dropped.

`FlashEstimator.scale` is the smallest upper bound seen over the last `window` drains (never below their
largest lower bound): it converges on the board's pace from above within a few objects, and a single late
notification only makes it slower for a while. Pure arithmetic: no clock, no I/O; every call takes the time
it is about.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from profiles.model import SETTINGS_WRITE_BYTES, FlashTiming

DEFAULT_SLACK = 2
"""Queue slots kept free for radio jitter; the flash stays saturated as long as one operation is queued."""
SCALE_MIN = 0.05
SCALE_MAX = 20.0
"""Range of the learned scale: from 20 times faster to 20 times slower than the nominal timing."""
LOSS_STEP = 1.5
"""A packet lost although paced: the flash is slower than modelled; pace this much slower at once."""
DRAIN_WINDOW = 6
"""Drains the scale is taken from: old enough to forget a late notification, enough to cross-check."""
PACE_MARGIN = 0.02
"""Relative margin on every paced duration: 3 ms on an 85 ms erase at half the time."""
ROUNDING_S = 2e-6
"""Radio and flash work in whole microseconds: an operation the model ends a microsecond early must not
free a slot before the bootloader's does."""
LOG_LIMIT = 256
"""Operations kept for the estimator between drains; beyond, the oldest go and the next drain only resyncs."""
_BISECT_STEPS = 11
"""Bisection steps over log(SCALE_MAX / SCALE_MIN): the bounds to within 0.3 %, rounded the safe way (each
step is one pass over the log)."""


@dataclass(slots=True)
class _Op:
    """One flash operation as the estimator sees it."""

    arrival: float
    """the earliest time the bootloader can have queued it (what the estimator assumes)"""
    work: float
    """seconds at scale 1 (flash time / duty)"""
    paced: float = 0.0
    """when the pacing assumes it was queued (the latest plausible time: its model errs late)"""
    erase: bool = False
    buffer: bool = False
    """a packet's write: it holds a receive buffer until done"""


def drain_time(ops: Sequence[_Op], start: float, after: float, scale: float) -> float:
    """The first moment at or after `after` at which the queue that was empty at `start` and then received
    `ops` (in arrival order) is empty again, with every operation's work multiplied by `scale`."""
    t = start
    for op in ops:
        if op.arrival > t:  # the queue is empty in [t, arrival)
            if t >= after:
                return t
            if op.arrival > after:
                return after
            t = op.arrival
        t += scale * op.work
    return t if t > after else after


def scale_at_least(ops: Sequence[_Op], start: float, after: float, at_least: float) -> float:
    """The smallest scale whose `drain_time` is >= `at_least` (SCALE_MIN when any is, or when none is: a
    drain no scale explains says nothing)."""
    if drain_time(ops, start, after, SCALE_MAX) < at_least:
        return SCALE_MIN
    if drain_time(ops, start, after, SCALE_MIN) >= at_least:
        return SCALE_MIN
    return _first_scale(lambda scale: drain_time(ops, start, after, scale) >= at_least)


def scale_at_most(ops: Sequence[_Op], start: float, after: float, at_most: float) -> float:
    """The largest scale whose `drain_time` is <= `at_most` (SCALE_MAX when every one is, or when none is)."""
    if drain_time(ops, start, after, SCALE_MIN) > at_most:
        return SCALE_MAX
    if drain_time(ops, start, after, SCALE_MAX) <= at_most:
        return SCALE_MAX
    # rounded up: an upper bound paced at must never undercut the board
    return _first_scale(lambda scale: drain_time(ops, start, after, scale) > at_most)


def _first_scale(holds: Callable[[float], bool]) -> float:
    """Bisection over log(scale) for where `holds` (false at SCALE_MIN, true at SCALE_MAX, monotone) turns
    true: the scale just at or above that point."""
    lo, hi = math.log(SCALE_MIN), math.log(SCALE_MAX)
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if holds(math.exp(mid)):
            hi = mid
        else:
            lo = mid
    return math.exp(hi)


class FlashEstimator:
    """The board's flash pace relative to the nominal timing, learned from drains and losses.

    A drain bounds the scale from above (the queue emptied in time: the flash was at least this fast) and,
    when the queue was still busy as the Execute arrived, from below. Upper bounds are kept until contradicted
    (a loss, or a lower bound above them: the flash got slower), since a tight one is rare (most drains
    happen before the Execute arrives and bound loosely); lower bounds are taken from the last `window`
    drains. The scale is the tightest upper bound, never below those lower bounds."""

    def __init__(self, prior: float = 1.0, *, window: int = DRAIN_WINDOW) -> None:
        self.prior = min(max(prior, SCALE_MIN), SCALE_MAX)
        self.scale = self.prior
        self._lows: deque[float] = deque(maxlen=window)
        self._high = SCALE_MAX  # the prior is a guess, not a bound
        self.drains = 0
        """drains that told something"""
        self.losses = 0

    @property
    def high(self) -> float:
        """The tightest upper bound so far (SCALE_MAX before any)."""
        return self._high

    def observe(self, low: float, high: float) -> None:
        """One drain: the scale lies in [low, high] (SCALE_MIN / SCALE_MAX where it says nothing)."""
        if low <= SCALE_MIN and high >= SCALE_MAX:
            return
        self.drains += 1
        self._lows.append(low)
        # Slower than believed: this drain's own upper bound (consistent with its lower one) replaces it.
        self._high = high if low > self._high else min(self._high, high)
        self.scale = min(max(self._high, max(self._lows)), SCALE_MAX)

    def overrun(self) -> None:
        """A packet was lost for a full queue although paced: slower at once, forget what allowed it."""
        self.losses += 1
        self._lows.clear()
        self.scale = self._high = min(self.scale * LOSS_STEP, SCALE_MAX)


class FlashPacer:
    """Model of the bootloader's fstorage queue and receive buffers, in loop time (seconds).

    `scale` multiplies every modelled flash duration (set it from a `FlashEstimator`). The log of operations
    since the queue was last known empty (`drained`) is what `bounds` estimates the scale from.
    """

    def __init__(
        self,
        timing: FlashTiming,
        *,
        buffers: int,
        page_size: int = 4096,
        slack: int = DEFAULT_SLACK,
        duty: float = 1.0,
        erase_preempts: bool = False,
        interval_s: float = 0.0,
        scale: float = 1.0,
    ) -> None:
        if not 0 < duty <= 1:
            raise ValueError("flash duty must be in (0, 1]")
        self.timing = timing
        self.page_size = page_size
        self.duty = duty
        self._word_s = timing.word_write_us / 1e6 / duty  # a word's write, beside the radio
        self.scale = scale
        self.erase_preempts = erase_preempts
        self.margin = (interval_s / 2 if duty < 1 else 0.0) + ROUNDING_S
        """an operation counts as pending this long after its fluid end: work runs only in the idle spans
        between connection events, so the real flash runs up to one event's worth behind the fluid model
        (half an interval with the SDK's 7.5 ms events every 15 ms)"""
        self._max_slack = max(0, min(timing.flash_queue_size, buffers) - 2)
        self.queue_limit = timing.flash_queue_size
        self.buffer_limit = buffers
        self.slack = min(slack, self._max_slack)
        self._ops: deque[float] = deque()  # completion times of queued operations, in order
        self._held: deque[float] = deque()  # completion times of writes that hold a receive buffer
        self._log: list[_Op] = []
        self._log_start = 0.0  # the queue was empty then (as far as is known)
        self.log_complete = True
        """the log holds every operation since `_log_start` (what the estimator needs)"""

    # --- durations -----------------------------------------------------------------------------------------

    @property
    def _pace(self) -> float:
        """The scale the pacing uses: the learned one, a little slower (one scale stands for erases and
        writes alike, which a board need not slow down alike)."""
        return self.scale * (1 + PACE_MARGIN)

    def erase_work(self, pages: int = 1) -> float:
        """Seconds of flash at scale 1 for erasing `pages` (whole on a chip that pre-empts the radio)."""
        per_page = self.timing.erase_seconds if self.erase_preempts else self.timing.erase_seconds / self.duty
        return pages * per_page

    def write_work(self, nbytes: int) -> float:
        return ((nbytes + 3) // 4) * self._word_s

    def _erase_s(self, pages: int) -> float:
        """How long the pacing assumes an erase keeps the queue busy (0: it holds the link itself)."""
        return 0.0 if self.erase_preempts else self._pace * self.erase_work(pages)

    @property
    def erase_wait(self) -> float:
        """How long one page erase keeps fstorage's queue busy, at the learned pace: long enough for a slot
        to free in a queue an earlier link filled."""
        return self._pace * self.erase_work(1) + self.margin

    # --- the queue -----------------------------------------------------------------------------------------

    @property
    def idle_at(self) -> float:
        """When the modelled flash has finished everything queued (0.0 when nothing ever was)."""
        return self._ops[-1] + self.margin if self._ops else 0.0

    def pending(self, at: float) -> int:
        """Operations the model still has queued at `at`."""
        cut = at - self.margin
        return sum(1 for end in self._ops if end > cut)

    def room_at(self, at: float, ops: int) -> float:
        """Earliest time >= `at` at which the modelled queue can take `ops` more operations."""
        keep = self.queue_limit - ops  # operations that may still be pending then
        cut = at - self.margin
        pending = [end for end in self._ops if end > cut]
        if len(pending) <= keep:
            return at
        return pending[len(pending) - keep - 1] + self.margin

    def widen(self) -> None:
        """An object arrived damaged although paced: keep one more slot free from now on."""
        self.slack = min(self.slack + 1, self._max_slack)

    def _queue(self, at: float, seconds: float) -> float:
        start = max(at, self._ops[-1]) if self._ops else at
        end = start + seconds
        self._ops.append(end)
        return end

    def erase(self, at: float, nbytes: int, *, earliest: float | None = None) -> None:
        """Create data queued the erase of the object's pages, no later than `at` and no earlier than
        `earliest` (default `at`): the queue model takes `at`, the estimator `earliest`."""
        pages = max(1, math.ceil(nbytes / self.page_size))
        self._queue(at, self._erase_s(pages))
        first = at if earliest is None else min(at, earliest)
        self._add(_Op(first, self.erase_work(pages), at, erase=True))

    def settings_write(
        self,
        at: float,
        *,
        pages: int = 2,
        earliest: float | None = None,
        logged: bool = True,
        queued: bool = True,
    ) -> None:
        """The settings page (and, from SDK 15.3 on, its backup: `pages` = 2) is stored: erase + write each
        (init Execute; every data Execute of a bootloader that saves progress in flash). `logged`: certain
        enough to learn from (work modelled that never ran would make the flash look faster than it is);
        `queued`: also taken into the queue model (False: a write already modelled becomes certain)."""
        first = at if earliest is None else min(at, earliest)
        write = self.write_work(SETTINGS_WRITE_BYTES)
        for _ in range(pages):
            if queued:
                self._queue(at, self._erase_s(1))
                self._queue(at, self._pace * write)
            if logged:
                self._add(_Op(first, self.erase_work(1), at, erase=True))
                self._add(_Op(first, write, at))
        if logged and not queued:
            self._log.sort(key=lambda op: op.arrival)

    def _add(self, op: _Op) -> None:
        self._log.append(op)
        if len(self._log) > LOG_LIMIT:
            del self._log[: LOG_LIMIT // 2]
            self.log_complete = False

    def packet(self, earliest: float, nbytes: int) -> float:
        """Reserve flash for one packet; returns the earliest time it may be sent (>= `earliest`)."""
        return self.packets(earliest, [nbytes])[0]

    def packets(self, earliest: float, sizes: Sequence[int]) -> list[float]:
        """Reserve flash for consecutive packets (one object's: the per-packet work of a transfer, kept lean);
        returns the earliest time each may be sent, non-decreasing from `earliest`."""
        ops, held, margin = self._ops, self._held, self.margin
        queue_room = self.queue_limit - self.slack
        buffer_room = self.buffer_limit - self.slack
        pace, word_s, log = self._pace, self._word_s, self._log
        times: list[float] = []
        at = earliest
        for nbytes in sizes:
            cut = at - margin
            while ops and ops[0] <= cut:
                ops.popleft()
            while held and held[0] <= cut:
                held.popleft()
            if len(ops) >= queue_room:
                at = max(at, ops[len(ops) - queue_room] + margin)
            if len(held) >= buffer_room:
                at = max(at, held[len(held) - buffer_room] + margin)
            work = ((nbytes + 3) // 4) * word_s
            end = (max(at, ops[-1]) if ops else at) + pace * work
            ops.append(end)
            held.append(end)
            log.append(_Op(at, work, at, buffer=True))
            times.append(at)
        if len(log) > LOG_LIMIT:
            del log[: len(log) - LOG_LIMIT // 2]
            self.log_complete = False
        return times

    def arrived_no_earlier(self, at: float) -> None:
        """The last packet reserved reached the bootloader no earlier than `at` (its PRN came later than
        pacing assumed: a busy link delivers packets after they are due): its write, and all that follows,
        are re-planned from then."""
        if not self._log or not self._log[-1].buffer or not self._ops:
            return
        op = self._log[-1]
        if at <= op.paced:
            return
        op.paced = at
        before = self._ops[-2] if len(self._ops) > 1 else at
        end = max(before, at) + self._pace * op.work
        self._ops[-1] = end
        if self._held:
            self._held[-1] = end

    # --- what the bootloader told ------------------------------------------------------------------------

    def bounds(
        self, sent: float, answered: float, window: float, *, high: float = SCALE_MAX, low: float = SCALE_MIN
    ) -> tuple[float, float]:
        """The scales consistent with a drain: an Execute sent at `sent` (handled within `window` after) was
        answered once the queue was empty, within `window` before `answered`. An Execute that found the queue
        empty is answered at once: only a drain after its latest handling says the flash was slow.

        `high` / `low`: what is known already; a bound that cannot tighten it is not searched for (one pass
        over the log instead of a bisection: most drains of a steady transfer confirm the pace)."""
        log, start = self._log, self._log_start
        late = min(sent + window, answered)
        if low > SCALE_MIN and drain_time(log, start, late, low) >= answered - window:
            lower = SCALE_MIN  # at most `low`: nothing new
        else:
            lower = scale_at_least(log, start, late, answered - window)
        if lower <= high < SCALE_MAX and drain_time(log, start, sent, high) <= answered:
            upper = SCALE_MAX  # at least `high` (and not slower than believed): nothing new
        else:
            upper = scale_at_most(log, start, sent, answered)
        return lower, upper

    def drained(self, at: float) -> None:
        """The queue was empty at `at` (at the earliest: a drain answered within a window): forget what
        arrived before, and re-plan what arrived since with the current scale."""
        self._log = [op for op in self._log if op.arrival >= at]
        self._log_start = at
        self.log_complete = True
        self._replan()

    def rescale(self, scale: float) -> None:
        """Pace from now on at `scale`, and re-plan what is still queued at it (after a loss, the writes
        queued before it take longer than they were planned to)."""
        self.scale = scale
        self._replan()

    def _replan(self) -> None:
        self._ops.clear()
        self._held.clear()
        t = self._log_start
        for op in self._log:
            seconds = 0.0 if op.erase and self.erase_preempts else self._pace * op.work
            t = max(t, op.paced) + seconds
            self._ops.append(t)
            if op.buffer:
                self._held.append(t)

    def idle(self) -> None:
        """The bootloader said flash is idle and nothing was sent since: forget every estimate."""
        self._ops.clear()
        self._held.clear()
        self._log.clear()


__all__ = [
    "DEFAULT_SLACK",
    "LOSS_STEP",
    "SETTINGS_WRITE_BYTES",
    "FlashEstimator",
    "FlashPacer",
    "drain_time",
    "scale_at_least",
    "scale_at_most",
]
