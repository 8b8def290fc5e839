"""Scripted conversations with the sans-I/O engine: exact notification bytes in, exact actions out."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from dfu.engine import (
    Action,
    ImageComplete,
    ImageTransfer,
    Phase,
    Progress,
    WriteControl,
    WritePacket,
)
from dfu.errors import (
    ChecksumMismatchError,
    DfuProtocolError,
    DfuRejected,
    DfuResponseError,
    DfuTimeoutError,
)
from dfu.protocol import ExtError, ObjectType, OpCode, ResultCode, encode_request, encode_response
from profiles.model import FlashTiming

INIT = bytes(range(30))  # 2 packets of 20
FW = bytes((i * 7) & 0xFF for i in range(150))  # objects of 64: 64 + 64 + 22
MAX = 64
PS = 20  # 4 packets per object: 20 20 20 4
FLASH = FlashTiming(flash_queue_size=8)  # a small queue, so that these short objects fill it


def ok(op: OpCode, **payload: Any) -> bytes:
    return encode_response(op, ResultCode.SUCCESS, **payload)


def fail(op: OpCode, result: ResultCode, ext: ExtError | None = None) -> bytes:
    return encode_response(op, result, ext)


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def req(op: OpCode, **params: int) -> WriteControl:
    return WriteControl(encode_request(op, **params))


def controls(actions: list[Action]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, WriteControl)]


def packets(actions: list[Action]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, WritePacket)]


def new(**kw: Any) -> ImageTransfer:
    """An engine for exact conversations: no timing probe (tests/dfu/test_engine_pacing.py has those)."""
    kw.setdefault("flash", FLASH)
    kw.setdefault("probe", False)
    return ImageTransfer(INIT, FW, packet_size=PS, **kw)


def through_init(t: ImageTransfer, now: float = 0.0) -> list[Action]:
    """Fresh device: the init packet is written and executed; returns the actions after select data."""
    assert t.start(now) == [req(OpCode.SELECT, type=ObjectType.COMMAND)]
    assert t.on_notification(ok(OpCode.SELECT, max_size=512, offset=0, crc=0), now) == [
        req(OpCode.SET_PRN, prn=0)
    ]
    assert t.on_notification(ok(OpCode.SET_PRN), now) == [
        req(OpCode.CREATE, type=ObjectType.COMMAND, size=len(INIT))
    ]
    actions = t.on_notification(ok(OpCode.CREATE), now)
    assert actions == [WritePacket(INIT[:20], now), WritePacket(INIT[20:], now), req(OpCode.CALC_CHECKSUM)]
    assert t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=30, crc=crc(INIT)), now) == [req(OpCode.EXECUTE)]
    assert t.on_notification(ok(OpCode.EXECUTE), now) == [req(OpCode.SELECT, type=ObjectType.DATA)]
    return t.on_notification(ok(OpCode.SELECT, max_size=MAX, offset=0, crc=0), now)


def test_fresh_transfer_exact_conversation() -> None:
    t = new()
    now = 1.0
    assert through_init(t, now) == [Progress(0, 150, 0), req(OpCode.SET_PRN, prn=4)]
    assert t.prn == 4, "one PRN per object, on its last packet"
    assert t.on_notification(ok(OpCode.SET_PRN), now) == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]
    actions = t.on_notification(ok(OpCode.CREATE), now)
    assert packets(actions) == [FW[0:20], FW[20:40], FW[40:60], FW[60:64]]
    assert controls(actions) == [], "the closing PRN verifies the object: no checksum request"
    # The closing PRN: verified -> execute, with the next Create right behind it (flash has room by now).
    now += 1.0
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=crc(FW[:64])), now)
    assert actions == [
        Progress(64, 150, 0),
        req(OpCode.EXECUTE),
        req(OpCode.CREATE, type=ObjectType.DATA, size=64),
    ]
    assert t.on_notification(ok(OpCode.EXECUTE), now) == [Progress(64, 150, 0)]
    actions = t.on_notification(ok(OpCode.CREATE), now)
    assert packets(actions) == [FW[64:84], FW[84:104], FW[104:124], FW[124:128]]
    now += 1.0
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=128, crc=crc(FW[:128])), now)
    assert controls(actions) == [req(OpCode.EXECUTE).data, req(OpCode.CREATE, type=2, size=22).data]
    t.on_notification(ok(OpCode.EXECUTE), now)
    # The short last object is not PRN-aligned: one checksum request.
    actions = t.on_notification(ok(OpCode.CREATE), now)
    assert packets(actions) == [FW[128:148], FW[148:150]]
    assert controls(actions) == [req(OpCode.CALC_CHECKSUM).data]
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=150, crc=crc(FW)), now)
    assert actions == [Progress(150, 150, 0), req(OpCode.EXECUTE)], "no Create after the last object"
    actions = t.on_notification(ok(OpCode.EXECUTE), now)
    assert actions[-1] == ImageComplete(t.stats)
    assert t.done
    assert t.deadline is None
    s = t.stats
    assert (s.bytes_sent, s.bytes_resent, s.init_bytes_sent, s.objects, s.retries) == (150, 0, 30, 3, 0)
    assert s.round_trips == 5 + 2 + 3 + 3 + 3  # init; select + PRN; per object create, PRN|checksum, execute


def test_init_already_present_is_executed_not_resent() -> None:
    t = new()
    t.start(0.0)
    actions = t.on_notification(ok(OpCode.SELECT, max_size=512, offset=30, crc=crc(INIT)), 0.0)
    assert actions == [req(OpCode.EXECUTE)]
    assert t.on_notification(ok(OpCode.EXECUTE), 0.0) == [req(OpCode.SELECT, type=ObjectType.DATA)]
    assert t.stats.init_reused
    assert t.stats.init_bytes_sent == 0


def test_init_already_executed_operation_not_permitted_is_tolerated() -> None:
    t = new()
    t.start(0.0)
    t.on_notification(ok(OpCode.SELECT, max_size=512, offset=30, crc=crc(INIT)), 0.0)
    actions = t.on_notification(fail(OpCode.EXECUTE, ResultCode.OPERATION_NOT_PERMITTED), 0.0)
    assert actions == [req(OpCode.SELECT, type=ObjectType.DATA)]


def test_fresh_init_execute_not_permitted_is_an_error() -> None:
    t = new()
    through = t.start(0.0)
    assert through
    t.on_notification(ok(OpCode.SELECT, max_size=512, offset=0, crc=0), 0.0)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=30, crc=crc(INIT)), 0.0)
    with pytest.raises(DfuResponseError, match="operation not permitted"):
        t.on_notification(fail(OpCode.EXECUTE, ResultCode.OPERATION_NOT_PERMITTED), 0.0)
    assert t.phase is Phase.FAILED


def test_init_packet_larger_than_the_bootloader_takes_is_rejected_at_once() -> None:
    t = new()
    t.start(0.0)
    with pytest.raises(DfuRejected, match=r"CREATE refused: insufficient resources"):
        t.on_notification(ok(OpCode.SELECT, max_size=16, offset=0, crc=0), 0.0)


def test_partial_init_packet_is_rewritten() -> None:
    t = new()
    t.start(0.0)
    actions = t.on_notification(ok(OpCode.SELECT, max_size=512, offset=20, crc=crc(INIT[:20])), 0.0)
    assert actions == [req(OpCode.SET_PRN, prn=0)], "PRN off before the init packet"


def resume(t: ImageTransfer, offset: int, crc_: int) -> list[Action]:
    """Init present and executed; select data reports `offset`/`crc_`; returns the actions after Set PRN."""
    t.start(0.0)
    t.on_notification(ok(OpCode.SELECT, max_size=512, offset=30, crc=crc(INIT)), 0.0)
    t.on_notification(fail(OpCode.EXECUTE, ResultCode.OPERATION_NOT_PERMITTED), 0.0)
    actions = t.on_notification(ok(OpCode.SELECT, max_size=MAX, offset=offset, crc=crc_), 0.0)
    assert actions[-1] == req(OpCode.SET_PRN, prn=4)
    return t.on_notification(ok(OpCode.SET_PRN), 0.0)


def test_resume_mid_object_continues_without_create() -> None:
    t = new()
    actions = resume(t, 70, crc(FW[:70]))
    assert controls(actions) == [req(OpCode.CALC_CHECKSUM).data], "no Create: it would rewind the object"
    assert packets(actions) == [FW[70:90], FW[90:110], FW[110:128]]
    assert t.stats.resumed_from == 70
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=128, crc=crc(FW[:128])), 0.0)
    assert actions[1:] == [req(OpCode.EXECUTE), req(OpCode.CREATE, type=ObjectType.DATA, size=22)]
    assert actions[0] == Progress(128, 150, 70)


def test_resume_at_boundary_executes_and_tolerates_not_permitted() -> None:
    t = new()
    actions = resume(t, 64, crc(FW[:64]))
    assert actions == [req(OpCode.EXECUTE)], "the object may be complete but unexecuted"
    actions = t.on_notification(fail(OpCode.EXECUTE, ResultCode.OPERATION_NOT_PERMITTED), 0.0)
    assert actions == [Progress(64, 150, 64), req(OpCode.CREATE, type=ObjectType.DATA, size=64)]
    assert t.stats.objects == 0


def test_resume_at_boundary_unexecuted_object_is_executed() -> None:
    t = new()
    resume(t, 128, crc(FW[:128]))
    actions = t.on_notification(ok(OpCode.EXECUTE), 0.0)
    assert actions[-1] == req(OpCode.CREATE, type=ObjectType.DATA, size=22)
    assert t.stats.objects == 1


def test_resume_complete_image_only_needs_the_last_execute() -> None:
    t = new()
    assert resume(t, 150, crc(FW)) == [req(OpCode.EXECUTE)]
    assert isinstance(t.on_notification(ok(OpCode.EXECUTE), 0.0)[-1], ImageComplete)


def test_resume_at_image_end_refused_execute_is_an_error() -> None:
    t = new()
    resume(t, 150, crc(FW))
    with pytest.raises(DfuResponseError):
        t.on_notification(fail(OpCode.EXECUTE, ResultCode.OPERATION_NOT_PERMITTED), 0.0)


def test_resume_crc_mismatch_mid_object_recreates_that_object() -> None:
    t = new()
    actions = resume(t, 70, 0xDEADBEEF)
    assert actions == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]
    assert t.stats.resumed_from == 64
    actions = t.on_notification(ok(OpCode.CREATE), 0.0)
    assert packets(actions)[0] == FW[64:84]


def test_resume_crc_mismatch_on_boundary_recreates_and_checks_the_rewind() -> None:
    t = new()
    actions = resume(t, 128, 0xDEADBEEF)
    assert actions == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)], "redo the unexecuted object 1"
    assert t.on_notification(ok(OpCode.CREATE), 0.0) == [req(OpCode.CALC_CHECKSUM)]
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=crc(FW[:64])), 0.0)
    assert packets(actions) == [FW[64:84], FW[84:104], FW[104:124], FW[124:128]]


def test_resume_crc_mismatch_in_executed_data_is_a_protocol_error() -> None:
    t = new()
    resume(t, 128, 0xDEADBEEF)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    with pytest.raises(DfuProtocolError, match="not this image"):
        t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=128, crc=0xDEADBEEF), 0.0)


def test_damaged_object_waits_for_flash_room_before_recreating() -> None:
    """Right after streaming, the modelled flash queue is full: the Create waits (a timer), not the radio."""
    t = new()
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    assert t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=44, crc=0), 0.0) == []
    assert t.phase is Phase.DATA_BACKOFF
    deadline = t.deadline
    assert deadline is not None
    assert 0.0 < deadline < 1.0
    assert t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=0), 0.01) == [], "stale PRN ignored"
    assert t.on_timeout(deadline) == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]


def test_damaged_object_is_recreated_and_resent() -> None:
    t = new()
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    # The closing PRN shows a lost packet: offset short of the object's end.
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=44, crc=crc(FW[:20] + FW[40:64])), 10.0)
    assert actions == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]
    actions = t.on_notification(ok(OpCode.CREATE), 10.0)
    assert packets(actions) == [FW[0:20], FW[20:40], FW[40:60], FW[60:64]]
    assert t.stats.retries == 1
    assert t.stats.bytes_resent == 64
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=crc(FW[:64])), 10.0)
    assert req(OpCode.EXECUTE) in actions


def test_wrong_crc_at_object_end_is_recreated() -> None:
    t = new()
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=crc(FW[:64]) ^ 1), 10.0)
    assert actions == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)], "never execute a damaged object"


def test_retries_exhausted_raise_checksum_mismatch() -> None:
    t = new(max_object_retries=2)
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    now = 0.0
    for _ in range(2):
        t.on_notification(ok(OpCode.CREATE), now)
        now += 10.0
        actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=0), now)
        assert actions == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]
    t.on_notification(ok(OpCode.CREATE), now)
    with pytest.raises(ChecksumMismatchError, match=r"object 0 \(offset 0\) arrived damaged 3 times"):
        t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=0), now + 10.0)


def test_init_packet_damaged_is_rewritten_then_gives_up() -> None:
    t = new(max_object_retries=1)
    t.start(0.0)
    t.on_notification(ok(OpCode.SELECT, max_size=512, offset=0, crc=0), 0.0)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=20, crc=crc(INIT[:20])), 0.0)
    assert actions == [req(OpCode.CREATE, type=ObjectType.COMMAND, size=30)]
    t.on_notification(ok(OpCode.CREATE), 0.0)
    with pytest.raises(ChecksumMismatchError, match="init packet"):
        t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=20, crc=crc(INIT[:20])), 0.0)


REJECTIONS = [
    (ExtError.SIGNATURE_MISSING, "signature missing"),
    (ExtError.INIT_COMMAND_INVALID, "init command invalid"),
    (ExtError.FW_VERSION_FAILURE, "firmware version too low"),
    (ExtError.HW_VERSION_FAILURE, "hardware version mismatch"),
    (ExtError.SD_VERSION_FAILURE, "SoftDevice version not accepted"),
    (ExtError.WRONG_HASH_TYPE, "wrong hash type"),
    (ExtError.WRONG_SIGNATURE_TYPE, "wrong signature type"),
    (ExtError.INSUFFICIENT_SPACE, "insufficient space"),
]


@pytest.mark.parametrize(("ext", "words"), REJECTIONS)
def test_init_execute_rejections_name_their_cause(ext: ExtError, words: str) -> None:
    t = new()
    t.start(0.0)
    t.on_notification(ok(OpCode.SELECT, max_size=512, offset=30, crc=crc(INIT)), 0.0)
    with pytest.raises(DfuRejected) as info:
        t.on_notification(fail(OpCode.EXECUTE, ResultCode.EXT_ERROR, ext), 0.0)
    assert str(info.value) == f"EXECUTE refused: {words} ({ext.name})"
    assert info.value.ext_error is ext
    assert t.phase is Phase.FAILED
    assert t.abort() == [WriteControl(b"\x0c")]


@pytest.mark.parametrize("result", [ResultCode.INVALID_OBJECT, ResultCode.INSUFFICIENT_RESOURCES])
def test_init_execute_invalid_object_is_a_rejection(result: ResultCode) -> None:
    t = new()
    t.start(0.0)
    t.on_notification(ok(OpCode.SELECT, max_size=512, offset=30, crc=crc(INIT)), 0.0)
    with pytest.raises(DfuRejected, match=result.name):
        t.on_notification(fail(OpCode.EXECUTE, result), 0.0)


def test_final_verification_failure_is_a_rejection() -> None:
    t = new()
    resume(t, 150, crc(FW))
    with pytest.raises(
        DfuRejected, match=r"image hash does not match the init packet \(VERIFICATION_FAILED\)"
    ):
        t.on_notification(fail(OpCode.EXECUTE, ResultCode.EXT_ERROR, ExtError.VERIFICATION_FAILED), 0.0)


@pytest.mark.parametrize(
    ("result", "cls"),
    [
        (ResultCode.OPERATION_FAILED, DfuResponseError),
        (ResultCode.INVALID_PARAMETER, DfuResponseError),
        (ResultCode.OP_CODE_NOT_SUPPORTED, DfuResponseError),
    ],
)
def test_other_refusals_are_response_errors_not_rejections(
    result: ResultCode, cls: type[DfuResponseError]
) -> None:
    t = new()
    t.start(0.0)
    with pytest.raises(cls) as info:
        t.on_notification(fail(OpCode.SELECT, result), 0.0)
    assert not isinstance(info.value, DfuRejected)
    assert info.value.result is result


def test_create_data_refused_too_large_is_typed() -> None:
    t = new()
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    with pytest.raises(DfuResponseError, match="INSUFFICIENT_RESOURCES"):
        t.on_notification(fail(OpCode.CREATE, ResultCode.INSUFFICIENT_RESOURCES), 0.0)


def test_create_refused_for_busy_flash_backs_off_then_retries() -> None:
    t = new()
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    assert t.on_notification(fail(OpCode.CREATE, ResultCode.INVALID_OBJECT), 1.0) == []
    assert t.phase is Phase.DATA_BACKOFF
    # One page erase (paced with its small margin) frees a queue slot.
    assert t.deadline == pytest.approx(1.0 + FLASH.erase_seconds, abs=0.005)
    assert t.on_timeout(t.deadline) == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]
    assert t.stats.busy_waits == 1
    assert packets(t.on_notification(ok(OpCode.CREATE), 1.2))[0] == FW[:20]


def test_a_timer_firing_a_float_hair_before_the_deadline_still_acts() -> None:
    """asyncio runs a timer within its clock resolution of `when`: declining it would spin the I/O loop."""
    t = new()
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(fail(OpCode.CREATE, ResultCode.INVALID_OBJECT), 10.54296)
    assert t.deadline is not None
    early = t.deadline - 2e-15  # 10.62796 against 10.627960000000002, as seen on a looptime loop
    assert early < t.deadline
    assert t.on_timeout(early) == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]


def test_busy_flash_waits_are_bounded_by_one_queue_drain() -> None:
    """Each wait lasts one erase; after `flash_queue_size` refusals in a row the refusal propagates."""
    t = new(flash=FlashTiming(flash_queue_size=3))
    through_init(t)
    assert t.on_notification(ok(OpCode.SET_PRN), 0.0) == [], "the modelled settings writes fill the queue"
    assert t.deadline is not None
    assert t.on_timeout(t.deadline) == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]
    now = 1.0
    for _ in range(3):
        assert t.on_notification(fail(OpCode.CREATE, ResultCode.INVALID_OBJECT), now) == []
        assert t.deadline is not None
        now = t.deadline
        assert t.on_timeout(now) == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]
    with pytest.raises(DfuResponseError, match="CREATE refused") as info:
        t.on_notification(fail(OpCode.CREATE, ResultCode.INVALID_OBJECT), now)
    assert not isinstance(info.value, DfuRejected)
    assert t.stats.busy_waits == 3


def test_existing_init_packet_execute_refused_for_busy_flash_is_repeated() -> None:
    """Re-executing the init packet after a reconnect stores the settings page again; with the flash queue
    still full of the previous link's writes the SDK answers OPERATION_FAILED: wait, execute again."""
    t = new()
    t.start(0.0)
    assert t.on_notification(ok(OpCode.SELECT, max_size=512, offset=30, crc=crc(INIT)), 0.0) == [
        req(OpCode.EXECUTE)
    ]
    assert t.on_notification(fail(OpCode.EXECUTE, ResultCode.OPERATION_FAILED), 0.5) == []
    assert t.phase is Phase.INIT_BACKOFF
    assert t.deadline == pytest.approx(0.5 + FLASH.erase_seconds)
    assert t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=0), 0.52) == [], "stale PRN ignored"
    assert t.on_timeout(t.deadline) == [req(OpCode.EXECUTE)]
    assert t.on_notification(ok(OpCode.EXECUTE), 0.7) == [req(OpCode.SELECT, type=ObjectType.DATA)]
    assert t.stats.busy_waits == 1


