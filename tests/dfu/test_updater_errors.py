"""Refusals: preflight before any radio work, and each bootloader error as the right typed error."""

from __future__ import annotations

import pytest

from dfu.errors import DfuRejected, PreflightError
from dfu.init_packet import FwType
from dfu.package import DfuPackage, FirmwareFile, build_package
from dfu.preflight import preflight
from dfu.protocol import ExtError, ResultCode
from dfu.updater import UpdateOptions, update
from profiles.model import load_profile
from simulator.demo_packages import demo_key
from simulator.firmware import make_softdevice
from tests.simulator.bootloader_driver import Driver, signed_init
from tests.support.dfu_sim import (
    APP_ADDRESS,
    OTHER_KEY,
    S140_NEW,
    app_package,
    bootloader_package,
    full_package,
    mismatched_hash_package,
    world,
)

S140 = load_profile("nrf52840-s140")
NO_PREFLIGHT = UpdateOptions(preflight=False, skip_installed=False)


@pytest.mark.parametrize(
    ("package", "ext", "words"),
    [
        (lambda: app_package(hw_version=53), ExtError.HW_VERSION_FAILURE, "hardware version mismatch"),
        (lambda: app_package(sd_req=(0x00AE,)), ExtError.SD_VERSION_FAILURE, "requires SoftDevice 0x00AE"),
        (lambda: app_package(key=None), ExtError.SIGNATURE_MISSING, "not signed"),
        (lambda: app_package(key=OTHER_KEY), None, "signature invalid"),
        # one page more than the S140 application region: 0xF8000 - 0x3000 app data - app start 0x27000
        (lambda: app_package(size=0xCF000), ExtError.INSUFFICIENT_SPACE, "does not fit"),
    ],
)
def test_preflight_refuses_before_any_radio_work(package, ext, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PreflightError, match=words) as info:
        preflight(package(), S140)
    assert info.value.ext_error is ext


@pytest.mark.parametrize(
    ("name", "app_start"),
    [("nrf52840-s140", 0x27000), ("nrf52832-s132", 0x26000)],  # MBR + S140 / S132 v7.2.0
)
def test_preflight_application_region_starts_at_the_softdevice_end(name: str, app_start: int) -> None:
    profile = load_profile(name)
    region = profile.chip.bootloader_start - profile.chip.app_data_area_size - app_start
    fits = app_package(size=region, sd_req=(profile.softdevice_id,))
    assert preflight(fits, profile).total_bytes == region
    too_big = app_package(size=region + 4, sd_req=(profile.softdevice_id,))
    with pytest.raises(PreflightError, match=f"the {region}-byte application region"):
        preflight(too_big, profile)


@pytest.mark.parametrize("extra", [0, 4])
def test_preflight_and_the_bootloader_agree_on_the_app_data_area(extra: int) -> None:
    """The largest image preflight passes is the largest the bootloader's init execute accepts."""
    profile = S140
    region = profile.chip.app_region_end - profile.chip.mbr_size - profile.initial.softdevice_size
    firmware = bytes(region + extra)
    driver = Driver.fresh(profile)
    answer = driver.send_init(signed_init(profile, firmware))
    package = app_package(size=region + extra)
    if extra:
        assert answer.result is ResultCode.INSUFFICIENT_RESOURCES
        with pytest.raises(PreflightError, match="app data area"):
            preflight(package, profile)
    else:
        assert answer.result is ResultCode.SUCCESS
        assert preflight(package, profile).total_bytes == region


@pytest.mark.parametrize("extra", [0, 4])
def test_preflight_and_the_bootloader_agree_on_room_for_a_softdevice(extra: int) -> None:
    """A SoftDevice update is cached in bank 1 too: the same region, app data area excluded."""
    profile = S140
    region = profile.chip.app_region_end - profile.chip.mbr_size - profile.initial.softdevice_size
    softdevice = make_softdevice(S140_NEW, region + extra)
    answer = Driver.fresh(profile).send_init(
        signed_init(profile, softdevice, FwType.SOFTDEVICE, fw_version=2, sd_size=len(softdevice))
    )
    package = DfuPackage.from_zip(
        build_package(
            hw_version=52,
            sd_req=[profile.softdevice_id],
            softdevice=FirmwareFile("sd.bin", softdevice),
            sd_id=[S140_NEW],
            key=demo_key(),
        )
    )
    if extra:
        assert answer.result is ResultCode.INSUFFICIENT_RESOURCES
        with pytest.raises(PreflightError, match="app data area") as info:
            preflight(package, profile)
        assert info.value.ext_error is ExtError.INSUFFICIENT_SPACE
    else:
        assert answer.result is ResultCode.SUCCESS
        assert preflight(package, profile).images == 1


def test_preflight_accepts_good_packages_and_skips_sd_check_after_a_new_softdevice() -> None:
    for package in (app_package(), bootloader_package(), full_package()):
        report = preflight(package, S140)
        assert report.images == len(package.images)
        assert report.signature_checked


@pytest.mark.looptime
async def test_preflight_error_touches_no_radio() -> None:
    w = world(S140)
    with pytest.raises(PreflightError):
        await update(w.backend, S140, app_package(hw_version=53), address=APP_ADDRESS)
    assert w.state()["mode"] == "app"
    assert w.state()["settings"]["init_command"] == ""


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("package", "result", "ext"),
    [
        (lambda: app_package(hw_version=53), ResultCode.EXT_ERROR, ExtError.HW_VERSION_FAILURE),
        (lambda: app_package(sd_req=(0x00AE,)), ResultCode.EXT_ERROR, ExtError.SD_VERSION_FAILURE),
        (lambda: app_package(version=0), ResultCode.EXT_ERROR, ExtError.FW_VERSION_FAILURE),
        (lambda: bootloader_package(version=1), ResultCode.EXT_ERROR, ExtError.FW_VERSION_FAILURE),
        (lambda: app_package(key=OTHER_KEY), ResultCode.INVALID_OBJECT, None),
        (lambda: app_package(key=None), ResultCode.EXT_ERROR, ExtError.SIGNATURE_MISSING),
        (mismatched_hash_package, ResultCode.EXT_ERROR, ExtError.VERIFICATION_FAILED),
    ],
)
async def test_bootloader_refusals_are_dfu_rejected(package, result, ext) -> None:  # type: ignore[no-untyped-def]
    w = world(S140)
    pkg: DfuPackage = package()
    with pytest.raises(DfuRejected) as info:
        await update(w.backend, S140, pkg, address=APP_ADDRESS, options=NO_PREFLIGHT)
    assert info.value.result is result
    assert info.value.ext_error is ext
    # The updater aborted: the bootloader resets to the (still valid) application.
    assert w.state()["app"]["version"] == 1


@pytest.mark.looptime
async def test_bootloader_of_the_installed_version_is_skipped_not_refused() -> None:
    w = world(S140)
    package = bootloader_package(version=1)
    result = await update(w.backend, S140, package, address=APP_ADDRESS)
    assert [i.skipped for i in result.images] == [True]
    # Only the init packet: its FW_VERSION_FAILURE is how a stock board tells its bootloader's version.
    assert result.bytes_sent == len(package.images[0].init_packet)
    assert w.state()["mode"] == "app"
