"""Profiles: SDK releases and build options, boards nobody described, keys beside the user's own TOML."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from dfu.errors import PreflightError
from dfu.init_packet import FwType
from dfu.preflight import preflight, sd_req_accepted
from dfu.protocol import ExtError
from dfu.updater import update
from profiles.model import (
    PeripheralProfile,
    ProfileIncompleteError,
    ProfileKeyError,
    SdkRelease,
    load_profile,
    shipped_profiles,
)
from simulator.air import Air
from tests.support.dfu_sim import APP_ADDRESS, REPO, app_package, bootloader_package, world

GENERIC = "generic-nrf52"
V15_0, V15_3, V16_0, V17_1 = SdkRelease


def test_every_shipped_profile_names_its_sdk_release_except_the_generic_one() -> None:
    releases = {name: load_profile(name).sdk for name in shipped_profiles()}
    assert releases.pop(GENERIC) is None
    assert set(releases.values()) == set(SdkRelease), "each of 15.0, 15.3, 16.0, 17.1 has a shipped board"


def test_release_defaults_follow_the_stock_builds() -> None:
    """sdk_config.h of each release's secure BLE bootloader, nrf_dfu_types.h, nrf_bootloader.c."""
    sdk15 = load_profile("nrf52832-s132-sdk15")
    sdk17 = load_profile("nrf52840-s140-sdk17")
    assert (sdk15.protocol_reduced, sdk17.protocol_reduced) == (False, True)
    assert (sdk15.init_packet_limit, sdk17.init_packet_limit) == (256, 512)
    assert (sdk15.keeps_progress_on_disconnect, sdk17.keeps_progress_on_disconnect) == (True, False)
    assert load_profile("nrf52840-s140").keeps_progress_on_disconnect  # 15.3 keeps RAM progress too


def test_a_build_option_the_release_lacks_is_refused() -> None:
    base = load_profile("nrf52832-s132-sdk15").model_dump()
    with pytest.raises(ValueError, match="no NRF_DFU_PROTOCOL_REDUCED"):
        PeripheralProfile.model_validate(base | {"reduced_protocol": True})
    with pytest.raises(ValueError, match=r"contradicts SDK 17\.1"):
        PeripheralProfile.model_validate(base | {"sdk": "17.1", "progress_survives_disconnect": True})


def test_generic_profile_assumes_nothing_it_cannot_know() -> None:
    generic = load_profile(GENERIC)
    assert generic.hw_version is None
    assert generic.softdevice_id is None
    assert generic.public_key_pem is None
    assert generic.chip is None
    assert generic.flash is None, "no flash timing: the client paces conservatively"
    assert generic.sdk is None
    assert generic.protocol_reduced
    assert not generic.keeps_progress_on_disconnect


def test_generic_profile_preflights_only_what_the_package_tells() -> None:
    generic = load_profile(GENERIC)
    # Any hardware version or SoftDevice: only the bootloader knows what it is.
    preflight(app_package(hw_version=7, sd_req=(0x00AE,)), generic)
    # No key known: the signature is verified by the bootloader alone; an unsigned package is still refused,
    # as a stock BLE bootloader refuses it (nRF5 SDK nrf_dfu_validation.c, signature_required()).
    with pytest.raises(PreflightError, match="not signed") as info:
        preflight(app_package(key=None), generic)
    assert info.value.ext_error is ExtError.SIGNATURE_MISSING


def test_an_unsigned_application_passes_only_where_the_bootloader_allows_it() -> None:
    """NRF_DFU_REQUIRE_SIGNED_APP_UPDATE = 0 waives the signature for applications only; SoftDevice and
    bootloader images always need one (nRF5 SDK nrf_dfu_validation.c, signature_required())."""
    lenient = load_profile(GENERIC).model_copy(update={"require_signed_app": False})
    preflight(app_package(key=None), lenient)
    keyed = load_profile("nrf52840-s140").model_copy(update={"require_signed_app": False})
    preflight(app_package(key=None), keyed)
    with pytest.raises(PreflightError, match="not signed"):
        preflight(bootloader_package(key=None), lenient)