def test_new_init_packet_execute_operation_failed_is_not_waited_out() -> None:
    t = new()
    steps = [
        (ok(OpCode.SELECT, max_size=512, offset=0, crc=0), None),
        (ok(OpCode.SET_PRN), None),
        (ok(OpCode.CREATE), None),
        (ok(OpCode.CALC_CHECKSUM, offset=30, crc=crc(INIT)), [req(OpCode.EXECUTE)]),
    ]
    t.start(0.0)
    for note, expected in steps:
        actions = t.on_notification(note, 0.0)
        assert expected is None or actions == expected
    with pytest.raises(DfuResponseError, match="OPERATION_FAILED"):
        t.on_notification(fail(OpCode.EXECUTE, ResultCode.OPERATION_FAILED), 0.0)


def test_timeout_before_deadline_does_nothing_then_raises() -> None:
    t = new(response_timeout=5.0)
    t.start(10.0)
    assert t.deadline == 15.0
    assert t.on_timeout(14.9) == []
    with pytest.raises(DfuTimeoutError, match="no response to SELECT"):
        t.on_timeout(15.0)
    assert t.phase is Phase.FAILED


def test_missing_closing_prn_falls_back_to_a_checksum_request() -> None:
    t = new(prn_timeout=0.5, response_timeout=5.0)
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    actions = t.on_notification(ok(OpCode.CREATE), 0.0)
    last = [a for a in actions if isinstance(a, WritePacket)][-1]
    first = t.deadline
    assert first is not None
    assert first == pytest.approx(last.not_before + 0.5)
    assert t.on_timeout(first) == [req(OpCode.CALC_CHECKSUM)]
    deadline = t.deadline
    assert deadline is not None
    with pytest.raises(DfuTimeoutError, match="CALC_CHECKSUM"):
        t.on_timeout(deadline)


