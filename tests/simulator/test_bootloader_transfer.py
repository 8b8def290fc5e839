"""Whole transfers: activation, resume across disconnects and resets, flash back-pressure, timeouts."""

from __future__ import annotations

import zlib

import pytest

from dfu.init_packet import FwType
from dfu.protocol import ExtError, ObjectType, OpCode, ResultCode, decode_response
from simulator.bootloader import Bootloader
from simulator.device import DeviceState, Reset, ResetReason
from simulator.firmware import make_application, make_bootloader, make_softdevice
from tests.simulator.bootloader_driver import ADDRESS, Driver, kind, profile, signed_init

APP = make_application(5 * 4096 + 123, 2)


def test_application_update_activates_and_resets_into_the_new_app() -> None:
    d = Driver.fresh()
    assert d.update(signed_init(d.profile, APP), APP).ok
    assert kind(d.run_until_reset()) == ("app", ResetReason.ACTIVATED)
    assert d.state.app is not None
    assert (d.state.app.version, d.state.app.size) == (2, len(APP))
    assert d.state.settings.command_size == 0
    assert not d.state.settings.init_executed


def test_reset_comes_after_the_last_answer() -> None:
    d = Driver.fresh()
    d.update(signed_init(d.profile, APP), APP)
    answer_at = d.notifications[-1].ready_at
    assert d.bl.poll(answer_at) == []
    assert d.run_until_reset().reason is ResetReason.ACTIVATED
    assert d.now > answer_at


def _init_and_first_object(d: Driver, init: bytes) -> None:
    """The init packet and APP's first 4096-byte data object sent and executed."""
    assert d.send_init(init).ok
    d.request(OpCode.SELECT, type=ObjectType.DATA)
    assert d.send_object(APP, 0, 4096).ok


def _link_lost_mid_second_object(d: Driver) -> None:
    """After `_init_and_first_object`: the second object created and streamed to 6000, then the link drops
    for 5 s and comes back."""
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    d.stream(APP[4096:6000])
    d.bl.on_disconnect(d.now)
    d.advance(5.0)
    d.bl.on_connect(d.now, 247)


def test_disconnect_keeps_progress_and_select_reports_the_truth() -> None:
    d = Driver.fresh()
    _init_and_first_object(d, signed_init(d.profile, APP))
    _link_lost_mid_second_object(d)
    select = d.request(OpCode.SELECT, type=ObjectType.DATA)
    assert select.payload == {"max_size": 4096, "offset": 6000, "crc": zlib.crc32(APP[:6000])}
    d.stream(APP[6000:8192])  # continue the current object, no create
    assert d.request(OpCode.EXECUTE).ok
    assert d.send_data(APP, first=8192).ok


def _restart(d: Driver, *, via_json: bool = False) -> Driver:
    """A reset: a new bootloader from the flash state alone (optionally persisted to JSON and read back)."""
    state = DeviceState.model_validate_json(d.state.model_dump_json()) if via_json else d.state
    bl = Bootloader(d.profile, state, now=d.now)
    bl.on_connect(d.now, 247)
    return Driver(bl, now=d.now)


def test_reset_loses_data_progress_but_keeps_the_executed_init_packet() -> None:
    d = Driver.fresh()
    init = signed_init(d.profile, APP)
    _init_and_first_object(d, init)
    d = _restart(d)
    assert d.request(OpCode.SELECT, type=ObjectType.COMMAND).payload == {
        "max_size": 512,
        "offset": len(init),
        "crc": zlib.crc32(init),
    }
    assert d.request(OpCode.EXECUTE).ok
    assert d.request(OpCode.SELECT, type=ObjectType.DATA).payload["offset"] == 0
    assert d.send_data(APP).ok


def test_save_progress_in_flash_keeps_executed_objects_across_a_reset() -> None:
    d = Driver.fresh(profile(save_progress_in_flash=True))
    _init_and_first_object(d, signed_init(d.profile, APP))
    assert d.send_object(APP, 4096, 4096).ok
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    d.stream(APP[8192:9000])  # not executed: lost
    d = _restart(d, via_json=True)
    select = d.request(OpCode.SELECT, type=ObjectType.DATA)
    assert select.payload == {"max_size": 4096, "offset": 8192, "crc": zlib.crc32(APP[:8192])}
    assert d.send_data(APP, first=8192).ok
    assert d.run_until_reset().reason is ResetReason.ACTIVATED


