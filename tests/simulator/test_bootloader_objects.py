"""Object machinery of the simulated bootloader: select, create, write, checksum, execute, PRN, opcodes."""

from __future__ import annotations

import zlib

import pytest

from dfu.protocol import (
    ExtError,
    ObjectType,
    OpCode,
    ResultCode,
    decode_response,
    encode_request,
    encode_response,
)
from simulator.device import Reset, ResetReason
from simulator.firmware import make_application
from tests.simulator.bootloader_driver import Driver, profile, signed_init

IMAGE = make_application(3 * 4096 + 1000, 2)


@pytest.fixture
def d() -> Driver:
    return Driver.fresh()


@pytest.fixture
def ready(d: Driver) -> Driver:
    """A bootloader holding a valid init packet for IMAGE."""
    assert d.send_init(signed_init(d.profile, IMAGE)).ok
    return d


def test_select_reports_max_sizes_and_empty_progress(d: Driver) -> None:
    command = d.request(OpCode.SELECT, type=ObjectType.COMMAND)
    data = d.request(OpCode.SELECT, type=ObjectType.DATA)
    assert command.payload == {"max_size": d.profile.init_packet_limit, "offset": 0, "crc": 0}
    assert data.payload == {"max_size": d.profile.data_object_size, "offset": 0, "crc": 0}


def test_invalid_object_type_poisons_checksum_execute_and_packets(d: Driver) -> None:
    assert d.request(OpCode.SELECT, type=7).result is ResultCode.INVALID_OBJECT
    assert d.request(OpCode.CALC_CHECKSUM).result is ResultCode.INVALID_OBJECT
    assert d.request(OpCode.EXECUTE).result is ResultCode.INVALID_OBJECT
    assert d.packet(b"x" * 20) == []
    assert d.bl.drops.invalid_object == 1
    assert d.request(OpCode.CREATE, type=0, size=10).result is ResultCode.INVALID_OBJECT
    assert d.request(OpCode.SELECT, type=ObjectType.COMMAND).ok


@pytest.mark.parametrize(
    ("size", "result"),
    [(0, ResultCode.INVALID_PARAMETER), (513, ResultCode.INSUFFICIENT_RESOURCES), (512, ResultCode.SUCCESS)],
)
def test_create_command_sizes(d: Driver, size: int, result: ResultCode) -> None:
    assert d.request(OpCode.CREATE, type=ObjectType.COMMAND, size=size).result is result


def test_command_write_past_its_size_is_dropped_silently(d: Driver) -> None:
    d.request(OpCode.CREATE, type=ObjectType.COMMAND, size=10)
    assert d.packet(b"a" * 8) == []
    assert d.packet(b"b" * 8) == []  # would end at 16 > 10
    assert d.bl.drops.past_object_end == 1
    crc = d.request(OpCode.CALC_CHECKSUM)
    assert crc.payload == {"offset": 8, "crc": zlib.crc32(b"a" * 8)}
    assert d.request(OpCode.EXECUTE).result is ResultCode.OPERATION_NOT_PERMITTED


def test_execute_command_with_nothing_received_is_an_invalid_object(d: Driver) -> None:
    assert d.request(OpCode.EXECUTE).result is ResultCode.INVALID_OBJECT


def test_create_data_before_a_valid_init_packet_is_not_permitted(d: Driver) -> None:
    assert (
        d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096).result is ResultCode.OPERATION_NOT_PERMITTED
    )
    assert d.packet(b"x" * 100) == []
    assert d.bl.drops.not_permitted == 1


@pytest.mark.parametrize(
    ("size", "result"),
    [
        (0, ResultCode.INVALID_PARAMETER),
        (1000, ResultCode.INVALID_PARAMETER),  # not page aligned and not the last object
        (8192, ResultCode.INSUFFICIENT_RESOURCES),
        (4096, ResultCode.SUCCESS),
    ],
)
def test_create_data_sizes(ready: Driver, size: int, result: ResultCode) -> None:
    assert ready.request(OpCode.CREATE, type=ObjectType.DATA, size=size).result is result


