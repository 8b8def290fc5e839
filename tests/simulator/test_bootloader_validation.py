"""Init packet validation on Execute (docs/secure-dfu.md "Validation", in order) and post-validation."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dfu.init_packet import (
    SD_REQ_ANY,
    FwType,
    HashType,
    SignatureType,
    encode_init_command,
    firmware_hash,
    wrap_init_command,
)
from dfu.protocol import ExtError, ObjectType, OpCode, ResultCode
from simulator.device import Reset, ResetReason
from simulator.firmware import (
    SD_SIZE_OFFSET,
    make_application,
    make_bootloader,
    make_softdevice,
    read_softdevice_info,
    softdevice_end,
)
from tests.simulator.bootloader_driver import Driver, demo_key, kind, profile, signed_init

APP = make_application(6000, 2)


def command(**overrides: Any) -> bytes:
    """An InitCommand the default profile accepts for APP, with fields overridden (None = absent)."""
    fields: dict[str, Any] = {
        "fw_type": FwType.APPLICATION,
        "fw_version": 2,
        "hw_version": 52,
        "sd_req": (0x0100,),
        "sd_size": 0,
        "bl_size": 0,
        "app_size": len(APP),
        "hash_type": HashType.SHA256,
        "hash": firmware_hash(APP),
        "is_debug": False,
    }
    fields.update(overrides)
    return encode_init_command(**fields)


def signed(**overrides: Any) -> bytes:
    return wrap_init_command(command(**overrides), demo_key())


def execute(init: bytes, d: Driver | None = None) -> tuple[ResultCode, ExtError | None]:
    d = d or Driver.fresh()
    response = d.send_init(init)
    return response.result, response.ext_error


EXT = ResultCode.EXT_ERROR


@pytest.mark.parametrize(
    ("init", "expected"),
    [
        pytest.param(signed(), (ResultCode.SUCCESS, None), id="valid"),
        pytest.param(b"\xff\xff\xff", (ResultCode.INVALID_OBJECT, None), id="not-protobuf"),
        pytest.param(wrap_init_command(command()), (EXT, ExtError.SIGNATURE_MISSING), id="unsigned"),
        pytest.param(
            wrap_init_command(command(), signature=b"\x01" * 64, signature_type=SignatureType.ED25519),
            (EXT, ExtError.WRONG_SIGNATURE_TYPE),
            id="ed25519",
        ),
        pytest.param(
            wrap_init_command(command(), ec.generate_private_key(ec.SECP256R1())),
            (ResultCode.INVALID_OBJECT, None),
            id="foreign-key",
        ),
        pytest.param(signed(fw_type=None), (EXT, ExtError.INIT_COMMAND_INVALID), id="no-type"),
        pytest.param(
            signed(fw_type=FwType.EXTERNAL_APPLICATION), (EXT, ExtError.INIT_COMMAND_INVALID), id="external"
        ),
        pytest.param(signed(hash_type=HashType.CRC), (EXT, ExtError.WRONG_HASH_TYPE), id="crc-hash"),
        pytest.param(signed(hash_type=None, hash=None), (EXT, ExtError.WRONG_HASH_TYPE), id="no-hash"),
        pytest.param(signed(hw_version=None), (EXT, ExtError.INIT_COMMAND_INVALID), id="no-hw"),
        pytest.param(signed(hw_version=53), (EXT, ExtError.HW_VERSION_FAILURE), id="other-hw"),
        pytest.param(signed(sd_req=(0x0101,)), (EXT, ExtError.SD_VERSION_FAILURE), id="other-sd"),
        # 15.3+ `sd_req_ok()` (nrf_dfu_ver_validation.c) refuses an empty list; 15.0 did not (sdk rules tests)
        pytest.param(signed(sd_req=()), (EXT, ExtError.SD_VERSION_FAILURE), id="app-without-sd-req"),
        pytest.param(signed(sd_req=(SD_REQ_ANY,)), (EXT, ExtError.SD_VERSION_FAILURE), id="no-wildcard"),
        pytest.param(signed(sd_req=(0x00,)), (ResultCode.SUCCESS, None), id="app-overwrites-sd"),
        pytest.param(
            signed(sd_req=(0x00, 0x0101)), (EXT, ExtError.SD_VERSION_FAILURE), id="app-overwrites-other-sd"
        ),
        # 15.3+ BLE builds never let an application overwrite their SoftDevice (BLE_STACK_SUPPORT_REQD)
        pytest.param(
            signed(sd_req=(0x00, 0x0100)), (EXT, ExtError.SD_VERSION_FAILURE), id="app-overwrites-this-sd"
        ),
        pytest.param(signed(sd_req=(0x0101, 0x0100)), (ResultCode.SUCCESS, None), id="sd-in-list"),
        pytest.param(signed(fw_version=0), (EXT, ExtError.FW_VERSION_FAILURE), id="downgrade"),
        pytest.param(signed(fw_version=1), (ResultCode.SUCCESS, None), id="same-version"),
        pytest.param(signed(fw_version=None), (EXT, ExtError.INIT_COMMAND_INVALID), id="no-version"),
        pytest.param(signed(app_size=None), (EXT, ExtError.INIT_COMMAND_INVALID), id="no-size"),
        pytest.param(signed(app_size=0x100000), (ResultCode.INSUFFICIENT_RESOURCES, None), id="too-big"),
    ],
)
def test_init_packet_rules(init: bytes, expected: tuple[ResultCode, ExtError | None]) -> None:
    assert execute(init) == expected


def test_signature_is_checked_before_the_firmware_type() -> None:
    assert execute(wrap_init_command(command(fw_type=None))) == (EXT, ExtError.SIGNATURE_MISSING)


def test_unsigned_app_accepted_when_the_build_does_not_require_signatures() -> None:
    d = Driver.fresh(profile(require_signed_app=False))
    assert execute(wrap_init_command(command()), d) == (ResultCode.SUCCESS, None)


def test_unsigned_bootloader_always_needs_a_signature() -> None:
    d = Driver.fresh(profile(require_signed_app=False))
    image = make_bootloader(0x5000, 2)
    unsigned = wrap_init_command(
        command(fw_type=FwType.BOOTLOADER, bl_size=len(image), app_size=0, hash=firmware_hash(image))
    )
    assert execute(unsigned, d) == (EXT, ExtError.SIGNATURE_MISSING)


def test_downgrade_allowed_when_prevention_is_off() -> None:
    d = Driver.fresh(profile(app_downgrade_prevention=False))
    assert execute(signed(fw_version=0), d) == (ResultCode.SUCCESS, None)


def test_app_may_overwrite_any_softdevice_when_downgrade_prevention_is_off() -> None:
    d = Driver.fresh(profile(app_downgrade_prevention=False))
    assert execute(signed(sd_req=(0x00, 0x0101)), d) == (ResultCode.SUCCESS, None)


def test_app_version_is_optional_when_downgrade_prevention_is_off() -> None:
    d = Driver.fresh(profile(app_downgrade_prevention=False))
    assert execute(signed(fw_version=None), d) == (ResultCode.SUCCESS, None)


@pytest.mark.parametrize("sd_req", [(), (0x00,)])
def test_softdevice_update_must_name_the_installed_softdevice(sd_req: tuple[int, ...]) -> None:
    image = make_softdevice(0x0100, 0x27000)
    init = signed(
        fw_type=FwType.SOFTDEVICE, sd_req=sd_req, sd_size=len(image), app_size=0, hash=firmware_hash(image)
    )
    assert execute(init) == (EXT, ExtError.SD_VERSION_FAILURE)


def test_app_version_floor_survives_an_invalidated_app() -> None:
    state = Driver.fresh().state
    state.app = None
    state.settings.app_version = 5
    assert execute(signed(fw_version=4), Driver.fresh(state=state)) == (EXT, ExtError.FW_VERSION_FAILURE)


@pytest.mark.parametrize(("version", "ok"), [(1, False), (2, True)])
def test_bootloader_version_must_be_strictly_greater(version: int, ok: bool) -> None:
    image = make_bootloader(0x5000, version)
    init = signed_init(profile(), image, FwType.BOOTLOADER, fw_version=version)
    result = execute(init)
    assert result == ((ResultCode.SUCCESS, None) if ok else (EXT, ExtError.FW_VERSION_FAILURE))


def test_bootloader_larger_than_its_area_is_refused() -> None:
    image = make_bootloader(0x7000, 2)  # the area is 0x100000 - 0x2000 - 0xF8000 = 0x6000
    init = signed_init(profile(), image, FwType.BOOTLOADER)
    assert execute(init) == (ResultCode.INSUFFICIENT_RESOURCES, None)


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ({"sd_size": None, "bl_size": 0x5000}, (ResultCode.SUCCESS, None)),  # SDK 17 reads bl_size only
        ({"bl_size": None}, (EXT, ExtError.INIT_COMMAND_INVALID)),
        ({"bl_size": 0}, (EXT, ExtError.INIT_COMMAND_INVALID)),
    ],
)
def test_bootloader_image_size(sizes: dict[str, Any], expected: tuple[ResultCode, ExtError | None]) -> None:
    image = make_bootloader(0x5000, 2)
    init = signed(fw_type=FwType.BOOTLOADER, app_size=0, hash=firmware_hash(image), **sizes)
    assert execute(init) == expected


def test_zero_app_size_is_init_command_invalid() -> None:
    assert execute(signed(app_size=0)) == (EXT, ExtError.INIT_COMMAND_INVALID)


def test_signature_of_the_wrong_length_is_operation_failed() -> None:
    short = wrap_init_command(command(), signature=b"\x01" * 63)
    assert execute(short) == (ResultCode.OPERATION_FAILED, None)


def test_softdevice_without_fw_version_is_fine() -> None:
    image = make_softdevice(0x0100, 0x27000)
    init = signed(
        fw_type=FwType.SOFTDEVICE, fw_version=None, sd_size=len(image), app_size=0, hash=firmware_hash(image)
    )
    assert execute(init) == (ResultCode.SUCCESS, None)


def test_rejected_init_packet_wipes_progress() -> None:
    d = Driver.fresh()
    assert d.send_init(signed(hw_version=7)).ext_error is ExtError.HW_VERSION_FAILURE
    assert d.request(OpCode.SELECT, type=ObjectType.COMMAND).payload == {
        "max_size": 512,
        "offset": 0,
        "crc": 0,
    }
    assert (
        d.request(OpCode.CREATE, type=ObjectType.DATA, size=4096).result is ResultCode.OPERATION_NOT_PERMITTED
    )


def test_re_executing_a_valid_init_packet_succeeds() -> None:
    d = Driver.fresh()
    assert d.send_init(signed()).ok
    d.request(OpCode.SELECT, type=ObjectType.COMMAND)
    assert d.request(OpCode.EXECUTE).ok


def test_signature_verification_costs_cpu_time() -> None:
    d = Driver.fresh()
    d.send_init(signed())
    execute_note = d.notifications[-1]
    assert execute_note.ready_at > d.notifications[-2].ready_at


def test_settings_write_failing_on_a_full_flash_queue_is_operation_failed() -> None:
    p = profile(require_signed_app=False, flash=profile().flash.model_copy(update={"flash_queue_size": 4}))
    d = Driver.fresh(p)
    assert d.send_init(wrap_init_command(command())).ok  # 4 settings operations now fill the queue
    # Another init packet (a page that differs: an identical one is not written again, settings_write())
    assert d.send_init(wrap_init_command(command(fw_version=3))).result is ResultCode.OPERATION_FAILED


def test_image_hash_mismatch_is_verification_failed_and_the_device_resets() -> None:
    d = Driver.fresh()
    other = make_application(len(APP), 3)
    assert d.send_init(signed()).ok
    response = d.send_data(other)
    assert (response.result, response.ext_error) == (EXT, ExtError.VERIFICATION_FAILED)
    assert d.run_until_reset() == Reset("app", ResetReason.UPDATE_FAILED)
    assert d.state.app is not None
    assert d.state.app.version == 1
    assert not d.state.settings.init_executed


@pytest.mark.parametrize("fwid", [0x0100, 0x0123])
def test_softdevice_without_a_valid_info_structure_is_an_invalid_object(fwid: int) -> None:
    d = Driver.fresh()
    image = make_softdevice(fwid, 0x27000, valid_info=False)
    init = signed_init(d.profile, image, FwType.SOFTDEVICE)
    assert d.send_init(init).ok
    assert d.send_data(image).result is ResultCode.INVALID_OBJECT
    assert d.run_until_reset() == Reset("app", ResetReason.UPDATE_FAILED)
    assert d.state.softdevice.fwid == 0x0100


def test_softdevice_alone_of_another_major_version_is_refused_to_protect_the_bootloader() -> None:
    """`postvalidate_sd_bl()`: "Major SD update but no BL" (15.0-17.1)."""
    d = Driver.fresh()
    image = make_softdevice(0x0123, 0x27000, version=8_000_000, family=140)
    assert (
        d.update(signed_init(d.profile, image, FwType.SOFTDEVICE), image).result is ResultCode.INVALID_OBJECT
    )
    assert d.state.softdevice.fwid == 0x0100
    assert d.state.app is not None


def test_minor_softdevice_update_keeps_the_app() -> None:
    """Same major version (7.2.0 -> 7.3.0): the app stays valid; the next boot waits for one more image only
    for the continuation timeout (ACTIVATION_SUCCESS_EXPECT_ADDITIONAL_UPDATE, nrf_bootloader.c)."""
    d = Driver.fresh()
    image = make_softdevice(0x0101, 0x27000, version=7_003_000, family=140)
    assert d.update(signed_init(d.profile, image, FwType.SOFTDEVICE), image).ok
    assert kind(d.run_until_reset()) == ("bootloader", ResetReason.ACTIVATED)
    assert d.state.app is not None
    assert d.state.settings.expect_additional_update


def _with_size_field(image: bytes, value: int) -> bytes:
    patched = bytearray(image)
    patched[SD_SIZE_OFFSET : SD_SIZE_OFFSET + 4] = value.to_bytes(4, "little")
    return bytes(patched)


@pytest.mark.parametrize(
    ("size_field", "ok"),
    [
        (0x27000 + 0x1000, True),  # what real SoftDevices carry: the end address, MBR included
        (0x29000, True),  # larger is fine (the SDK only checks a lower bound)
        (0x27000 + 0x1000 - 1, False),
        (0x27000, False),  # the plain image length: below ALIGN_TO_PAGE(sd_size + MBR_SIZE)
    ],
)
def test_softdevice_info_size_field_is_the_end_address(size_field: int, ok: bool) -> None:
    """`softdevice_info_ok()`: SD_SIZE_GET(new) >= ALIGN_TO_PAGE(sd_size + MBR_SIZE), else invalid object."""
    d = Driver.fresh()
    image = _with_size_field(make_softdevice(0x0100, 0x27000, version=7_002_000, family=140), size_field)
    response = d.update(signed_init(d.profile, image, FwType.SOFTDEVICE), image)
    assert response.ok is ok
    if ok:
        assert kind(d.run_until_reset()) == ("bootloader", ResetReason.ACTIVATED)  # continuation
        assert d.state.softdevice.size == size_field - d.profile.chip.mbr_size  # the app starts there
    else:
        assert response.result is ResultCode.INVALID_OBJECT
        assert d.run_until_reset() == Reset("app", ResetReason.UPDATE_FAILED)


def test_synthetic_softdevice_size_field_is_page_aligned_end_address() -> None:
    info = read_softdevice_info(make_softdevice(0x0100, 0x25004))
    assert info is not None
    assert info.end_address == softdevice_end(0x25004) == 0x27000