def test_streaming_faster_than_flash_drops_packets_silently() -> None:
    d = Driver.fresh()
    assert d.send_init(signed_init(d.profile, APP)).ok
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    assert d.stream(APP[:4096], paced=False) == []  # no error, no notification
    crc = d.request(OpCode.CALC_CHECKSUM)
    assert crc.payload is not None
    assert crc.payload["offset"] < 4096
    assert crc.payload["crc"] == zlib.crc32(APP[: crc.payload["offset"]])
    assert d.bl.drops.queue_full > 0
    assert d.request(OpCode.EXECUTE).result is ResultCode.OPERATION_NOT_PERMITTED
    # re-creating at once finds the fstorage queue still full: the page erase cannot be queued
    assert d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096).result is ResultCode.INVALID_OBJECT
    # the classic recovery: wait, re-create the object and resend it paced
    d.now = d.bl.flash.idle_at(d.now)
    assert d.send_object(APP, 0, 4096).ok


def test_paced_streaming_loses_nothing() -> None:
    d = Driver.fresh()
    assert d.send_init(signed_init(d.profile, APP)).ok
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    d.stream(APP[:4096], paced=True)
    assert d.request(OpCode.CALC_CHECKSUM).payload == {"offset": 4096, "crc": zlib.crc32(APP[:4096])}
    assert d.bl.drops == type(d.bl.drops)()


def test_a_full_buffer_pool_drops_before_the_flash_queue() -> None:
    p = profile(flash=profile().flash.model_copy(update={"buffer_count": 2, "flash_queue_size": 8}))
    d = Driver.fresh(p)
    assert d.send_init(signed_init(d.profile, APP)).ok
    d.now = d.bl.flash.idle_at(d.now)
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    d.stream(APP[: 244 * 4], paced=False)
    assert d.bl.drops.no_buffer == 2
    assert d.bl.drops.queue_full == 0
    assert d.request(OpCode.CALC_CHECKSUM).payload["offset"] == 488


def test_prn_is_not_counted_for_packets_without_a_buffer() -> None:
    p = profile(flash=profile().flash.model_copy(update={"buffer_count": 1}))
    d = Driver.fresh(p)
    assert d.send_init(signed_init(d.profile, APP)).ok
    d.request(OpCode.SET_PRN, prn=2)
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    d.now = d.bl.flash.idle_at(d.now)
    assert d.packet(APP[:244]) == []
    assert d.packet(APP[244:488]) == []  # no buffer: not counted
    d.now = d.bl.flash.idle_at(d.now)
    assert len(d.packet(APP[244:488])) == 1


def test_inactivity_resets_into_the_app() -> None:
    d = Driver.fresh()
    assert d.bl.next_wakeup == pytest.approx(d.profile.inactivity_timeout_s)
    assert d.advance(d.profile.inactivity_timeout_s - 1) == []
    assert d.advance(1.0) == [Reset("app", ResetReason.INACTIVITY)]


def test_dfu_activity_postpones_the_inactivity_timeout() -> None:
    d = Driver.fresh()
    d.advance(100.0)
    d.request(OpCode.CREATE, type=ObjectType.COMMAND, size=10)
    assert d.advance(100.0) == []
    assert d.bl.next_wakeup == pytest.approx(100.0 + d.profile.inactivity_timeout_s)


def test_inactivity_without_a_valid_app_restarts_the_bootloader() -> None:
    state = DeviceState.initial(profile(), ADDRESS)
    state.app = None
    d = Driver.fresh(state=state)
    assert d.advance(d.profile.inactivity_timeout_s) == [Reset("bootloader", ResetReason.INACTIVITY)]


def test_softdevice_bootloader_then_application_checks_the_new_softdevice() -> None:
    p = profile()
    d = Driver.fresh(p)
    sd = make_softdevice(0x0123, 0x28000)
    bl = make_bootloader(0x5000, 2)
    sd_bl = signed_init(p, sd + bl, FwType.SOFTDEVICE_BOOTLOADER, sd_size=len(sd), bl_size=len(bl))
    assert d.update(sd_bl, sd + bl).ok
    assert kind(d.run_until_reset()) == ("bootloader", ResetReason.ACTIVATED)
    assert (d.state.softdevice.fwid, d.state.softdevice.size) == (0x0123, len(sd))
    assert (d.state.bootloader.version, d.state.bootloader.size) == (2, len(bl))
    assert d.state.app is None  # the application must be sent again

    d = _restart(d)
    old_sd_app = signed_init(p, APP, sd_req=(0x0100,))
    assert d.send_init(old_sd_app).ext_error is ExtError.SD_VERSION_FAILURE
    new_sd_app = signed_init(p, APP, sd_req=(0x0123,))
    assert d.update(new_sd_app, APP).ok
    assert kind(d.run_until_reset()) == ("app", ResetReason.ACTIVATED)
    assert d.state.app is not None
    assert d.state.app.version == 2
    assert d.state.softdevice.size == len(sd)  # the new application starts at 0x1000 + len(sd)