def test_prn_and_checksum_responses_are_told_apart() -> None:
    """PRN every 2 packets on a 4-packet object + a checksum request would be ambiguous byte-wise."""
    t = new(prn=3)
    through_init(t)
    actions = t.on_notification(ok(OpCode.SET_PRN), 0.0)
    assert actions == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]
    actions = t.on_notification(ok(OpCode.CREATE), 0.0)
    assert controls(actions) == [req(OpCode.CALC_CHECKSUM).data], "4 packets, PRN 3: not aligned"
    # The PRN after packet 3 (offset 60) is progress, not the checksum answer.
    prn = ok(OpCode.CALC_CHECKSUM, offset=60, crc=crc(FW[:60]))
    assert t.on_notification(prn, 0.0) == [Progress(60, 150, 0)]
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=crc(FW[:64])), 0.0)
    assert req(OpCode.EXECUTE) in actions


def test_stale_prn_while_awaiting_another_response_is_ignored() -> None:
    t = new()
    through_init(t)
    stale = ok(OpCode.CALC_CHECKSUM, offset=12, crc=34)
    assert t.on_notification(stale, 0.0) == []
    assert t.phase is Phase.DATA_PRN


def test_intermediate_prn_showing_loss_recreates_at_once() -> None:
    t = new(prn=2)
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    actions = t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=20, crc=crc(FW[:20])), 5.0)
    assert actions == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]


