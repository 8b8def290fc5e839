"""Flash pacing: when may the next packet leave so the bootloader's flash queue never overflows.

Theory of operation
-------------------
An nRF5 SDK bootloader hands every received data packet to fstorage, whose queue holds `flash_queue_size`
operations (the one in progress included); each packet also holds one of `buffers` receive buffers until
its own flash write completes. A packet that finds the queue (or the pool) full is dropped *silently*: the
only symptom is a CRC/offset mismatch later, which costs a whole object. Flash work is serialized: the page
erase queued by Create (85 ms), then one word write per 4 bytes per packet.

`FlashPacer` keeps a model of that queue: the estimated completion time of every operation the client
caused. Estimates err late (an operation is assumed to start when the client *learned* of it, e.g. at the
Create response, although the bootloader started it earlier), so the model never believes a slot is free
before it really is. A packet's `not_before` is the earliest time at which, in the model, fewer than
`queue - slack` operations and fewer than `buffers - slack` buffered writes are pending. `slack` absorbs
what the model cannot see (a packet delayed by the radio until the next connection event, then delivered in
a burst); it grows by one each time an object arrives damaged anyway (`widen`).

Flash shares time with the radio: the SoftDevice runs flash operations only between connection events
(SoftDevice Specification, "Flash API timing"), so over time flash gets `duty` = idle time / connection
interval of the wall clock (0.5 with the SDK bootloaders' 7.5 ms events every 15 ms). The model is fluid:
every operation takes its flash time divided by `duty`. A page erase, split over a dozen idle spans, may end
up to one connection interval later than that (where the first and last spans fall), so it is charged
`interval_s` more; a write (5 words a call) lands on whole spans too, which `slack` covers. A chip without
partial erase (nRF52832) cannot split a page erase into idle spans: the SoftDevice runs it whole, pre-empting
the connection (`erase_preempts`), so no packet arrives while it runs: the link itself holds them back, and
the pacing need not wait for it.

Pure arithmetic: no clock, no I/O; every call takes the time it is about.
"""

from __future__ import annotations

import math
from collections import deque

from profiles.model import SETTINGS_WRITE_BYTES, FlashTiming

SETTINGS_WRITE_OPS = 4
"""fstorage operations of one settings write: page erase + write, for the page and for its backup"""
DEFAULT_SLACK = 2
"""Queue slots kept free for radio jitter; the flash stays saturated as long as one operation is queued."""


class FlashPacer:
    """Model of the bootloader's fstorage queue and receive buffers, in loop time (seconds)."""

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
    ) -> None:
        if not 0 < duty <= 1:
            raise ValueError("flash duty must be in (0, 1]")
        self.timing = timing
        self.page_size = page_size
        self.duty = duty
        shared = timing.erase_seconds / duty + (interval_s if duty < 1 else 0.0)
        self._erase_s = 0.0 if erase_preempts else shared
        self._max_slack = max(0, min(timing.flash_queue_size, buffers) - 2)
        self.queue_limit = timing.flash_queue_size
        self.buffer_limit = buffers
        self.slack = min(slack, self._max_slack)
        self._ops: deque[float] = deque()  # completion times of queued operations, in order
        self._held: deque[float] = deque()  # completion times of writes that hold a receive buffer

    @property
    def idle_at(self) -> float:
        """When the modelled flash has finished everything queued (0.0 when nothing ever was)."""
        return self._ops[-1] if self._ops else 0.0

    def idle(self) -> None:
        """The bootloader said flash is idle (Execute data answers only then): forget every estimate."""
        self._ops.clear()
        self._held.clear()

    def pending(self, at: float) -> int:
        """Operations the model still has queued at `at`."""
        return sum(1 for end in self._ops if end > at)

    def room_at(self, at: float, ops: int) -> float:
        """Earliest time >= `at` at which the modelled queue can take `ops` more operations."""
        keep = self.queue_limit - ops  # operations that may still be pending then
        pending = [end for end in self._ops if end > at]
        if len(pending) <= keep:
            return at
        return pending[len(pending) - keep - 1]

    def widen(self) -> None:
        """An object arrived damaged although paced: keep one more slot free from now on."""
        self.slack = min(self.slack + 1, self._max_slack)

    def _queue(self, at: float, seconds: float) -> float:
        start = max(at, self._ops[-1]) if self._ops else at
        end = start + seconds
        self._ops.append(end)
        return end

    def erase(self, at: float, nbytes: int) -> None:
        """Create data queued the erase of the object's pages (no later than `at`)."""
        pages = max(1, math.ceil(nbytes / self.page_size))
        self._queue(at, pages * self._erase_s)

    def settings_write(self, at: float) -> None:
        """The settings page and its backup are stored (init Execute; every data Execute of a bootloader that
        saves progress in flash): erase + write, twice, `SETTINGS_WRITE_OPS` operations."""
        write_s = self.timing.write_seconds(SETTINGS_WRITE_BYTES) / self.duty
        for _ in range(2):
            self._queue(at, self._erase_s)
            self._queue(at, write_s)

    def packet(self, earliest: float, nbytes: int) -> float:
        """Reserve flash for one packet; returns the earliest time it may be sent (>= `earliest`)."""
        ops, held = self._ops, self._held
        while ops and ops[0] <= earliest:
            ops.popleft()
        while held and held[0] <= earliest:
            held.popleft()
        at = earliest
        room = self.queue_limit - self.slack
        if len(ops) >= room:
            at = max(at, ops[len(ops) - room])
        room = self.buffer_limit - self.slack
        if len(held) >= room:
            at = max(at, held[len(held) - room])
        end = self._queue(at, self.timing.write_seconds(nbytes) / self.duty)
        held.append(end)
        return at


__all__ = ["DEFAULT_SLACK", "SETTINGS_WRITE_BYTES", "SETTINGS_WRITE_OPS", "FlashPacer"]
