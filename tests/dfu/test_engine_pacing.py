"""Closed-loop pacing: the schedule never overflows the bootloader's flash queue or buffer pool when the
timing is known, and learns the board's pace from its answers when the profile is wrong or silent.

The queue model is the simulator's (`simulator.flash.Flash`, the SDK's fstorage queue + receive buffers);
the bootloader handles each request when its answer is sent (the latest moment the engine may assume) and
each packet exactly at its `not_before` (the earliest it can arrive); an Execute of data is answered once its
flash is idle, as the SDK answers it. Hypothesis varies the flash timing, queue and pool sizes, packet size,
image size and reply delays.
"""

from __future__ import annotations

import math
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfu.engine import Action, ImageComplete, ImageTransfer, TransferStats, WriteControl, WritePacket
from dfu.errors import ObjectRetriesError
from dfu.pacing import (
    LOSS_STEP,
    PACE_MARGIN,
    SETTINGS_WRITE_BYTES,
    FlashEstimator,
    FlashPacer,
    _Op,
    drain_time,
    scale_at_least,
    scale_at_most,
)
from dfu.protocol import ObjectType, OpCode, ResultCode, decode_request, encode_response
from profiles.model import FlashTiming
from simulator.flash import Flash

INIT = bytes(range(40))
M = 1 + PACE_MARGIN
"""every duration the pacer models carries this relative margin"""


def run(
    timing: FlashTiming,
    packet_size: int,
    fw: bytes,
    max_size: int,
    delay: float,
    *,
    told: FlashTiming | None = None,
    probe: bool = True,
    saves_progress: bool | None = False,
    lossy: bool = False,
) -> tuple[int, TransferStats]:
    """Drive one transfer against the flash model (`timing`: the board's; `told`: what the engine is told,
    default the same); returns (packets dropped, the transfer's stats)."""
    flash = Flash(timing, timing.buffers_for(packet_size + 3, max_size))
    t = ImageTransfer(
        INIT,
        fw,
        packet_size=packet_size,
        flash=timing if told is None else told,
        probe=probe,
        saves_progress=saves_progress,
    )
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
                return dropped, action.stats
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
                    if not flash.erase(now, 1):
                        # What the bootloader answers (fstorage full); a test with lossless pacing forbids it.
                        assert lossy, "the engine created an object while the queue was full"
                        replies.append(encode_response(op, ResultCode.INVALID_OBJECT))
                        continue
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
    queue=st.integers(5, 16),  # the init packet's settings write alone is 4 operations (15.3+)
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
    dropped, stats = run(timing, packet_size, fw, 4096, delay)
    assert dropped == 0
    assert stats.objects == objects + (1 if tail else 0)


@settings(max_examples=40, deadline=None)
@given(
    erase_ms=st.floats(20.0, 120.0),
    word_us=st.floats(10.0, 80.0),
    wrong=st.sampled_from([0.5, 2.0]),
    packet_size=st.sampled_from([64, 244]),
    delay=st.sampled_from([0.0075, 0.03]),
)
def test_a_profile_wrong_by_two_either_way_is_corrected_before_any_data(
    erase_ms: float, word_us: float, wrong: float, packet_size: int, delay: float
) -> None:
    """The empty-object Execute is answered once the init packet's settings write is done: the engine learns
    the board's pace from it, so flash twice as fast or twice as slow as the profile says loses nothing."""
    board = FlashTiming(page_erase_ms=erase_ms, word_write_us=word_us, flash_queue_size=16)
    told = FlashTiming(page_erase_ms=erase_ms * wrong, word_write_us=word_us * wrong, flash_queue_size=16)
    fw = bytes((i * 31 + 7) & 0xFF for i in range(4 * 4096 + 100))
    dropped, stats = run(board, packet_size, fw, 4096, delay, told=told)
    assert dropped == 0
    assert stats.objects == 5
    assert stats.probes == 1
    # Learned: the board's pace, or slower (a drain says little when a round trip outlasts the flash work).
    assert stats.pace_scale >= 0.98 / wrong


