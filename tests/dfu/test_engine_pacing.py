"""The engine's packet schedule never overflows the bootloader's flash queue or buffer pool.

The queue model is the simulator's (`simulator.flash.Flash`, the SDK's fstorage queue + receive buffers);
the bootloader handles each request when its answer is sent (the latest moment the engine may assume) and
each packet exactly at its `not_before` (the earliest it can arrive). Hypothesis varies the flash timing,
queue and pool sizes, packet size, image size and reply delays.
"""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from dfu.engine import Action, ImageComplete, ImageTransfer, WriteControl, WritePacket
from dfu.pacing import SETTINGS_WRITE_BYTES, FlashPacer
from dfu.protocol import ObjectType, OpCode, ResultCode, decode_request, encode_response
from profiles.model import FlashTiming
from simulator.flash import Flash

INIT = bytes(range(40))


def run(
    timing: FlashTiming, packet_size: int, fw: bytes, max_size: int, delay: float, *, probe: bool = False
) -> tuple[int, int]:
    """Drive one transfer against the flash model; returns (packets dropped, objects)."""
    flash = Flash(timing, timing.buffers_for(packet_size + 3, max_size))
    t = ImageTransfer(INIT, fw, packet_size=packet_size, flash=timing, probe_erase_lag=probe)
    now = 0.0
    data_offset = 0
    data_crc = 0
    executed = 0
    dropped = 0
    current = ObjectType.COMMAND
    actions: list[Action] = t.start(now)
    while True:
        replies: list[bytes] = []
        for action in actions:
            if isinstance(action, ImageComplete):
                return dropped, action.stats.objects
            if isinstance(action, WritePacket):
                at = action.not_before
                now = max(now, at)
                if current is ObjectType.DATA:
                    if flash.has_free_buffer(at) and flash.write(at, len(action.data)):
                        data_offset += len(action.data)
                        data_crc = zlib.crc32(action.data, data_crc)
                    else:
                        dropped += 1
                continue
            if not isinstance(action, WriteControl):
                continue
            request = decode_request(action.data)
            now += delay
            op, p = request.opcode, request.params
            if op is OpCode.SELECT:
                current = ObjectType(p["type"])
                if current is ObjectType.COMMAND:
                    replies.append(encode_response(op, ResultCode.SUCCESS, max_size=512, offset=0, crc=0))
                else:
                    replies.append(
                        encode_response(op, ResultCode.SUCCESS, max_size=max_size, offset=0, crc=0)
                    )
            elif op is OpCode.CREATE:
                current = ObjectType(p["type"])
                if current is ObjectType.DATA:
                    assert flash.erase(now, 1), "the engine created an object while the queue was full"
                    data_offset, data_crc = executed, zlib.crc32(fw[:executed])
                replies.append(encode_response(op, ResultCode.SUCCESS))
            elif op is OpCode.CALC_CHECKSUM:
                offset, crc = (len(INIT), zlib.crc32(INIT)) if current is ObjectType.COMMAND else (
                    data_offset, data_crc)  # fmt: skip
                replies.append(encode_response(op, ResultCode.SUCCESS, offset=offset, crc=crc))
            elif op is OpCode.EXECUTE:
                if current is ObjectType.COMMAND:
                    for _ in range(2):
                        flash.erase(now, 1)
                        flash.write(now, SETTINGS_WRITE_BYTES, holds_buffer=False)
                else:
                    now = flash.idle_at(now)
                    executed = data_offset
                replies.append(encode_response(op, ResultCode.SUCCESS))
            else:
                replies.append(encode_response(op, ResultCode.SUCCESS))
        # PRN notifications: the engine tells us what it expects; answer with the bootloader's truth.
        if not replies:
            replies.append(encode_response(OpCode.CALC_CHECKSUM, ResultCode.SUCCESS, offset=data_offset,
                                           crc=data_crc))  # fmt: skip
        actions = []
        for reply in replies:
            now += delay
            actions += t.on_notification(reply, now)
        if not actions and t.deadline is not None:
            now = max(now, t.deadline)
            actions = t.on_timeout(now)


@settings(max_examples=60, deadline=None)
@given(
    erase_ms=st.floats(5.0, 200.0),
    word_us=st.floats(5.0, 120.0),
    queue=st.integers(2, 16),
    packet_size=st.sampled_from([20, 64, 128, 182, 244]),
    objects=st.integers(1, 4),
    tail=st.integers(0, 4095),
    delay=st.sampled_from([0.0, 0.0075, 0.03]),
)
def test_schedule_never_overflows_the_flash_queue(
    erase_ms: float, word_us: float, queue: int, packet_size: int, objects: int, tail: int, delay: float
) -> None:
    timing = FlashTiming(page_erase_ms=erase_ms, word_write_us=word_us, flash_queue_size=queue)
    fw = bytes((i * 31 + 7) & 0xFF for i in range(objects * 4096 + tail))
    dropped, executed = run(timing, packet_size, fw, 4096, delay)
    assert dropped == 0
    assert executed == objects + (1 if tail else 0)


