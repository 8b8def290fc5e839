"""The bootloader's flash, receive buffers and fstorage queue, sharing time with the radio.

Theory of operation (nRF5 SDK 15.0-17.1 `nrf_dfu_ble.c`, `nrf_dfu_flash.c`, `nrf_fstorage_sd.c`; the
SoftDevice Specification's "Flash memory API" and "Flash API timing" chapters):

- A packet written to the DFU packet characteristic first needs one of `buffer_count` receive buffers
  (`nrf_balloc`, sized at build time); none free: the packet is dropped silently.
- The request handler hands the buffer to fstorage, whose queue holds `flash_queue_size` operations (the one
  in progress included): one per write request, one per erase request whatever its page count. Queue full:
  the write is dropped and its buffer freed. A buffer is held until its own write has completed.
- With a SoftDevice, fstorage runs one operation at a time through the SoftDevice flash API: a write as
  `sd_flash_write` calls of at most `write_chunk_bytes` (20) bytes each, `max(1, chunk // 4)` words (the
  SDK builds turn fstorage's parameter checks off, so a length that is not a multiple of 4 is not refused:
  whole words are written, see `written_bytes`); an erase as one `sd_flash_page_erase` per page.
- The SoftDevice runs each flash operation only in the radio's idle time: never inside a connection event
  (the whole reserved event length, `RadioSchedule`), and the CPU is halted while it runs. A write chunk
  (5 words, about 0.2 ms) fits an idle span whole. A page erase (85 ms) does not fit a 7.5 ms span: on a
  chip with partial erase (nRF52840, nRF52833) the SoftDevice splits it over as many idle spans as it
  needs; on one without (nRF52832) the flash activity, blocked again and again, is raised above the
  connection and runs whole from the start of an idle span, and the connection events it overlaps are lost
  to the link (`radio_blocked`: the peripheral is deaf, packets wait in the central's controller).
  Unknown, so not modelled: how often the SoftDevice lets a blocked erase retry before it raises its
  priority (here: at once), any per-operation overhead beyond the product specification's word write and
  page erase times, and a guard time before the next connection event.
- Without a connection (no `RadioSchedule`) flash runs back to back.
- Execute (data) answers only once fstorage is idle: `idle_at` tells when that is.

The model is lazy and exact: each operation's pieces of work are planned onto idle spans when it is queued,
so `advance(now)` just retires what has finished by `now`; a new or lost connection re-plans whatever has
not run yet. Whole microseconds throughout (as `simulator.radio`), so plans never drift. No clock is read.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

from profiles.model import FlashTiming
from simulator.radio import RadioSchedule, to_s, to_us


class FlashOpKind(enum.Enum):
    ERASE = "erase"
    WRITE = "write"


@dataclass(slots=True)
class FlashOp:
    """One fstorage operation: its pieces of work (µs) and where they were planned."""

    kind: FlashOpKind
    nbytes: int
    holds_buffer: bool
    work_us: list[int]
    """write: one entry per SoftDevice write chunk (each runs whole); erase: one entry per page"""
    sliceable: bool
    """an erase the SoftDevice may split over idle spans (partial erase)"""
    pieces: list[tuple[int, int, int]] = field(default_factory=list)
    """planned (start µs, end µs, work index)"""
    blocking: list[tuple[int, int]] = field(default_factory=list)
    """spans in which this operation pre-empts the radio"""

    @property
    def ends_at_us(self) -> int:
        return self.pieces[-1][1]

    @property
    def ends_at(self) -> float:
        return to_s(self.ends_at_us)


def chunk_words(nbytes: int, chunk_bytes: int) -> list[int]:
    """Words each SoftDevice write call programs for a write of `nbytes` (`write_execute()`,
    nrf_fstorage_sd.c: `max(1, chunk / 4)` words per chunk of at most `chunk_bytes`)."""
    return [max(1, min(chunk_bytes, nbytes - at) // 4) for at in range(0, nbytes, chunk_bytes)]


def written_bytes(data: bytes, chunk_bytes: int) -> bytes:
    """What a write of `data` leaves in flash when fstorage's parameter checks are off (SDK 15.0-17.1
    bootloader builds: NRF_FSTORAGE_PARAM_CHECK_DISABLED): each chunk programs `max(1, len // 4)` whole words,
    so a chunk whose length is not a multiple of 4 loses its tail bytes (flash keeps 0xFF there), and a chunk
    shorter than a word programs one word whose missing bytes come from whatever follows in the buffer
    (0xFF here, unknowable). Destinations are assumed word-aligned."""
    out = bytearray()
    for at in range(0, len(data), chunk_bytes):
        chunk = data[at : at + chunk_bytes]
        words = max(1, len(chunk) // 4)
        programmed = chunk[: words * 4]
        out += programmed + b"\xff" * (len(chunk) - len(programmed))
    return bytes(out[: len(data)])


class Flash:
    """fstorage through the SoftDevice: a bounded queue of operations run in the radio's idle time, and
    the receive-buffer pool in front of it."""

    def __init__(self, timing: FlashTiming, buffer_count: int, *, sliced_erase: bool = True) -> None:
        if buffer_count < 1:
            raise ValueError("the bootloader needs at least one receive buffer")
        self.timing = timing
        self.buffer_count = buffer_count
        self.sliced_erase = sliced_erase
        self.radio: RadioSchedule | None = None
        self._queue: deque[FlashOp] = deque()
        self._word_us = timing.word_write_us
        self._erase_us = max(1, math.floor(timing.page_erase_ms * 1000))

    # --- the radio ---------------------------------------------------------------------------------------

    def set_radio(self, now: float, radio: RadioSchedule | None) -> None:
        """A connection started (`radio`) or ended (None): re-plan the work not done by `now`."""
        self.advance(now)
        self.radio = radio
        cut = previous_end = to_us(now)
        for op in self._queue:
            kept = [p for p in op.pieces if p[0] < cut]  # work already started keeps its place
            if kept and op.sliceable and kept[-1][1] > cut:
                start, _, index = kept[-1]
                kept[-1] = (start, cut, index)  # a partial erase stops at once
            done: list[int] = [0] * len(op.work_us)
            for start, end, index in kept:
                done[index] += end - start
            op.blocking = [span for span in op.blocking if span[0] < cut]
            op.pieces = kept
            resume = max(previous_end, kept[-1][1]) if kept else previous_end
            remaining = [(i, w - done[i]) for i, w in enumerate(op.work_us) if w - done[i] > 0]
            self._plan(op, resume, remaining)
            previous_end = op.ends_at_us

    def radio_blocked(self, start_us: int, end_us: int) -> int | None:
        """End of a flash operation that pre-empts the radio within [start_us, end_us), if any."""
        for op in self._queue:
            for s, e in op.blocking:
                if s < end_us and e > start_us:
                    return e
        return None

    # --- queue -------------------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Retire every operation that has completed by `now` (freeing its buffer)."""
        t = to_us(now)
        while self._queue and self._queue[0].ends_at_us <= t:
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

    def write(self, now: float, nbytes: int, *, holds_buffer: bool = True) -> bool:
        """Queue a write of `nbytes`; False when the fstorage queue is full (the caller drops the data)."""
        # Whole microseconds, rounded down: never slower than the product specification's word time.
        words = chunk_words(nbytes, self.timing.write_chunk_bytes)
        work = [max(1, math.floor(n * self._word_us)) for n in words]
        return self._enqueue(now, FlashOp(FlashOpKind.WRITE, nbytes, holds_buffer, work, sliceable=False))

    def erase(self, now: float, pages: int) -> bool:
        """Queue the erase of `pages` pages; False when the fstorage queue is full."""
        op = FlashOp(FlashOpKind.ERASE, 0, False, [self._erase_us] * pages, sliceable=self.sliced_erase)
        return self._enqueue(now, op)

    def busy(self, now: float) -> bool:
        return self.pending(now) > 0

    def idle_at(self, now: float) -> float:
        """When every queued operation will have completed (`now` if flash is idle)."""
        self.advance(now)
        return max(now, self._queue[-1].ends_at) if self._queue else now

    def next_completion(self, now: float) -> float | None:
        self.advance(now)
        return self._queue[0].ends_at if self._queue else None

    def seconds_for(self, op: FlashOp, start: float) -> float:
        """How long `op`'s work would take from `start` under the current radio (for estimates and tests)."""
        probe = FlashOp(op.kind, op.nbytes, op.holds_buffer, list(op.work_us), op.sliceable)
        self._plan(probe, to_us(start), list(enumerate(probe.work_us)))
        return probe.ends_at - start

    # --- planning ----------------------------------------------------------------------------------------

    def _enqueue(self, now: float, op: FlashOp) -> bool:
        self.advance(now)
        if len(self._queue) >= self.timing.flash_queue_size:
            return False
        start = max(to_us(now), self._queue[-1].ends_at_us) if self._queue else to_us(now)
        self._plan(op, start, list(enumerate(op.work_us)))
        self._queue.append(op)
        return True

    def _plan(self, op: FlashOp, t: int, work: list[tuple[int, int]]) -> None:
        """Place `work` ((index, µs) pieces) on the idle spans from `t`, appending to `op.pieces`."""
        radio = self.radio
        for index, duration in work:
            if radio is None:
                op.pieces.append((t, t + duration, index))
                t += duration
                continue
            if op.sliceable:
                left = duration
                while left > 0:
                    start, end = radio.idle_span(t)
                    take = min(left, end - start)
                    op.pieces.append((start, start + take, index))
                    left -= take
                    t = start + take
                continue
            start, end = radio.idle_span(t)
            while start + duration > end and duration <= radio.idle_us:
                start, end = radio.idle_span(end)  # wait for an idle span it fits whole
            if start + duration > end:
                op.blocking.append((start, start + duration))  # raised above the connection
            op.pieces.append((start, start + duration, index))
            t = start + duration
        if not op.pieces:
            op.pieces.append((t, t, 0))


__all__ = ["Flash", "FlashOp", "FlashOpKind", "chunk_words", "written_bytes"]