@pytest.mark.parametrize("wrong", [0.5, 2.0])
def test_the_pace_learned_is_the_boards(wrong: float) -> None:
    board = FlashTiming(page_erase_ms=85.0, word_write_us=41.0, flash_queue_size=16)
    told = FlashTiming(page_erase_ms=85.0 * wrong, word_write_us=41.0 * wrong, flash_queue_size=16)
    fw = bytes((i * 31 + 7) & 0xFF for i in range(8 * 4096))
    dropped, stats = run(board, 244, fw, 4096, 0.0075, told=told)
    assert dropped == 0
    assert 0.98 / wrong <= stats.pace_scale <= 1.1 / wrong


def test_without_the_probe_a_profile_claiming_twice_the_speed_loses_packets() -> None:
    """The same board and profile, the probe off: what the probe saves (and what it is checked by)."""
    board = FlashTiming(page_erase_ms=85.0, word_write_us=41.0, flash_queue_size=16)
    told = FlashTiming(page_erase_ms=42.5, word_write_us=20.5, flash_queue_size=16)
    fw = bytes((i * 31 + 7) & 0xFF for i in range(4 * 4096))
    dropped, stats = run(board, 244, fw, 4096, 0.0075, told=told, probe=False, lossy=True)
    assert dropped > 0
    assert stats.overruns >= 1
    assert stats.pace_scale >= LOSS_STEP, "each loss slowed the pace"
    assert stats.objects == 4, "and the transfer still completed"


def test_no_flash_timing_at_all_is_learned_too() -> None:
    """`flash=None` (generic-nrf52): the engine starts from the datasheet timing at twice the time and takes
    the board's pace from its first drain; a board three times slower than the datasheet loses nothing."""
    board = FlashTiming(page_erase_ms=255.0, word_write_us=123.0, flash_queue_size=16)
    fw = bytes((i * 31 + 7) & 0xFF for i in range(4 * 4096))
    flash = Flash(board, board.buffers_for(247, 4096))
    assert flash.buffer_count == 17
    t = ImageTransfer(INIT, fw, packet_size=244, flash=None)
    assert t.pace.scale == 2.0
    dropped, stats = run(board, 244, fw, 4096, 0.0075, told=None)
    assert dropped == 0
    assert stats.pace_scale == pytest.approx(1.0, rel=0.1)


def test_a_probe_reveals_a_bootloader_that_saves_progress_in_flash() -> None:
    """Unknown build (`saves_progress=None`): after the first object an empty Execute waits for the settings
    write such a build queues behind every Execute; answered at once, the build does not save progress."""
    timing = FlashTiming(page_erase_ms=85.0, word_write_us=41.0, flash_queue_size=16)
    fw = bytes((i * 31 + 7) & 0xFF for i in range(3 * 4096))
    t = ImageTransfer(INIT, fw, packet_size=244, flash=timing, saves_progress=None)
    assert t.pace.saves_progress is None
    dropped, stats = run(timing, 244, fw, 4096, 0.0075, saves_progress=None)
    assert dropped == 0
    assert stats.probes == 2, "the pace, then the settings write"
    # This harness's bootloader writes no settings after a data Execute: the probe is answered at once.
    assert stats.objects == 3


def test_pacer_waits_for_the_erase_once_the_queue_is_full() -> None:
    timing = FlashTiming(page_erase_ms=100.0, word_write_us=40.0, flash_queue_size=4)
    pacer = FlashPacer(timing, buffers=17, slack=0)
    pacer.erase(1.0, 4096)
    times = [pacer.packet(1.0, 244) for _ in range(5)]
    write = 61 * 40e-6 * M
    # Erase + 3 packets fill the queue; the 4th waits for the erase (1.1), the 5th for the first write.
    assert times[:3] == [1.0, 1.0, 1.0]
    assert times[3] == pytest.approx(1.0 + 0.1 * M, abs=1e-5)
    assert times[4] == pytest.approx(1.0 + 0.1 * M + write, abs=1e-5)


