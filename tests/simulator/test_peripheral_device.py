"""SimPeripheral: advertising, GATT tables, ATT errors, mode switches, persistence and power cycles."""

from __future__ import annotations

import pytest

from dfu.init_packet import FwType
from dfu.protocol import (
    ObjectType,
    OpCode,
    decode_response,
    encode_enter_bootloader,
    encode_request,
    encode_set_adv_name,
)
from profiles.gatt import (
    BUTTONLESS_BONDED,
    BUTTONLESS_UNBONDED,
    CONTROL_POINT,
    DEVICE_INFORMATION_SERVICE,
    DFU_PACKET,
    FIRMWARE_REVISION,
    GENERIC_ATTRIBUTE_SERVICE,
    SECURE_DFU_SERVICE,
    SERVICE_CHANGED,
)
from simulator.device import AttError, DeviceState, Mode, Notify, Reset, ResetReason
from simulator.firmware import make_application
from simulator.peripheral import SimPeripheral
from tests.simulator.bootloader_driver import ADDRESS, profile, signed_init

BOOT = 0.3


def device(name: str = "nrf52840-s140") -> SimPeripheral:
    p = profile(name)
    return SimPeripheral(p, DeviceState.initial(p, ADDRESS), boot_delay_s=BOOT)


def enter_bootloader(dev: SimPeripheral, now: float = 1.0, name: str | None = None) -> float:
    """Buttonless entry; returns when the bootloader is up."""
    uuid = BUTTONLESS_BONDED if dev.bonded_variant else BUTTONLESS_UNBONDED
    dev.on_connect(now, 247, encrypted=dev.bond_held)
    dev.on_subscribe(uuid, notify=False, indicate=True, now=now)
    if name is not None:
        dev.on_write(uuid, encode_set_adv_name(name), with_response=True, now=now)
    emissions = dev.on_write(uuid, encode_enter_bootloader(), with_response=True, now=now)
    assert isinstance(emissions[-1], Reset)
    assert dev.advertisement() is None
    assert dev.next_wakeup == pytest.approx(now + BOOT)
    dev.poll(now + BOOT)
    return now + BOOT


def uuids(dev: SimPeripheral) -> dict[str, set[str]]:
    return {s.uuid: {c.uuid for c in s.characteristics} for s in dev.gatt()}


def test_application_advertises_and_exposes_buttonless_and_device_information() -> None:
    dev = device()
    adv = dev.advertisement()
    assert adv is not None
    assert (adv.address, adv.name, adv.service_uuids) == (ADDRESS, "Nordic_Buttonless", (SECURE_DFU_SERVICE,))
    table = uuids(dev)
    assert table[SECURE_DFU_SERVICE] == {BUTTONLESS_UNBONDED}
    assert FIRMWARE_REVISION in table[DEVICE_INFORMATION_SERVICE]
    assert GENERIC_ATTRIBUTE_SERVICE not in table
    dev.on_connect(0.0, 247)
    assert dev.on_read(FIRMWARE_REVISION, 0.0) == b"1"


def test_unbonded_entry_moves_to_address_plus_one_named_dfutarg() -> None:
    dev = device()
    enter_bootloader(dev)
    adv = dev.advertisement()
    assert adv is not None
    assert (adv.address, adv.name) == ("C0:FF:EE:00:00:11", "DfuTarg")
    assert uuids(dev) == {SECURE_DFU_SERVICE: {CONTROL_POINT, DFU_PACKET}}
    assert dev.mode is Mode.BOOTLOADER


def test_custom_bootloader_name_serves_one_session() -> None:
    dev = device()
    enter_bootloader(dev, name="MyDfu")
    adv = dev.advertisement()
    assert adv is not None
    assert adv.name == "MyDfu"
    dev.on_connect(2.0, 247)
    dev.on_subscribe(CONTROL_POINT, notify=True, indicate=False, now=2.0)
    dev.on_write(CONTROL_POINT, encode_request(OpCode.ABORT), with_response=True, now=2.0)
    dev.poll(dev.next_wakeup or 0.0)
    dev.poll(dev.next_wakeup or 0.0)
    assert dev.mode is Mode.APP
    assert dev.state.settings.adv_name is None


def test_bonded_entry_keeps_the_address_and_indicates_service_changed() -> None:
    dev = device("nrf52840-s140-bonded")
    assert GENERIC_ATTRIBUTE_SERVICE in uuids(dev)
    t = enter_bootloader(dev)
    adv = dev.advertisement()
    assert adv is not None
    assert adv.address == ADDRESS
    dev.on_connect(t, 247, encrypted=True)
    emitted = dev.on_subscribe(SERVICE_CHANGED, notify=False, indicate=True, now=t)
    assert emitted == [Notify(SERVICE_CHANGED, b"\x01\x00\xff\xff", t, indication=True)]
    assert dev.on_subscribe(SERVICE_CHANGED, notify=False, indicate=True, now=t) == []


def test_att_errors() -> None:
    dev = device()
    t = enter_bootloader(dev)
    dev.on_connect(t, 247)
    with pytest.raises(AttError) as err:
        dev.on_write(CONTROL_POINT, encode_request(OpCode.PING, id=1), with_response=True, now=t)
    assert err.value.code == 0xFD
    dev.on_subscribe(CONTROL_POINT, notify=True, indicate=False, now=t)
    cases = [
        (CONTROL_POINT, b"", True, AttError.INVALID_ATTRIBUTE_LENGTH),
        (CONTROL_POINT, b"\x09\x01", False, AttError.WRITE_NOT_PERMITTED),
        (DFU_PACKET, b"\x00" * 20, True, AttError.WRITE_NOT_PERMITTED),
        (BUTTONLESS_UNBONDED, b"\x01", True, AttError.INVALID_HANDLE),
    ]
    for uuid, data, with_response, code in cases:
        with pytest.raises(AttError) as err:
            dev.on_write(uuid, data, with_response=with_response, now=t)
        assert err.value.code == code, uuid
    with pytest.raises(AttError) as err:
        dev.on_read(CONTROL_POINT, t)
    assert err.value.code == AttError.READ_NOT_PERMITTED