def test_prn_reporting_a_failed_write_recreates() -> None:
    t = new()
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    actions = t.on_notification(fail(OpCode.CALC_CHECKSUM, ResultCode.INVALID_PARAMETER), 5.0)
    assert actions == [req(OpCode.CREATE, type=ObjectType.DATA, size=64)]


def test_unexpected_and_malformed_notifications_are_protocol_errors() -> None:
    t = new()
    t.start(0.0)
    with pytest.raises(DfuProtocolError, match="unexpected CREATE response"):
        t.on_notification(ok(OpCode.CREATE), 0.0)
    t = new()
    t.start(0.0)
    with pytest.raises(DfuProtocolError, match="malformed"):
        t.on_notification(b"\x61\x06", 0.0)


def test_early_create_answer_behind_execute_streams_the_next_object() -> None:
    """nrf_dfu_req_handler.c (15.0-17.1) answers a data Execute only once fstorage is idle, so the Create
    riding behind it (whose erase keeps flash busy) is answered first; a refused Execute would have been
    answered at once, ahead of it. The engine streams the next object then, takes Execute's answer later."""
    t = new()
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=crc(FW[:64])), 5.0)
    actions = t.on_notification(ok(OpCode.CREATE), 5.1)
    assert packets(actions) == [FW[64:84], FW[84:104], FW[104:124], FW[124:128]]
    assert t.stats.objects == 0
    assert t.on_notification(ok(OpCode.EXECUTE), 5.2) == [], "the deferred answer is taken, not acted on"
    assert t.stats.objects == 1