def test_pacer_buffer_pool_limits_too() -> None:
    timing = FlashTiming(page_erase_ms=10.0, word_write_us=40.0, flash_queue_size=64)
    pacer = FlashPacer(timing, buffers=3, slack=0)
    times = [pacer.packet(0.0, 244) for _ in range(4)]
    assert times[:3] == [0.0, 0.0, 0.0]
    assert times[3] == pytest.approx(61 * 40e-6 * M, abs=1e-5), "the 4th packet waits for the first buffer"


def test_pacer_room_and_widen() -> None:
    timing = FlashTiming(page_erase_ms=100.0, flash_queue_size=4)
    pacer = FlashPacer(timing, buffers=17, slack=0)
    pacer.erase(0.0, 4096)
    for _ in range(3):
        pacer.packet(0.0, 244)
    assert pacer.pending(0.0) == 4
    assert pacer.room_at(0.0, 1) == pytest.approx(0.1 * M, abs=1e-5), "room for one more after the erase"
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
    assert times[3] == pytest.approx(0.2 * M, abs=1e-5), "the 4th packet waits for 100 ms erased at half time"


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


def test_pacer_keeps_operations_pending_half_an_interval_past_their_share() -> None:
    """Flash runs only between 7.5 ms connection events every 15 ms: the real queue lags the fluid model by up
    to one event, so an operation counts as pending half an interval past its fluid end."""
    timing = FlashTiming(page_erase_ms=100.0, word_write_us=40.0, flash_queue_size=4)
    pacer = FlashPacer(timing, buffers=17, slack=0, duty=0.5, interval_s=0.015)
    pacer.erase(0.0, 4096)
    times = [pacer.packet(0.0, 244) for _ in range(4)]
    assert times[3] == pytest.approx(0.2 * (1 + PACE_MARGIN) + 0.0075, abs=1e-5)


def test_pacer_scale_multiplies_every_duration() -> None:
    timing = FlashTiming(page_erase_ms=100.0, word_write_us=40.0, flash_queue_size=4)
    pacer = FlashPacer(timing, buffers=17, slack=0, scale=2.0)
    pacer.erase(0.0, 4096)
    times = [pacer.packet(0.0, 244) for _ in range(4)]
    assert times[3] == pytest.approx(0.2 * (1 + PACE_MARGIN), abs=1e-5), "a 100 ms erase at twice the time"


def test_a_late_closing_prn_replans_the_last_write() -> None:
    """A busy link delivered the object's last packet later than paced: the flash is busy that much longer."""
    timing = FlashTiming(page_erase_ms=10.0, word_write_us=40.0, flash_queue_size=16)
    pacer = FlashPacer(timing, buffers=17, slack=0)
    for _ in range(3):
        pacer.packet(0.0, 244)
    before = pacer.idle_at
    pacer.arrived_no_earlier(0.05)
    assert pacer.idle_at == pytest.approx(0.05 + 61 * 40e-6 * M, abs=1e-5)
    assert before < pacer.idle_at


# --- the estimator ------------------------------------------------------------------------------------------


def _log(arrivals_works: list[tuple[float, float]]) -> list[_Op]:
    return [_Op(a, w, a) for a, w in arrivals_works]


def test_drain_time_is_the_first_idle_moment_after_the_execute() -> None:
    ops = _log([(0.0, 0.1), (0.05, 0.1), (0.5, 0.1)])
    assert drain_time(ops, 0.0, 0.0, 1.0) == pytest.approx(0.2), "idle from 0.2 until the third op arrives"
    assert drain_time(ops, 0.0, 0.3, 1.0) == pytest.approx(0.3), "handled while idle: answered at once"
    assert drain_time(ops, 0.0, 0.55, 1.0) == pytest.approx(0.6)
    assert drain_time(ops, 0.0, 0.0, 6.0) == pytest.approx(1.8), "slow enough, the queue never empties"
    for a, b in zip([0.5, 1.0, 2.0, 4.0], [1.0, 2.0, 4.0, 8.0], strict=True):
        assert drain_time(ops, 0.0, 0.0, a) <= drain_time(ops, 0.0, 0.0, b), "non-decreasing in the scale"