def test_control_point_notifications_do_not_survive_a_reconnect() -> None:
    dev = device()
    t = enter_bootloader(dev)
    dev.on_connect(t, 247)
    dev.on_subscribe(CONTROL_POINT, notify=True, indicate=False, now=t)
    dev.on_disconnect(t + 1)
    dev.on_connect(t + 2, 247)
    with pytest.raises(AttError):
        dev.on_write(CONTROL_POINT, encode_request(OpCode.PING, id=1), with_response=True, now=t + 2)


def test_full_update_through_the_peripheral_changes_the_firmware_revision() -> None:
    dev = device()
    t = enter_bootloader(dev)
    dev.on_connect(t, 247)
    dev.on_subscribe(CONTROL_POINT, notify=True, indicate=False, now=t)
    image = make_application(5000, 9)
    init = signed_init(dev.profile, image, FwType.APPLICATION, fw_version=9)

    def cp(opcode: OpCode, **params: int) -> None:
        nonlocal t
        (note,) = dev.on_write(CONTROL_POINT, encode_request(opcode, **params), with_response=True, now=t)
        assert isinstance(note, Notify)
        assert decode_response(note.payload).ok, decode_response(note.payload)
        t = max(t, note.ready_at)

    def packets(data: bytes) -> None:
        nonlocal t
        for i in range(0, len(data), 244):
            assert dev.on_write(DFU_PACKET, data[i : i + 244], with_response=False, now=t) == []
            t += 0.01

    cp(OpCode.CREATE, type=ObjectType.COMMAND, size=len(init))
    packets(init)
    cp(OpCode.EXECUTE)
    for start in range(0, len(image), 4096):
        cp(OpCode.CREATE, type=ObjectType.DATA, size=min(4096, len(image) - start))
        t += 0.4  # the pause SDK 15-17 users learn to add after Create (settings + page erase)
        packets(image[start : start + 4096])
        cp(OpCode.EXECUTE)
    wake = dev.next_wakeup
    assert wake is not None
    emissions = dev.poll(wake)
    (reset,) = emissions
    assert isinstance(reset, Reset)
    assert (reset.into, reset.reason) == ("app", ResetReason.ACTIVATED)
    assert reset.boot_work_s > 0  # the new app is copied from bank 1 into place on the next boot
    assert dev.next_wakeup == pytest.approx(wake + BOOT + reset.boot_work_s)
    assert not dev.connected
    up = wake + BOOT + reset.boot_work_s
    dev.poll(up)
    dev.on_connect(up, 247)
    assert dev.on_read(FIRMWARE_REVISION, up) == b"9"


def test_power_cycle_in_the_bootloader_loses_ram_and_boots_the_valid_app() -> None:
    dev = device()
    t = enter_bootloader(dev)
    emissions = dev.reset(t + 1)
    assert emissions == [Reset("app", ResetReason.POWER_CYCLE)]
    assert dev.advertisement() is None
    dev.poll(t + 1 + BOOT)
    assert dev.mode is Mode.APP


def test_without_a_valid_app_the_device_boots_into_the_bootloader() -> None:
    p = profile()
    state = DeviceState.initial(p, ADDRESS)
    state.app = None
    dev = SimPeripheral(p, state)
    assert dev.mode is Mode.BOOTLOADER
    assert dev.bootloader is not None
    assert dev.reset(1.0) == [Reset("bootloader", ResetReason.POWER_CYCLE)]


def test_inactivity_in_the_bootloader_returns_to_the_app() -> None:
    dev = device()
    t = enter_bootloader(dev)
    wake = dev.next_wakeup
    assert wake == pytest.approx(t + dev.profile.inactivity_timeout_s)
    assert dev.poll(wake) == [Reset("app", ResetReason.INACTIVITY)]


def test_device_state_round_trips_through_json() -> None:
    dev = device()
    enter_bootloader(dev, name="Named")
    restored = DeviceState.model_validate_json(dev.state.model_dump_json())
    assert restored == dev.state
    again = SimPeripheral(dev.profile, restored)
    adv = again.advertisement()
    assert adv is not None
    assert (adv.address, adv.name) == ("C0:FF:EE:00:00:11", "Named")


def test_initial_state_follows_the_profile() -> None:
    p = profile("nrf52832-s132")
    state = DeviceState.initial(p, "aa:bb:cc:dd:ee:ff")
    assert state.address == "AA:BB:CC:DD:EE:FF"
    assert state.app is not None
    assert (state.app.version, state.app.size) == (p.initial.app_version, p.initial.app_size)
    assert (state.softdevice.fwid, state.bootloader.version) == (0x0101, 1)
    assert not state.bonded
    assert DeviceState.initial(profile("nrf52840-s140-bonded"), ADDRESS).bonded


def test_device_state_round_trips_through_python_json_mode() -> None:
    """The air persists `model_dump(mode="json")` and rebuilds with `model_validate`: bytes must survive."""
    state = DeviceState.initial(profile(), ADDRESS)
    state.settings.init_command = bytes(range(256))
    restored = DeviceState.model_validate(state.model_dump(mode="json"))
    assert restored.settings.init_command == bytes(range(256))
    assert restored == state