def test_bootloader_update_keeps_the_app() -> None:
    d = Driver.fresh()
    image = make_bootloader(0x5000, 3)
    assert d.update(signed_init(d.profile, image, FwType.BOOTLOADER, fw_version=3), image).ok
    assert kind(d.run_until_reset()) == ("app", ResetReason.ACTIVATED)
    assert d.state.bootloader.version == 3
    assert d.state.app is not None
    assert d.state.app.version == 1


def test_an_app_too_big_for_a_second_bank_invalidates_the_current_app() -> None:
    d = Driver.fresh(profile("nrf52832-s132"))
    # app area 0x4F000 (0x78000 - 3 app-data pages - app start 0x26000); the current app uses 0x8000
    big = make_application(0x47000 + 4096, 2)
    assert d.send_init(signed_init(d.profile, big)).ok
    assert d.state.app is None
    assert d.request(OpCode.ABORT).ok
    assert d.run_until_reset() == Reset("bootloader", ResetReason.ABORT)


def test_prn_during_a_too_fast_stream_reports_only_what_reached_flash() -> None:
    d = Driver.fresh()
    assert d.send_init(signed_init(d.profile, APP)).ok
    d.request(OpCode.SET_PRN, prn=4)
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    notes = d.stream(APP[:4096], paced=False)
    assert len(notes) == 4  # 17 packets, every one got a buffer: PRN after 4, 8, 12, 16
    reports = [decode_response(n.payload).payload for n in notes]
    assert all(r is not None and r["crc"] == zlib.crc32(APP[: r["offset"]]) for r in reports)
    assert reports[-1] is not None
    assert reports[-1]["offset"] < 16 * 244


def test_activation_charges_the_copy_into_place_unless_written_in_place() -> None:
    d = Driver.fresh()
    assert d.update(signed_init(d.profile, APP), APP).ok
    flash = d.profile.flash
    assert d.run_until_reset().boot_work_s == pytest.approx(
        6 * flash.erase_seconds + flash.write_seconds(len(APP))
    )
    small = Driver.fresh(profile("nrf52832-s132"))
    big = make_application(0x47000 + 4096, 2)  # does not fit beside the current app: single bank, in place
    assert small.update(signed_init(small.profile, big), big).ok
    reset = small.run_until_reset()
    assert kind(reset) == ("app", ResetReason.ACTIVATED)
    assert reset.boot_work_s == 0.0


def test_prn_due_on_a_write_the_flash_queue_refused_reports_zeros() -> None:
    """`on_data_obj_write_request` returns before filling in offset/CRC; the PRN sends the zeroed struct."""
    d = Driver.fresh()
    assert d.send_init(signed_init(d.profile, APP)).ok
    d.request(OpCode.SET_PRN, prn=1)
    d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    seen: list[tuple[bool, dict[str, int] | None]] = []
    for i in range(0, 4096, 244):
        before = d.bl.drops.queue_full
        (note,) = d.packet(APP[i : i + 244])
        response = decode_response(note.payload)
        assert response.ok
        seen.append((d.bl.drops.queue_full > before, response.payload))
    refused = [payload for dropped, payload in seen if dropped]
    stored = [payload for dropped, payload in seen if not dropped]
    assert refused
    assert stored
    assert all(p == {"offset": 0, "crc": 0} for p in refused)
    assert all(
        p is not None and p["offset"] > 0 and p["crc"] == zlib.crc32(APP[: p["offset"]]) for p in stored
    )


@pytest.mark.parametrize(("saved_in_flash", "resume_at"), [(False, 0), (True, 4096)])
def test_sdk17_disconnect_reloads_the_settings_page(saved_in_flash: bool, resume_at: int) -> None:
    """SDK 16/17: NRF_DFU_EVT_TRANSPORT_DEACTIVATED -> nrf_dfu_settings_reinit(): RAM progress is gone, the
    executed init packet (and executed objects saved to flash) remain."""
    d = Driver.fresh(profile(progress_survives_disconnect=False, save_progress_in_flash=saved_in_flash))
    init = signed_init(d.profile, APP)
    _init_and_first_object(d, init)
    _link_lost_mid_second_object(d)
    command = d.request(OpCode.SELECT, type=ObjectType.COMMAND)
    assert command.payload == {"max_size": 512, "offset": len(init), "crc": zlib.crc32(init)}
    assert d.request(OpCode.EXECUTE).ok  # already valid: no effect
    select = d.request(OpCode.SELECT, type=ObjectType.DATA)
    assert select.payload == {"max_size": 4096, "offset": resume_at, "crc": zlib.crc32(APP[:resume_at])}
    assert d.send_data(APP, first=resume_at).ok
    assert d.run_until_reset().reason is ResetReason.ACTIVATED