def test_a_stale_execute_answer_from_an_earlier_link_is_ignored() -> None:
    """A deferred Execute answer goes out on whatever connection is up when flash goes idle."""
    t = new()
    assert t.start(0.0) == [req(OpCode.SELECT, type=ObjectType.COMMAND)]
    assert t.on_notification(ok(OpCode.EXECUTE), 0.01) == []
    assert t.stats.stale_answers == 1


def test_packets_are_whole_words_and_an_odd_tail_travels_alone() -> None:
    """fstorage writes whole words per 20-byte chunk with its checks off (nrf_fstorage_sd.c): a last write
    whose length is not a multiple of 4 would lose its tail; 1-3 bytes alone go into one word intact."""
    fw = bytes(range(70))  # 70 % 4 == 2
    t = ImageTransfer(INIT, fw, packet_size=23, flash=FLASH, probe=False)  # 23 -> 20-byte packets
    through_init(t)
    actions = t.on_notification(ok(OpCode.SET_PRN), 0.0)
    actions = t.on_notification(ok(OpCode.CREATE), 0.0)
    assert [len(p) for p in packets(actions)] == [20, 20, 20, 4]
    t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=crc(fw[:64])), 1.0)
    t.on_notification(ok(OpCode.EXECUTE), 1.1)
    actions = t.on_notification(ok(OpCode.CREATE), 1.1)
    assert [len(p) for p in packets(actions)] == [4, 2]


