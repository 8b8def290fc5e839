"""The flash + receive-buffer model: serial timing, bounded queue, buffers held until written, and flash that
runs only in the radio's idle time (erases sliced on the nRF52840, pre-empting the link on the nRF52832)."""

from __future__ import annotations

import pytest

from profiles.model import FlashTiming
from simulator.flash import Flash, chunk_words, written_bytes
from simulator.radio import Central, LinkModel, RadioSchedule

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


# --- flash shares time with the radio (SoftDevice flash API, nrf_fstorage_sd.c) ---

RADIO = RadioSchedule(anchor_us=0, interval_us=15_000, event_us=7_500)  # the SDK bootloader's 15 ms / 7.5 ms
SDK = FlashTiming(page_erase_ms=85.0, word_write_us=41.0, flash_queue_size=16)


def _in_events(pieces: list[tuple[int, int, int]], radio: RadioSchedule) -> list[tuple[int, int, int]]:
    """Pieces of work that overlap a connection event."""

    def hits(start: int, end: int) -> bool:
        events = range(start // radio.interval_us - 1, end // radio.interval_us + 2)
        starts = (radio.anchor_us + k * radio.interval_us for k in events)
        return any(s < end and start < s + radio.event_us for s in starts)

    return [p for p in pieces if hits(p[0], p[1])]


def test_a_write_runs_as_20_byte_softdevice_operations() -> None:
    """`write_execute()`: at most NRF_FSTORAGE_SD_MAX_WRITE_SIZE (20) bytes, whole words, per call."""
    assert chunk_words(244, 20) == [5] * 12 + [1]
    flash = Flash(SDK, buffer_count=17)
    assert flash.write(0.0, 244)
    op = flash._queue[0]
    assert len(op.pieces) == 13
    assert op.ends_at == pytest.approx(61 * 41e-6)


def test_flash_runs_only_between_connection_events() -> None:
    flash = Flash(SDK, buffer_count=17)
    flash.set_radio(0.0, RADIO)
    assert flash.write(0.001, 244)  # queued inside the first connection event
    op = flash._queue[0]
    assert op.pieces[0][0] == 7_500, "the first chunk waits for the event to end"
    assert _in_events(op.pieces, RADIO) == []


def test_a_page_erase_is_split_over_idle_spans_with_partial_erase() -> None:
    """nRF52840: the SoftDevice fits an 85 ms erase into 7.5 ms idle spans (ERASEPAGEPARTIAL)."""
    flash = Flash(SDK, buffer_count=17, sliced_erase=True)
    flash.set_radio(0.0, RADIO)
    assert flash.erase(0.0, 1)
    op = flash._queue[0]
    assert _in_events(op.pieces, RADIO) == []
    assert sum(end - start for start, end, _ in op.pieces) == 85_000
    assert len(op.pieces) == 12  # ceil(85 / 7.5)
    assert op.ends_at == pytest.approx(0.0075 + 11 * 0.015 + (0.085 - 11 * 0.0075))
    assert flash.radio_blocked(0, 10**9) is None


def test_without_partial_erase_the_erase_preempts_the_connection() -> None:
    """nRF52832: no partial erase; the blocked flash activity is raised above the connection, runs whole."""
    flash = Flash(SDK, buffer_count=17, sliced_erase=False)
    flash.set_radio(0.0, RADIO)
    assert flash.erase(0.001, 1)
    op = flash._queue[0]
    assert op.pieces == [(7_500, 92_500, 0)]
    assert flash.radio_blocked(15_000, 15_100) == 92_500, "the connection event at 15 ms is lost"
    assert flash.radio_blocked(92_500, 95_000) is None


def test_without_a_connection_flash_runs_back_to_back_and_a_new_link_replans() -> None:
    flash = Flash(SDK, buffer_count=17)
    flash.set_radio(0.0, RADIO)
    assert flash.erase(0.0, 1)
    shared = flash.idle_at(0.0)
    flash.set_radio(0.010, None)  # the link drops 10 ms in: what is left runs at once
    alone = flash.idle_at(0.010)
    assert alone < shared
    assert alone == pytest.approx(0.010 + 0.085 - 0.0025)  # 2.5 ms of erase ran in the first idle span


def test_written_bytes_keeps_whole_words_per_chunk() -> None:
    data = bytes(range(1, 27))  # 20 + 6: the 6-byte chunk programs one word, losing 2 bytes
    assert written_bytes(data, 20) == data[:24] + b"\xff\xff"
    assert written_bytes(data[:22], 20) == data[:22], "2 bytes: one word, its padding beyond the data"


def test_central_skips_the_events_a_peripheral_misses() -> None:
    """The air asks the peripheral: an exchange never lands where its radio is taken by flash."""
    central = Central()
    model = LinkModel.create(phy="2M", data_length=251, att_mtu=247)
    slot = central.open("l", model, now=0.0, anchor=0.0)
    slot.radio_blocked = lambda s, e: 92_500 if s < 92_500 and e > 15_000 else None
    done = central.transmit(slot, model.write_fragments(244), not_before=0.016)
    assert done >= 0.105, "the next event after the erase starts at 105 ms"