def test_probing_the_erase_lag_loses_at_most_one_object_then_stops() -> None:
    """With probing on, a symmetric link (answers take as long as requests) punishes the probe once."""
    timing = FlashTiming(page_erase_ms=8.0, word_write_us=62.0, flash_queue_size=3)
    fw = bytes((i * 31 + 7) & 0xFF for i in range(8 * 4096))
    dropped, executed = run(timing, 244, fw, 4096, 0.0075, probe=True)
    assert 0 < dropped <= timing.flash_queue_size, "one object's worth of drops"
    assert executed == 8
    assert run(timing, 244, fw, 4096, 0.0075, probe=False) == (0, 8)


def test_pacer_waits_for_the_erase_once_the_queue_is_full() -> None:
    timing = FlashTiming(page_erase_ms=100.0, word_write_us=40.0, flash_queue_size=4)
    pacer = FlashPacer(timing, buffers=17, slack=0)
    pacer.erase(1.0, 4096)
    times = [pacer.packet(1.0, 244) for _ in range(5)]
    write = 61 * 40e-6
    # Erase + 3 packets fill the queue; the 4th waits for the erase (1.1), the 5th for the first write.
    assert times[:3] == [1.0, 1.0, 1.0]
    assert abs(times[3] - 1.1) < 1e-9
    assert abs(times[4] - (1.1 + write)) < 1e-9


def test_pacer_buffer_pool_limits_too() -> None:
    timing = FlashTiming(page_erase_ms=10.0, word_write_us=40.0, flash_queue_size=64)
    pacer = FlashPacer(timing, buffers=3, slack=0)
    times = [pacer.packet(0.0, 244) for _ in range(4)]
    assert times[:3] == [0.0, 0.0, 0.0]
    assert abs(times[3] - 61 * 40e-6) < 1e-9, "the 4th packet waits for the first buffer to free"


def test_pacer_room_and_widen() -> None:
    timing = FlashTiming(page_erase_ms=100.0, flash_queue_size=4)
    pacer = FlashPacer(timing, buffers=17, slack=0)
    pacer.erase(0.0, 4096)
    for _ in range(3):
        pacer.packet(0.0, 244)
    assert pacer.pending(0.0) == 4
    assert pacer.room_at(0.0, 1) == 0.1, "room for one more once the erase is done"
    pacer.widen()
    assert pacer.slack == 1
    pacer.idle()
    assert pacer.pending(0.0) == 0


def test_pacer_gives_flash_only_the_radios_idle_share() -> None:
    """SoftDevice flash runs between connection events: with half the time, every operation takes twice."""
    timing = FlashTiming(page_erase_ms=100.0, word_write_us=40.0, flash_queue_size=4)
    pacer = FlashPacer(timing, buffers=17, slack=0, duty=0.5)
    pacer.erase(0.0, 4096)
    times = [pacer.packet(0.0, 244) for _ in range(4)]
    assert abs(times[3] - 0.2) < 1e-9, "the 4th packet waits for an erase of 100 ms at half time"


def test_pacer_does_not_wait_for_an_erase_that_holds_the_link() -> None:
    """nRF52832: no partial erase; the erase runs whole through the connection events, so no packet arrives
    meanwhile and the pacer has nothing to wait for."""
    timing = FlashTiming(page_erase_ms=100.0, word_write_us=40.0, flash_queue_size=4)
    pacer = FlashPacer(timing, buffers=17, slack=0, duty=0.5, erase_preempts=True)
    pacer.erase(0.0, 4096)
    times = [pacer.packet(0.0, 244) for _ in range(4)]
    assert times[3] < 0.01


def test_updater_paces_with_the_profiles_idle_share_and_chip() -> None:
    from dfu.updater import flash_duty
    from profiles.model import load_profile

    assert flash_duty(load_profile("nrf52840-s140")) == 0.5  # 7.5 ms events every 15 ms
    assert not load_profile("nrf52832-s132").chip.erases_in_slices  # type: ignore[union-attr]
    assert load_profile("nrf52840-s140").chip.erases_in_slices  # type: ignore[union-attr]


def test_pacer_charges_a_sliced_erase_one_interval_more() -> None:
    """An 85 ms erase split over 7.5 ms idle spans ends up to one 15 ms interval after its half-time share."""
    timing = FlashTiming(page_erase_ms=100.0, word_write_us=40.0, flash_queue_size=4)
    pacer = FlashPacer(timing, buffers=17, slack=0, duty=0.5, interval_s=0.015)
    pacer.erase(0.0, 4096)
    times = [pacer.packet(0.0, 244) for _ in range(4)]
    assert abs(times[3] - 0.215) < 1e-9
