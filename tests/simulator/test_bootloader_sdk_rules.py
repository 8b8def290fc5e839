"""The simulated bootloader follows each stock nRF5 SDK release (15.0, 15.3, 16.0, 17.1) where they differ,
and where a stock board differs from what clients commonly assume. One test (or parametrized case) per rule,
each on the release(s) it applies to; the SDK file each rule comes from is named in simulator/bootloader.py.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from dfu.init_packet import FwType, HashType, encode_init_command, firmware_hash, wrap_init_command
from dfu.protocol import ExtError, ObjectType, OpCode, ResultCode, encode_request
from profiles.gatt import BUTTONLESS_BONDED, CONTROL_POINT
from profiles.model import PeripheralProfile, SdkRelease, load_profile
from simulator.air import Air
from simulator.air_api import ConnectFailedError
from simulator.bootloader import Bootloader
from simulator.device import AttError, DeviceState, Mode, Reset, ResetReason
from simulator.firmware import make_application, make_bootloader, make_softdevice
from simulator.peripheral import SimPeripheral
from tests.simulator.bootloader_driver import ADDRESS, Driver, demo_key, kind, signed_init

V15_0, V15_3, V16_0, V17_1 = SdkRelease
ALL = list(SdkRelease)
STRICT = [V15_3, V16_0, V17_1]
APP = make_application(3 * 4096 + 1000, 2)
FULL_PROTOCOL_ONLY = [
    OpCode.PROTOCOL_VERSION,
    OpCode.MTU_GET,
    OpCode.PING,
    OpCode.HARDWARE_VERSION,
    OpCode.FIRMWARE_VERSION,
]


def release(sdk: SdkRelease, **changes: Any) -> PeripheralProfile:
    """The nRF52840 DK board with the stock BLE secure bootloader of `sdk` (its defaults for the rest)."""
    base = load_profile("nrf52840-s140")
    return base.model_copy(update={"sdk": sdk, "reduced_protocol": None, **changes})


def fresh(sdk: SdkRelease, **changes: Any) -> Driver:
    return Driver.fresh(release(sdk, **changes))


def ready(sdk: SdkRelease, image: bytes = APP, **changes: Any) -> Driver:
    d = fresh(sdk, **changes)
    assert d.send_init(signed_init(d.profile, image)).ok
    d.now = d.bl.flash.idle_at(d.now)  # the settings page is written
    d.request(OpCode.SELECT, type=ObjectType.DATA)
    return d


# -- reduced protocol (nrf_dfu_req_handler.c `#if !NRF_DFU_PROTOCOL_REDUCED`, nrf_dfu_ble.c responses) -------


@pytest.mark.parametrize("sdk", STRICT)
@pytest.mark.parametrize("opcode", FULL_PROTOCOL_ONLY)
def test_reduced_protocol_answers_opcode_not_supported(sdk: SdkRelease, opcode: OpCode) -> None:
    d = fresh(sdk)
    assert d.profile.protocol_reduced, "the stock BLE builds of 15.3+ set NRF_DFU_PROTOCOL_REDUCED"
    (note,) = d.raw(bytes([opcode, 0]))
    assert note.payload == bytes([0x60, opcode, ResultCode.OP_CODE_NOT_SUPPORTED])


@pytest.mark.parametrize(("sdk", "changes"), [(V15_0, {}), (V17_1, {"reduced_protocol": False})])
@pytest.mark.parametrize("opcode", FULL_PROTOCOL_ONLY)
def test_full_protocol_answers_without_payload_over_ble(
    sdk: SdkRelease, changes: dict[str, Any], opcode: OpCode
) -> None:
    """15.0 (no reduced option), or a 15.3+ build with it off: handled, but the BLE transport adds a payload
    to select and checksum answers only, so a BLE client still learns nothing from them."""
    d = fresh(sdk, **changes)
    (note,) = d.raw(bytes([opcode, 0]))
    assert note.payload == bytes([0x60, opcode, ResultCode.SUCCESS])


# -- sd_req (nrf_dfu_ver_validation.c `sd_req_ok()`) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sd_req", "accepted_by_15_0"),
    [
        ((), True),  # an empty list: 15.0 reads it as "needs no SoftDevice"
        ((0x00, 0x0100), True),  # "may replace the SoftDevice", the installed one listed
        ((0x00,), True),
        ((0xFFFE,), False),  # no wildcard in any release
        ((0x0101,), False),
    ],
)
@pytest.mark.parametrize("sdk", ALL)
def test_sd_req_of_an_application_per_release(
    sdk: SdkRelease, sd_req: tuple[int, ...], accepted_by_15_0: bool
) -> None:
    strict_refuses = sd_req in ((), (0x00, 0x0100))  # 15.3+: empty refused; BLE: no app may replace the SD
    accepted = accepted_by_15_0 if sdk is V15_0 else accepted_by_15_0 and not strict_refuses
    d = fresh(sdk)
    command = encode_init_command(
        fw_type=FwType.APPLICATION,
        fw_version=2,
        hw_version=52,
        sd_req=sd_req,  # as given: even empty (nrfutil would write 0xFFFE for "none")
        app_size=len(APP),
        hash_type=HashType.SHA256,
        hash=firmware_hash(APP),
    )
    response = d.send_init(wrap_init_command(command, demo_key()))
    if accepted:
        assert response.ok
    else:
        assert (response.result, response.ext_error) == (ResultCode.EXT_ERROR, ExtError.SD_VERSION_FAILURE)


# -- init packet limit (nrf_dfu_types.h INIT_COMMAND_MAX_SIZE) -----------------------------------------------


@pytest.mark.parametrize(("sdk", "limit"), [(V15_0, 256), (V15_3, 512), (V16_0, 512), (V17_1, 512)])
def test_init_packet_limit_per_release(sdk: SdkRelease, limit: int) -> None:
    d = fresh(sdk)
    assert d.request(OpCode.SELECT, type=ObjectType.COMMAND).payload["max_size"] == limit
    assert d.request(OpCode.CREATE, type=ObjectType.COMMAND, size=limit).ok
    over = d.request(OpCode.CREATE, type=ObjectType.COMMAND, size=limit + 1)
    assert over.result is ResultCode.INSUFFICIENT_RESOURCES


# -- a refused init packet (nrf_dfu_validation.c `nrf_dfu_validation_init_cmd_execute`) ----------------------


@pytest.mark.parametrize(("sdk", "kept"), [(V15_0, True), (V15_3, False), (V16_0, False), (V17_1, False)])
def test_refused_init_packet_is_kept_only_by_15_0(sdk: SdkRelease, kept: bool) -> None:
    d = fresh(sdk)
    init = signed_init(d.profile, APP, hw_version=7)
    assert d.send_init(init).ext_error is ExtError.HW_VERSION_FAILURE
    offset = d.request(OpCode.SELECT, type=ObjectType.COMMAND).payload["offset"]
    assert offset == (len(init) if kept else 0)


# -- fstorage queue (NRF_FSTORAGE_SD_QUEUE_SIZE 16) ----------------------------------------------------------


@pytest.mark.parametrize("sdk", ALL)
def test_fstorage_queue_holds_16_operations(sdk: SdkRelease) -> None:
    """Right after Create the page erase occupies the queue: 15 packets fit behind it, the 16th is lost."""
    d = ready(sdk)
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    d.stream(APP[: 16 * 244], paced=False)
    assert d.bl.flash.pending(d.now) == 16
    assert d.bl.drops.queue_full == 1
    assert d.bl.drops.no_buffer == 0, "17 receive buffers: the queue is what overflows"


# -- Execute answered once fstorage is idle (nrf_dfu_req_handler.c `on_data_obj_execute_request_sched`) ------


@pytest.mark.parametrize("sdk", ALL)
def test_execute_is_answered_when_flash_is_idle_even_behind_a_later_create(sdk: SdkRelease) -> None:
    d = ready(sdk)
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    d.stream(APP[: 16 * 244])
    d.packet(APP[16 * 244 : 4096])
    assert d.raw(encode_request(OpCode.EXECUTE)) == [], "flash is still writing the last packet"
    (created,) = d.raw(encode_request(OpCode.CREATE, type=ObjectType.DATA, size=4096))
    assert created.payload == bytes([0x60, OpCode.CREATE, ResultCode.SUCCESS])
    erase_done = d.bl.flash.idle_at(d.now)
    assert erase_done - d.now > 0.08, "the new object's page erase is queued"
    d.now = erase_done - 0.001
    assert d.bl.poll(d.now) == []
    d.now = erase_done
    (executed,) = d.bl.poll(d.now)
    assert getattr(executed, "payload", None) == bytes([0x60, OpCode.EXECUTE, ResultCode.SUCCESS])


# -- Execute of an executed object (nrf_dfu_req_handler.c `on_data_obj_execute_request`) ---------------------


@pytest.mark.parametrize("sdk", ALL)
def test_execute_of_an_executed_object_answers_success_in_every_release(sdk: SdkRelease) -> None:
    d = ready(sdk)
    assert d.send_object(APP, 0, 4096).ok
    assert d.request(OpCode.EXECUTE).result is ResultCode.SUCCESS


@pytest.mark.parametrize("sdk", ALL)
def test_execute_of_an_incomplete_object_is_not_permitted(sdk: SdkRelease) -> None:
    d = ready(sdk)
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    d.stream(APP[:2000])
    assert d.request(OpCode.EXECUTE).result is ResultCode.OPERATION_NOT_PERMITTED


# -- unaligned writes (nrf_fstorage_sd.c `write_execute`, NRF_FSTORAGE_PARAM_CHECK_DISABLED) -----------------


@pytest.mark.parametrize("sdk", ALL)
def test_a_write_not_in_whole_words_loses_its_tail_and_fails_the_hash(sdk: SdkRelease) -> None:
    image = make_application(4096, 2)
    d = ready(sdk, image)
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    d.stream(image, chunk=186)  # 9 chunks of 20 + 6: the 6 go into one word, their last 2 are lost
    crc = d.request(OpCode.CALC_CHECKSUM).payload
    assert crc == {"offset": 4096, "crc": zlib.crc32(image)}, "the CRC covers what was received"
    assert d.bl.received_image[184:186] == b"\xff\xff"
    assert d.bl.received_image[186:372] == b"\xff" * 186, "the next write's address is not word-aligned"
    response = d.request(OpCode.EXECUTE)
    assert (response.result, response.ext_error) == (ResultCode.EXT_ERROR, ExtError.VERIFICATION_FAILED)


@pytest.mark.parametrize("sdk", ALL)
def test_whole_word_packets_with_a_short_last_write_install(sdk: SdkRelease) -> None:
    image = make_application(4096 - 2, 2)  # ends with a 2-byte write: one word, its padding past the image
    d = ready(sdk, image)
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=len(image))
    d.stream(image[:4092])
    d.stream(image[4092:])
    assert d.request(OpCode.EXECUTE).ok


# -- MTU (nrf_dfu_ble.c BLE_GATTS_EVT_EXCHANGE_MTU_REQUEST) --------------------------------------------------


@pytest.mark.parametrize("sdk", ALL)
@pytest.mark.parametrize(
    ("requested", "answered"), [(23, 23), (185, 183), (186, 183), (247, 247), (517, 247)]
)
def test_bootloader_rounds_a_smaller_mtu_to_whole_word_payloads(
    sdk: SdkRelease, requested: int, answered: int
) -> None:
    p = release(sdk)
    state = DeviceState.initial(p, ADDRESS)
    state.mode = Mode.BOOTLOADER
    assert SimPeripheral(p, state).att_mtu_for(requested) == answered
    app = SimPeripheral(p, DeviceState.initial(p, ADDRESS))
    assert app.att_mtu_for(requested) == min(requested, 247), "the application does not round"


# -- inactivity (nrf_bootloader.c `dfu_observer`: DFU_STARTED and OBJECT_RECEIVED only) ----------------------


@pytest.mark.parametrize("sdk", ALL)
def test_inactivity_timer_restarts_only_on_create_command_and_data_execute(sdk: SdkRelease) -> None:
    d = ready(sdk)  # Create command at 0: the timer runs to 120 s
    timeout = d.profile.inactivity_timeout_s
    d.advance(100.0)
    d.bl.on_disconnect(d.now)
    d.bl.on_connect(d.now, 247)  # a connection does not restart it
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)  # nor does Create data
    assert d.bl.next_wakeup == pytest.approx(timeout)
    d.stream(APP[:4096])
    assert d.request(OpCode.EXECUTE).ok  # a data Execute does
    assert d.bl.next_wakeup == pytest.approx(d.now + timeout, abs=0.2)
    assert d.advance(timeout - 1) == []
    assert kind(d.advance(1.0)[-1]) == ("app", ResetReason.INACTIVITY)  # type: ignore[arg-type]


# -- settings writes (nrf_dfu_settings.c) --------------------------------------------------------------------


@pytest.mark.parametrize(("sdk", "operations"), [(V15_0, 2), (V15_3, 4), (V16_0, 4), (V17_1, 4)])
def test_settings_page_written_with_a_backup_from_15_3(sdk: SdkRelease, operations: int) -> None:
    d = fresh(sdk)
    init = signed_init(d.profile, APP)
    d.request(OpCode.CREATE, type=ObjectType.COMMAND, size=len(init))
    d.stream(init, paced=False)
    (answer,) = d.raw(encode_request(OpCode.EXECUTE))
    assert answer.payload == bytes([0x60, OpCode.EXECUTE, ResultCode.SUCCESS])
    assert d.bl.flash.pending(d.now) == operations, "erase + write of the page (and of its backup)"


@pytest.mark.parametrize("sdk", ALL)
def test_an_identical_settings_page_is_not_written_again(sdk: SdkRelease) -> None:
    d = fresh(sdk)
    assert d.send_init(signed_init(d.profile, APP)).ok
    d.now = d.bl.flash.idle_at(d.now)
    assert d.request(OpCode.EXECUTE).ok  # re-executing the stored init packet: the page already holds it
    assert d.bl.flash.pending(d.now) == 0


# -- progress across a disconnect (nrf_bootloader.c NRF_DFU_EVT_TRANSPORT_DEACTIVATED) -----------------------


@pytest.mark.parametrize(("sdk", "kept"), [(V15_0, True), (V15_3, True), (V16_0, False), (V17_1, False)])
def test_ram_progress_across_a_disconnect_per_release(sdk: SdkRelease, kept: bool) -> None:
    d = ready(sdk)
    assert d.send_object(APP, 0, 4096).ok
    d.bl.on_disconnect(d.now)
    d.bl.on_connect(d.now + 1.0, 247)
    offset = d.request(OpCode.SELECT, type=ObjectType.DATA).payload["offset"]
    assert offset == (4096 if kept else 0)


# -- SoftDevice updates (nrf_dfu_validation.c `postvalidate_sd_bl`, nrf_bootloader_fw_activation.c) ----------


def _sd_bl(d: Driver, sd: bytes, bl_version: int = 2) -> bytes:
    bl = make_bootloader(0x4000, bl_version)
    init = signed_init(
        d.profile,
        sd + bl,
        FwType.SOFTDEVICE_BOOTLOADER,
        fw_version=bl_version,
        sd_size=len(sd),
        bl_size=len(bl),
    )
    assert d.send_init(init).ok
    return sd + bl


@pytest.mark.parametrize("sdk", ALL)
def test_major_softdevice_update_is_decided_by_the_major_version(sdk: SdkRelease) -> None:
    """Another FWID but the same major version (7.2.0 -> 7.3.0) is minor: the application stays valid."""
    d = fresh(sdk)
    image = _sd_bl(d, make_softdevice(0x0123, 0x26000, version=7_003_000, family=140))
    assert d.send_data(image).ok
    assert kind(d.run_until_reset()) == ("bootloader", ResetReason.ACTIVATED)
    assert d.state.app is not None
    assert d.state.softdevice.fwid == 0x0123

    d = fresh(sdk)
    image = _sd_bl(d, make_softdevice(0x0100, 0x26000, version=8_000_000, family=140))  # same FWID, major 8
    assert d.send_data(image).ok
    assert kind(d.run_until_reset()) == ("bootloader", ResetReason.ACTIVATED)
    assert d.state.app is None, "a major update invalidates the application"


@pytest.mark.parametrize("sdk", ALL)
def test_after_a_minor_softdevice_update_the_bootloader_waits_the_continuation_timeout(
    sdk: SdkRelease,
) -> None:
    d = fresh(sdk)
    image = _sd_bl(d, make_softdevice(0x0123, 0x26000, version=7_003_000, family=140))
    assert d.send_data(image).ok
    d.run_until_reset()
    booted = Driver(bl=Bootloader(d.profile, d.state, now=0.0))
    assert booted.bl.next_wakeup == pytest.approx(d.profile.continuation_timeout_s)
    assert booted.advance(d.profile.continuation_timeout_s) == [Reset("app", ResetReason.INACTIVITY)]


@pytest.mark.parametrize(("sdk", "checked"), [(V15_0, False), (V15_3, False), (V16_0, True), (V17_1, True)])
def test_softdevice_of_another_family_is_refused_from_16_0(sdk: SdkRelease, checked: bool) -> None:
    d = fresh(sdk)
    image = _sd_bl(d, make_softdevice(0x0123, 0x26000, version=7_003_000, family=132))
    response = d.send_data(image)
    assert response.ok is not checked
    if checked:
        assert response.result is ResultCode.INVALID_OBJECT


# -- bonded buttonless (nrf_dfu_ble.c NRF_DFU_BLE_REQUIRES_BONDS, ble_dfu_bonded.c) --------------------------


def _bonded(mode: Mode, *, bonded: bool = True) -> SimPeripheral:
    p = load_profile("nrf52840-s140-bonded")
    state = DeviceState.initial(p, ADDRESS)
    state.mode = mode
    state.bonded = bonded
    return SimPeripheral(p, state)


@pytest.mark.parametrize(("mode", "char"), [(Mode.BOOTLOADER, CONTROL_POINT), (Mode.APP, BUTTONLESS_BONDED)])
def test_bonded_dfu_characteristics_need_an_encrypted_link(mode: Mode, char: str) -> None:
    dev = _bonded(mode)
    dev.on_connect(0.0, 247, encrypted=False)
    with pytest.raises(AttError) as err:
        dev.on_subscribe(char, notify=mode is Mode.BOOTLOADER, indicate=mode is Mode.APP, now=0.0)
    assert err.value.code == AttError.INSUFFICIENT_ENCRYPTION
    dev.on_connect(0.0, 247, encrypted=True)
    assert dev.on_subscribe(char, notify=mode is Mode.BOOTLOADER, indicate=mode is Mode.APP, now=0.0) == []


def test_bonded_bootloader_accepts_only_the_bonded_peer() -> None:
    assert _bonded(Mode.BOOTLOADER).accepts_connection()
    assert not _bonded(Mode.BOOTLOADER, bonded=False).accepts_connection()
    assert _bonded(Mode.APP, bonded=False).accepts_connection(), "the application does not whitelist"


@pytest.mark.looptime
async def test_a_central_without_the_bond_cannot_connect_to_the_bonded_bootloader() -> None:
    air = Air()
    dev = air.add(_bonded(Mode.BOOTLOADER, bonded=False))

    class Quiet:
        def on_notify(self, char_uuid: str, payload: bytes) -> None: ...
        def on_disconnect(self, reason: str) -> None: ...

    with pytest.raises(ConnectFailedError):
        await air.connect("hci0", dev.address, Quiet(), wait_s=2.0)
