"""The application's buttonless DFU service (both variants) and Device Information."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfu.protocol import (
    ButtonlessOpCode,
    ButtonlessResult,
    decode_buttonless_response,
    encode_enter_bootloader,
    encode_set_adv_name,
)
from profiles.gatt import (
    BUTTONLESS_BONDED,
    BUTTONLESS_UNBONDED,
    FIRMWARE_REVISION,
    HARDWARE_REVISION,
    MANUFACTURER_NAME,
    MODEL_NUMBER,
)
from simulator.application import Application
from simulator.device import AttError, DeviceState, Notify, Reset, ResetReason
from tests.simulator.bootloader_driver import ADDRESS, profile


def app(name: str = "nrf52840-s140", *, indications: bool = True) -> Application:
    p = profile(name)
    a = Application(p, DeviceState.initial(p, ADDRESS))
    a.on_connect(0.0)
    if indications and a.buttonless_uuid is not None:
        a.on_subscribe(a.buttonless_uuid, indicate=True, now=0.0)
    return a


def answer(a: Application, data: bytes) -> tuple[ButtonlessOpCode, ButtonlessResult]:
    assert a.buttonless_uuid is not None
    emissions = a.on_write(a.buttonless_uuid, data, 0.0)
    note = emissions[0]
    assert isinstance(note, Notify)
    assert note.indication
    response = decode_buttonless_response(note.payload)
    return response.request, response.result


def test_characteristic_per_variant() -> None:
    assert app().buttonless_uuid == BUTTONLESS_UNBONDED
    assert app("nrf52840-s140-bonded").buttonless_uuid == BUTTONLESS_BONDED


@pytest.mark.parametrize("name", ["nrf52840-s140", "nrf52840-s140-bonded"])
def test_write_without_indications_is_att_error_fd(name: str) -> None:
    a = app(name, indications=False)
    assert a.buttonless_uuid is not None
    with pytest.raises(AttError) as err:
        a.on_write(a.buttonless_uuid, encode_enter_bootloader(), 0.0)
    assert err.value.code == 0xFD


@pytest.mark.parametrize("name", ["nrf52840-s140", "nrf52840-s140-bonded"])
def test_enter_bootloader_indicates_success_then_resets(name: str) -> None:
    a = app(name)
    assert a.buttonless_uuid is not None
    emissions = a.on_write(a.buttonless_uuid, encode_enter_bootloader(), 1.5)
    assert emissions == [
        Notify(a.buttonless_uuid, b"\x20\x01\x01", 1.5, indication=True),
        Reset("bootloader", ResetReason.BUTTONLESS),
    ]
    assert answer(a, encode_enter_bootloader()) == (ButtonlessOpCode.ENTER_BOOTLOADER, ButtonlessResult.BUSY)


def test_bonded_variant_without_a_bond_is_refused() -> None:
    a = app("nrf52840-s140-bonded")
    a.state.bonded = False
    assert answer(a, encode_enter_bootloader()) == (
        ButtonlessOpCode.ENTER_BOOTLOADER,
        ButtonlessResult.NOT_BONDED,
    )


@pytest.mark.parametrize(
    ("name", "result"),
    [("X", ButtonlessResult.SUCCESS), ("A" * 20, ButtonlessResult.SUCCESS)],
)
def test_set_name_valid(name: str, result: ButtonlessResult) -> None:
    a = app()
    assert answer(a, encode_set_adv_name(name)) == (ButtonlessOpCode.SET_ADV_NAME, result)
    assert a.state.settings.adv_name == name


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x02, 0x00]),  # empty name
        bytes([0x02, 21]) + b"A" * 21,  # too long
        bytes([0x02, 5]) + b"AB",  # length byte lies
    ],
)
def test_set_name_invalid(data: bytes) -> None:
    a = app()
    assert answer(a, data) == (ButtonlessOpCode.SET_ADV_NAME, ButtonlessResult.INVALID_ADV_NAME)
    assert a.state.settings.adv_name is None


def test_bonded_variant_has_no_set_name() -> None:
    a = app("nrf52840-s140-bonded")
    result = answer(a, encode_set_adv_name("Mine"))
    assert result == (ButtonlessOpCode.SET_ADV_NAME, ButtonlessResult.OP_CODE_NOT_SUPPORTED)


def test_unknown_opcode_is_not_supported() -> None:
    a = app()
    assert a.buttonless_uuid is not None
    (note,) = a.on_write(a.buttonless_uuid, b"\x07", 0.0)
    assert isinstance(note, Notify)
    assert note.payload == bytes([0x20, 0x07, ButtonlessResult.OP_CODE_NOT_SUPPORTED])


def test_empty_write_is_att_invalid_length() -> None:
    a = app()
    assert a.buttonless_uuid is not None
    with pytest.raises(AttError) as err:
        a.on_write(a.buttonless_uuid, b"", 0.0)
    assert err.value.code == AttError.INVALID_ATTRIBUTE_LENGTH


def test_indications_do_not_survive_a_reconnect() -> None:
    a = app()
    a.on_disconnect(1.0)
    a.on_connect(2.0)
    assert a.buttonless_uuid is not None
    with pytest.raises(AttError):
        a.on_write(a.buttonless_uuid, encode_enter_bootloader(), 2.0)


def test_device_information() -> None:
    a = app()
    a.state.app = a.state.app.model_copy(update={"version": 7}) if a.state.app else None
    assert a.on_read(MANUFACTURER_NAME) == b"Nordic Semiconductor ASA"
    assert a.on_read(MODEL_NUMBER) == b"nrf52840-s140"
    assert a.on_read(HARDWARE_REVISION) == b"52"
    assert a.on_read(FIRMWARE_REVISION) == b"7"
    with pytest.raises(AttError):
        a.on_read(BUTTONLESS_UNBONDED)


@given(data=st.binary(min_size=1, max_size=24), bonded=st.booleans())
def test_any_buttonless_write_gets_one_well_formed_indication(data: bytes, bonded: bool) -> None:
    a = app("nrf52840-s140-bonded" if bonded else "nrf52840-s140")
    assert a.buttonless_uuid is not None
    emissions = a.on_write(a.buttonless_uuid, data, 0.0)
    note = emissions[0]
    assert isinstance(note, Notify)
    assert note.indication
    assert note.payload[:2] == bytes([ButtonlessOpCode.RESPONSE, data[0]])
    assert note.payload[2] in ButtonlessResult._value2member_map_
    entered = note.payload[2] == ButtonlessResult.SUCCESS and data[0] == ButtonlessOpCode.ENTER_BOOTLOADER
    assert emissions[1:] == ([Reset("bootloader", ResetReason.BUTTONLESS)] if entered else [])