def test_create_data_beyond_the_image_is_not_permitted(ready: Driver) -> None:
    for start in range(0, 3 * 4096, 4096):
        assert ready.send_object(IMAGE, start, 4096).ok
    beyond = ready.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    assert beyond.result is ResultCode.OPERATION_NOT_PERMITTED
    last = ready.request(OpCode.CREATE, type=ObjectType.DATA, size=1000)  # unaligned but the last one
    assert last.ok


def test_data_write_past_the_object_end_is_dropped(ready: Driver) -> None:
    ready.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    ready.stream(IMAGE[:4000])
    ready.stream(IMAGE[4000:4200])  # 104 bytes too many: the whole packet is refused
    assert ready.bl.drops.past_object_end == 1
    assert ready.request(OpCode.CALC_CHECKSUM).payload == {"offset": 4000, "crc": zlib.crc32(IMAGE[:4000])}
    assert ready.request(OpCode.EXECUTE).result is ResultCode.OPERATION_NOT_PERMITTED


def test_execute_data_twice_answers_success(ready: Driver) -> None:
    """`on_data_obj_execute_request` (15.0, 15.3, 16.0, 17.1): an executed object has data_object_size 0 and
    no byte since, so the size check passes and a repeated Execute answers SUCCESS in every release."""
    assert ready.send_object(IMAGE, 0, 4096).ok
    assert ready.request(OpCode.EXECUTE).result is ResultCode.SUCCESS
    assert ready.request(OpCode.SELECT, type=ObjectType.DATA).payload["offset"] == 4096


def test_create_data_rewinds_to_the_last_executed_object(ready: Driver) -> None:
    assert ready.send_object(IMAGE, 0, 4096).ok
    ready.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    ready.stream(IMAGE[4096:6000])
    assert ready.request(OpCode.CALC_CHECKSUM).payload["offset"] == 6000
    ready.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    assert ready.request(OpCode.CALC_CHECKSUM).payload == {"offset": 4096, "crc": zlib.crc32(IMAGE[:4096])}


def test_create_data_queues_a_page_erase_and_execute_answers_when_flash_is_idle(ready: Driver) -> None:
    ready.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    assert ready.bl.flash.busy(ready.now)
    ready.stream(IMAGE[:4096])
    idle = ready.bl.flash.idle_at(ready.now)
    notes = ready.raw(encode_request(OpCode.EXECUTE))
    assert notes[0].ready_at == pytest.approx(idle)
    assert decode_response(notes[0].payload).ok


def test_create_command_wipes_all_progress(ready: Driver) -> None:
    assert ready.send_object(IMAGE, 0, 4096).ok
    ready.request(OpCode.CREATE, type=ObjectType.COMMAND, size=10)
    assert ready.request(OpCode.SELECT, type=ObjectType.DATA).payload["offset"] == 0
    assert ready.bl.init_packet is None
    assert ready.request(OpCode.CREATE, type=ObjectType.DATA, size=4096).result is (
        ResultCode.OPERATION_NOT_PERMITTED
    )


def test_failed_create_command_keeps_the_init_packet(ready: Driver) -> None:
    assert (
        ready.request(OpCode.CREATE, type=ObjectType.COMMAND, size=0).result is ResultCode.INVALID_PARAMETER
    )
    assert ready.bl.init_packet is not None


def test_prn_counts_init_packet_writes_and_matches_checksum_bytes(d: Driver) -> None:
    assert d.request(OpCode.SET_PRN, prn=2).ok
    init = signed_init(d.profile, IMAGE)
    d.request(OpCode.CREATE, type=ObjectType.COMMAND, size=len(init))
    assert d.packet(init[:20]) == []
    prn = d.packet(init[20:40])
    expected = encode_response(OpCode.CALC_CHECKSUM, ResultCode.SUCCESS, offset=40, crc=zlib.crc32(init[:40]))
    assert [n.payload for n in prn] == [expected]
    assert d.raw(encode_request(OpCode.CALC_CHECKSUM))[0].payload == expected