def test_the_last_object_waits_for_the_execute_before_it() -> None:
    """A Create answered ahead of its Execute streams the next object at once, except the last: with all data
    in, an Execute still waiting for idle flash would run the post-validation itself (nrf_dfu_req_handler.c
    compares the image offset), the device would reset, and the last Execute would never be answered."""
    t = new()
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=crc(FW[:64])), 1.0)
    assert packets(t.on_notification(ok(OpCode.CREATE), 1.1)) == [
        FW[64:84],
        FW[84:104],
        FW[104:124],
        FW[124:128],
    ]
    t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=128, crc=crc(FW[:128])), 2.0)
    assert t.on_notification(ok(OpCode.CREATE), 2.1) == [], "the last object: not before Execute's answer"
    t.on_notification(ok(OpCode.EXECUTE), 2.2)  # object 0's, late
    actions = t.on_notification(ok(OpCode.EXECUTE), 2.3)  # object 1's: now the last object streams
    assert packets(actions) == [FW[128:148], FW[148:150]]


def test_failed_execute_ends_transfer_even_with_a_create_behind_it() -> None:
    t = new()
    through_init(t)
    t.on_notification(ok(OpCode.SET_PRN), 0.0)
    t.on_notification(ok(OpCode.CREATE), 0.0)
    t.on_notification(ok(OpCode.CALC_CHECKSUM, offset=64, crc=crc(FW[:64])), 5.0)
    with pytest.raises(DfuResponseError, match="EXECUTE refused"):
        t.on_notification(fail(OpCode.EXECUTE, ResultCode.OPERATION_FAILED), 0.1)


def test_constructor_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="packet_size"):
        ImageTransfer(INIT, FW, packet_size=0)
    with pytest.raises(ValueError, match="PRN"):
        ImageTransfer(INIT, FW, packet_size=20, prn=70000)
    with pytest.raises(ValueError, match="init packet and firmware"):
        ImageTransfer(b"", FW, packet_size=20)
    t = ImageTransfer(INIT, FW, packet_size=20)
    t.start(0.0)
    with pytest.raises(RuntimeError):
        t.start(0.0)
