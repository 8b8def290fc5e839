"""The flash + receive-buffer model: serial timing, bounded queue, buffers held until written."""

from __future__ import annotations

import pytest

from profiles.model import FlashTiming
from simulator.flash import Flash

TIMING = FlashTiming(page_erase_ms=85.0, word_write_us=41.0, flash_queue_size=3)


def test_operations_run_one_after_another() -> None:
    flash = Flash(TIMING, buffer_count=17)
    assert flash.erase(0.0, 1)
    assert flash.write(0.0, 244)
    assert flash.idle_at(0.0) == pytest.approx(0.085 + 61 * 41e-6)
    assert flash.busy(0.05)
    assert not flash.busy(flash.idle_at(0.0))


def test_queue_full_refuses_and_frees_as_operations_complete() -> None:
    flash = Flash(TIMING, buffer_count=17)
    assert flash.erase(0.0, 1)
    assert flash.write(0.0, 244)
    assert flash.write(0.0, 244)
    assert not flash.write(0.0, 244)
    assert flash.pending(0.0) == 3
    assert flash.write(0.086, 244)  # the erase finished: one slot free again


def test_buffers_are_held_until_their_write_completes() -> None:
    flash = Flash(FlashTiming(flash_queue_size=8), buffer_count=2)
    assert flash.has_free_buffer(0.0)
    assert flash.write(0.0, 244)
    assert flash.write(0.0, 244)
    assert not flash.has_free_buffer(0.0)
    first_done = flash.next_completion(0.0)
    assert first_done is not None
    assert flash.has_free_buffer(first_done)
    assert flash.buffers_in_use(first_done) == 1


def test_settings_writes_hold_no_buffer() -> None:
    flash = Flash(FlashTiming(flash_queue_size=8), buffer_count=1)
    assert flash.write(0.0, 1024, holds_buffer=False)
    assert flash.has_free_buffer(0.0)


def test_at_least_one_buffer() -> None:
    with pytest.raises(ValueError, match="buffer"):
        Flash(TIMING, buffer_count=0)