def test_prn_counter_restarts_at_every_create(ready: Driver) -> None:
    ready.request(OpCode.SET_PRN, prn=3)
    ready.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    assert ready.stream(IMAGE[:488]) == []  # two packets counted
    ready.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)  # counter back to 3
    assert ready.stream(IMAGE[:488]) == []
    notes = ready.stream(IMAGE[488:732])
    assert len(notes) == 1
    assert decode_response(notes[0].payload).payload == {"offset": 732, "crc": zlib.crc32(IMAGE[:732])}


def test_prn_due_on_a_failed_write_carries_its_result(ready: Driver) -> None:
    ready.request(OpCode.SET_PRN, prn=1)
    ready.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    (note,) = ready.packet(IMAGE[:4096] + b"extra")  # one packet longer than the object
    assert decode_response(note.payload).result is ResultCode.INVALID_PARAMETER
    assert note.payload == bytes([0x60, OpCode.CALC_CHECKSUM, ResultCode.INVALID_PARAMETER])


def test_prn_off_sends_nothing(ready: Driver) -> None:
    ready.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    assert ready.stream(IMAGE[:4096]) == []


@pytest.mark.parametrize(
    ("written", "answer"),
    [
        (bytes([OpCode.MTU_GET]), bytes([0x60, 0x07, ResultCode.OP_CODE_NOT_SUPPORTED])),
        (bytes([OpCode.WRITE, 1, 2, 3]), bytes([0x60, 0x08, ResultCode.OP_CODE_NOT_SUPPORTED])),
        (bytes([0x05]), bytes([0x60, 0x05, ResultCode.OP_CODE_NOT_SUPPORTED])),
        (bytes([0xFF, 0x00]), bytes([0x60, 0xFF, ResultCode.OP_CODE_NOT_SUPPORTED])),
        (bytes([0x60, 0x01, 0x01]), bytes([0x60, 0x60, ResultCode.OP_CODE_NOT_SUPPORTED])),
        (bytes([OpCode.CREATE, 0x01, 0x10]), bytes([0x60, 0x01, ResultCode.INVALID_PARAMETER])),
        (bytes([OpCode.SELECT]), bytes([0x60, 0x06, ResultCode.INVALID_PARAMETER])),
        (bytes([OpCode.SET_PRN, 0x01]), bytes([0x60, 0x02, ResultCode.INVALID_PARAMETER])),
    ],
)
def test_unsupported_and_malformed_requests(d: Driver, written: bytes, answer: bytes) -> None:
    assert [n.payload for n in d.raw(written)] == [answer]


def test_trailing_bytes_are_ignored_as_the_sdk_does(d: Driver) -> None:
    (note,) = d.raw(bytes([OpCode.SELECT, ObjectType.COMMAND, 0xAA, 0xBB]))
    assert decode_response(note.payload).ok


def test_empty_write_is_ignored(d: Driver) -> None:
    assert d.raw(b"") == []
    assert d.packet(b"") == []


def test_abort_answers_then_resets_into_the_valid_app(ready: Driver) -> None:
    assert ready.request(OpCode.ABORT).ok
    reset = ready.run_until_reset()
    assert reset == Reset("app", ResetReason.ABORT)
    assert ready.bl.halted
    assert ready.raw(encode_request(OpCode.PING, id=1)) == []


def test_extended_error_codes_are_single_bytes(ready: Driver) -> None:
    """Sanity of the encoder path the bootloader uses for every extended error."""
    payload = encode_response(OpCode.EXECUTE, ResultCode.EXT_ERROR, ExtError.VERIFICATION_FAILED)
    assert payload == bytes([0x60, 0x04, 0x0B, 0x0C])


def test_profile_sizes_drive_select() -> None:
    small = Driver.fresh(profile(max_init_packet_size=256))
    assert small.request(OpCode.SELECT, type=ObjectType.COMMAND).payload["max_size"] == 256
