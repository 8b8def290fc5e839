"""The bootloader's flash and receive buffers: where a client that streams too fast loses bytes.

Theory of operation (nRF5 SDK 15-17, `nrf_dfu_ble.c` + `nrf_dfu_flash.c` + `nrf_fstorage_sd.c`):

- A packet written to the DFU packet characteristic must first get a buffer from a pool of
  `FlashTiming.buffers_for(att_mtu)` buffers (`nrf_balloc`). No free buffer: the packet is dropped silently
  (nobody is told, not even the PRN counter).
- The request handler then hands the buffer to fstorage, whose queue holds `flash_queue_size` operations
  (the one in progress included). Queue full: the write is dropped silently and the buffer freed; the
  object's offset and CRC do not advance, so the only symptom the client sees is a CRC/offset mismatch.
- Flash operations run one at a time, in order: a page erase costs `page_erase_ms` per page, a write costs
  `word_write_us` per 4-byte word. A buffer is held until its own write has completed.
- Execute (data) answers only once fstorage is idle (the SDK reschedules it while `nrf_fstorage_is_busy`):
  `idle_at` tells when that is.

The model is lazy and exact: each operation's completion time is fixed when it is queued (serial flash),
so `advance(now)` just retires what has finished by `now`. No clock is read; every call takes `now`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from profiles.model import FlashTiming


class FlashOpKind(enum.Enum):
    ERASE = "erase"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class FlashOp:
    kind: FlashOpKind
    nbytes: int
    ends_at: float
    holds_buffer: bool


class Flash:
    """Serialized flash operations with a bounded queue, and the receive-buffer pool in front of it."""

    def __init__(self, timing: FlashTiming, buffer_count: int) -> None:
        if buffer_count < 1:
            raise ValueError("the bootloader needs at least one receive buffer")
        self.timing = timing
        self.buffer_count = buffer_count
        self._queue: deque[FlashOp] = deque()

    def advance(self, now: float) -> None:
        """Retire every operation that has completed by `now` (freeing its buffer)."""
        while self._queue and self._queue[0].ends_at <= now:
            self._queue.popleft()

    def buffers_in_use(self, now: float) -> int:
        self.advance(now)
        return sum(1 for op in self._queue if op.holds_buffer)

    def pending(self, now: float) -> int:
        """Operations queued in fstorage, the one in progress included."""
        self.advance(now)
        return len(self._queue)

    def has_free_buffer(self, now: float) -> bool:
        """Whether an arriving packet gets a buffer."""
        return self.buffers_in_use(now) < self.buffer_count

    def _enqueue(
        self, now: float, kind: FlashOpKind, nbytes: int, seconds: float, holds_buffer: bool
    ) -> bool:
        self.advance(now)
        if len(self._queue) >= self.timing.flash_queue_size:
            return False
        start = max(now, self._queue[-1].ends_at) if self._queue else now
        self._queue.append(FlashOp(kind, nbytes, start + seconds, holds_buffer))
        return True

    def write(self, now: float, nbytes: int, *, holds_buffer: bool = True) -> bool:
        """Queue a write of `nbytes`; False when the fstorage queue is full (the caller drops the data)."""
        return self._enqueue(now, FlashOpKind.WRITE, nbytes, self.timing.write_seconds(nbytes), holds_buffer)

    def erase(self, now: float, pages: int) -> bool:
        """Queue the erase of `pages` pages; False when the fstorage queue is full."""
        return self._enqueue(now, FlashOpKind.ERASE, 0, pages * self.timing.erase_seconds, False)

    def busy(self, now: float) -> bool:
        return self.pending(now) > 0

    def idle_at(self, now: float) -> float:
        """When every queued operation will have completed (`now` if flash is idle)."""
        self.advance(now)
        return max(now, self._queue[-1].ends_at) if self._queue else now

    def next_completion(self, now: float) -> float | None:
        self.advance(now)
        return self._queue[0].ends_at if self._queue else None


__all__ = ["Flash", "FlashOp", "FlashOpKind"]