def test_scale_bounds_bracket_the_true_scale() -> None:
    ops = _log([(0.0, 0.2), (0.01, 0.01), (0.02, 0.01), (0.03, 0.01)])
    true = 1.7
    drained = drain_time(ops, 0.0, 0.05, true)
    window = 0.015
    answered = drained + 0.004  # the answer left with the next connection event
    low = scale_at_least(ops, 0.0, 0.05, answered - window)
    high = scale_at_most(ops, 0.0, 0.05, answered)
    assert low <= true <= high
    assert high / low < 1.1, "one drain of a busy queue pins the scale within a window's worth"


def test_estimator_keeps_the_tightest_upper_bound_and_slows_on_a_loss() -> None:
    est = FlashEstimator(prior=1.0)
    est.observe(0.05, 20.0)
    assert est.scale == 1.0, "a drain that says nothing changes nothing"
    est.observe(1.9, 2.1)
    assert est.scale == 2.1, "slower than the prior: the drain's own upper bound"
    est.observe(0.05, 2.0)
    assert est.scale == 2.0, "a tighter upper bound"
    est.observe(0.05, 3.0)
    assert est.scale == 2.0, "a loose one is ignored"
    est.overrun()
    assert est.scale == pytest.approx(2.0 * LOSS_STEP)
    assert est.losses == 1


# --- bounded retries, then a typed error --------------------------------------------------------------------


def test_an_object_that_keeps_losing_packets_ends_in_a_typed_error_saying_what_was_seen() -> None:
    from dfu.protocol import ObjectType, OpCode, ResultCode, encode_response

    timing = FlashTiming(page_erase_ms=85.0, word_write_us=41.0, flash_queue_size=16)
    fw = bytes(8192)
    t = ImageTransfer(INIT, fw, packet_size=244, flash=timing, probe=False, max_object_retries=2)
    t.start(0.0)
    t.on_notification(encode_response(OpCode.SELECT, ResultCode.SUCCESS, max_size=512, offset=0, crc=0), 0.0)
    t.on_notification(encode_response(OpCode.SET_PRN, ResultCode.SUCCESS), 0.0)
    t.on_notification(encode_response(OpCode.CREATE, ResultCode.SUCCESS), 0.0)
    t.on_notification(
        encode_response(OpCode.CALC_CHECKSUM, ResultCode.SUCCESS, offset=len(INIT), crc=zlib.crc32(INIT)), 0.0
    )
    t.on_notification(encode_response(OpCode.EXECUTE, ResultCode.SUCCESS), 0.0)
    t.on_notification(encode_response(OpCode.SELECT, ResultCode.SUCCESS, max_size=4096, offset=0, crc=0), 0.0)
    assert t.on_notification(encode_response(OpCode.SET_PRN, ResultCode.SUCCESS), 0.0) == [
        WriteControl(b"\x01\x02\x00\x10\x00\x00")
    ], "no probe asked for: Create at once"
    lost = encode_response(OpCode.CALC_CHECKSUM, ResultCode.SUCCESS, offset=0, crc=0)  # a queue-full drop
    now = 0.0

    def attempt() -> None:
        nonlocal now
        now += 1.0
        t.on_notification(encode_response(OpCode.CREATE, ResultCode.SUCCESS), now)
        now += 1.0
        t.on_notification(lost, now)
        if t.deadline is not None and t.phase.value == "data-backoff":
            now = t.deadline
            t.on_timeout(now)

    for _ in range(2):
        attempt()
    with pytest.raises(ObjectRetriesError) as raised:
        attempt()
    err = raised.value
    assert (err.index, err.offset, err.attempts) == (0, 0, 3)
    assert len(err.seen) == 3
    assert all("a packet was lost" in seen for seen in err.seen)
    assert "pace 3.38" in err.seen[-1], "each loss slowed the pace by half: 1.5, 2.25, 3.38"
    assert t.stats.overruns == 3
    assert math.isclose(t.pace.scale, LOSS_STEP**3)
    del ObjectType