def test_generic_profile_cannot_be_simulated() -> None:
    with pytest.raises(ProfileIncompleteError, match="hw_version"):
        Air().add_profile(GENERIC, APP_ADDRESS)


@pytest.mark.looptime
async def test_generic_profile_updates_a_board_it_does_not_describe() -> None:
    """The board is an SDK 17.1 nRF52840; the client knows it only as a generic nRF52 (no flash timing)."""
    w = world("nrf52840-s140-sdk17")
    package = app_package(version=2, size=0x6000)
    result = await update(w.backend, load_profile(GENERIC), package, address=APP_ADDRESS)
    assert w.state()["app"]["version"] == 2
    assert result.firmware_revision == "2"


@pytest.mark.parametrize(
    ("sd_req", "fw_type", "sdk", "accepted"),
    [
        ((), FwType.APPLICATION, V15_0, True),
        ((), FwType.APPLICATION, V15_3, False),
        ((), FwType.APPLICATION, None, None),
        ((0x00, 0x0100), FwType.APPLICATION, V15_0, True),
        ((0x00, 0x0100), FwType.APPLICATION, V17_1, False),
        ((0x00,), FwType.APPLICATION, V16_0, True),
        ((0x00,), FwType.SOFTDEVICE, V15_0, False),
        ((0x00,), FwType.BOOTLOADER, V15_3, True),
        ((0xFFFE,), FwType.APPLICATION, V17_1, False),
        ((0x0101, 0x0100), FwType.SOFTDEVICE_BOOTLOADER, V15_0, True),
    ],
)
def test_sd_req_as_each_release_treats_it(
    sd_req: tuple[int, ...], fw_type: FwType, sdk: SdkRelease | None, accepted: bool | None
) -> None:
    """nrf_dfu_ver_validation.c `sd_req_ok()`, 15.0 against 15.3/16.0/17.1, with S140 (0x0100) installed."""
    assert sd_req_accepted(sd_req, fw_type, 0x0100, sdk) is accepted


def test_preflight_treats_sd_req_as_the_profile_release_does() -> None:
    overwrite = app_package(sd_req=(0x00, 0x0100))  # "may replace the SoftDevice", S140 listed
    preflight(overwrite, load_profile("nrf52832-s132-sdk15").model_copy(update={"softdevice_id": 0x0100}))
    with pytest.raises(PreflightError, match="refuses that sd_req"):
        preflight(overwrite, load_profile("nrf52840-s140"))


def _user_profile(directory: Path) -> Path:
    """A user's own board file with its key beside it, as `nrf-dfu keys display` leaves it."""
    (directory / "keys").mkdir()
    shutil.copy(REPO / "profiles" / "keys" / "demo-public.pem", directory / "keys" / "mine.pem")
    text = (REPO / "profiles" / "nrf52840-s140.toml").read_text()
    path = directory / "board.toml"
    path.write_text(text.replace('"keys/demo-public.pem"', '"keys/mine.pem"'))
    return path


def test_relative_key_is_read_beside_the_users_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _user_profile(tmp_path)
    monkeypatch.chdir(REPO)  # not where the key is: the profile's folder decides
    profile = load_profile(str(path))
    assert profile.public_key_pem == (tmp_path / "keys" / "mine.pem").read_bytes()


def test_a_missing_key_names_the_path_it_tried(tmp_path: Path) -> None:
    path = tmp_path / "board.toml"
    path.write_text((REPO / "profiles" / "nrf52840-s140.toml").read_text())  # keys/demo-public.pem: not here
    with pytest.raises(ProfileKeyError, match=re.escape(str(tmp_path / "keys" / "demo-public.pem"))):
        _ = load_profile(str(path)).public_key_pem
